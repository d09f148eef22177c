"""The WHOSON protocol (https://whoson.sourceforge.net), TCP flavour, sans-IO.

A request is one line ``COMMAND ADDRESS [DATA]`` then an empty line; an answer is one line
that starts with ``+`` (yes, then the data: here the user), ``-`` (no) or ``*`` (error, then a
reason), then an empty line. Lines end with CRLF; a bare LF is accepted too. Several requests
may share a connection.

A request that is framed correctly but makes no sense (unknown command, no or bad address,
several command lines) comes out as `WhosonMalformed`, which the caller answers with ``*`` and
keeps serving. Only framing abuse (an over-long line or request, a NUL byte) raises
`WhosonProtocolError`.
"""

import re
from dataclasses import dataclass, field
from enum import Enum

from popbridge.addresses import client_key


class WhosonProtocolError(ValueError):
    """The peer abused the framing; the caller hangs up."""


class Command(Enum):
    QUERY = "QUERY"
    LOGIN = "LOGIN"
    LOGOUT = "LOGOUT"


@dataclass(frozen=True)
class WhosonRequest:
    command: Command
    address: str
    extra: str = ""  # LOGIN: the user; otherwise whatever followed the address


@dataclass(frozen=True)
class WhosonMalformed:
    """A framed request that cannot be served; answer ``*`` with `reason`."""

    reason: str


WhosonEvent = WhosonRequest | WhosonMalformed


@dataclass
class WhosonDecoder:
    """Turns bytes into WhosonEvents; bounds one line and one request (terminators included)."""

    max_line: int = 1024
    max_request: int = 2048
    _partial: bytes = field(default=b"", init=False, repr=False)
    _lines: list[str] = field(default_factory=list, init=False, repr=False)
    _request_size: int = field(default=0, init=False, repr=False)

    def feed(self, data: bytes) -> list[WhosonEvent]:
        if b"\0" in data:
            raise WhosonProtocolError("NUL byte in a request")
        buffer, start, events = self._partial + data, 0, []
        while (end := buffer.find(b"\n", start)) >= 0:
            self._count(end + 1 - start)
            line = buffer[start:end].removesuffix(b"\r")
            start = end + 1
            if line:
                self._lines.append(line.decode("utf-8", "replace"))
            else:
                events.append(_request(self._lines))
                self._lines, self._request_size = [], 0
        self._partial = buffer[start:]
        if len(self._partial) > self.max_line or self._request_size + len(self._partial) > self.max_request:
            raise WhosonProtocolError(f"line over {self.max_line} or request over {self.max_request} bytes")
        return events

    def _count(self, line_size: int) -> None:
        self._request_size += line_size
        if line_size > self.max_line:
            raise WhosonProtocolError(f"line over {self.max_line} bytes")
        if self._request_size > self.max_request:
            raise WhosonProtocolError(f"request over {self.max_request} bytes")


def _request(lines: list[str]) -> WhosonEvent:
    if len(lines) != 1:
        return WhosonMalformed("empty request" if not lines else "one command line per request")
    words = lines[0].split()
    if not words:
        return WhosonMalformed("empty command")
    try:
        command = Command(words[0].upper())
    except ValueError:
        return WhosonMalformed("unknown command")
    if len(words) < 2:
        return WhosonMalformed(f"{command.value} needs an address")
    if client_key(words[1]) is None:
        return WhosonMalformed("not an IP address")
    return WhosonRequest(command, words[1], " ".join(words[2:]))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _answer(mark: str, text: str) -> bytes:
    """One answer line; control characters in `text` become ``?`` so it stays one line."""
    return f"{mark}{_CONTROL.sub('?', text)}\r\n\r\n".encode()


def encode_yes(data: str = "") -> bytes:
    return _answer("+", data)


def encode_no() -> bytes:
    return _answer("-", "")


def encode_error(reason: str) -> bytes:
    return _answer("*", reason)
