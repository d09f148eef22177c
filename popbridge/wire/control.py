"""The control socket codec: JSON lines, sans-IO.

Each request is one JSON object on one ``\\n``-terminated line::

    {"command": "list"}
    {"command": "query", "address": "192.0.2.7"}
    {"command": "revoke", "address": "192.0.2.7"}
    {"command": "stats"}

Each reply is one JSON object on one line: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. A line that is not a valid request comes out as
`ControlMalformed` (the caller answers an error and keeps serving); only a line over
`max_line` bytes raises `ControlProtocolError`.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from popbridge.addresses import client_key

COMMANDS = ("list", "query", "revoke", "stats")
_NEEDS_ADDRESS = ("query", "revoke")


class ControlProtocolError(ValueError):
    """The peer sent an over-long line; the caller hangs up."""


@dataclass(frozen=True)
class ControlRequest:
    command: str  # one of COMMANDS
    address: str | None = None  # for query and revoke


@dataclass(frozen=True)
class ControlMalformed:
    """A line that is not a valid request; answer `error_reply(error)`."""

    error: str


ControlEvent = ControlRequest | ControlMalformed


@dataclass
class ControlDecoder:
    max_line: int = 4096  # terminator included
    _partial: bytes = field(default=b"", init=False, repr=False)

    def feed(self, data: bytes) -> list[ControlEvent]:
        buffer, start, events = self._partial + data, 0, []
        while (end := buffer.find(b"\n", start)) >= 0:
            if end + 1 - start > self.max_line:
                raise ControlProtocolError(f"line over {self.max_line} bytes")
            events.append(_request(buffer[start:end]))
            start = end + 1
        self._partial = buffer[start:]
        if len(self._partial) > self.max_line:
            raise ControlProtocolError(f"line over {self.max_line} bytes")
        return events


def _request(line: bytes) -> ControlEvent:
    try:
        document = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return ControlMalformed("not a JSON object")
    if not isinstance(document, dict):
        return ControlMalformed("not a JSON object")
    command = document.get("command")
    if command not in COMMANDS:
        return ControlMalformed(f"unknown command; known: {', '.join(COMMANDS)}")
    allowed = {"command", "address"} if command in _NEEDS_ADDRESS else {"command"}
    if unknown := sorted(set(document) - allowed):
        return ControlMalformed(f"unknown key {unknown[0][:40]!r} for {command}")
    if command not in _NEEDS_ADDRESS:
        return ControlRequest(command)
    address = document.get("address")
    if not isinstance(address, str) or client_key(address) is None:
        return ControlMalformed(f"{command} needs an IP address")
    return ControlRequest(command, address)


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """One reply line; ASCII-only JSON, so no value can break the line."""
    return json.dumps(dict(reply), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def ok_reply(**fields: Any) -> bytes:
    return encode_reply({"ok": True, **fields})


def error_reply(error: str) -> bytes:
    return encode_reply({"ok": False, "error": error})
