"""Postfix SMTP access policy delegation (SMTPD_POLICY_README), sans-IO.

A request is ``name=value`` lines, each ended by ``\\n``, then an empty line. The answer is one
``action=...`` line and an empty line; the connection stays open for the next request. Postfix
sends bare ``\\n`` only, so framing is strict: a ``\\r`` stays part of the value it follows.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType


class PolicyProtocolError(ValueError):
    """The peer broke the policy protocol; the caller hangs up."""


@dataclass(frozen=True)
class PolicyRequest:
    """One policy request: its attributes in arrival order (a repeated name keeps the last)."""

    attributes: tuple[tuple[str, str], ...]
    _by_name: Mapping[str, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType(dict(self.attributes)))

    def get(self, name: str, default: str = "") -> str:
        return self._by_name.get(name, default)


@dataclass
class PolicyDecoder:
    """Turns bytes into PolicyRequests; a request (with its empty line) may be `max_request` long."""

    max_request: int = 16_384
    _buffer: bytes = field(default=b"", init=False, repr=False)
    _scanned: int = field(default=0, init=False, repr=False)  # no b"\n\n" starts before this

    def feed(self, data: bytes) -> list[PolicyRequest]:
        self._buffer += data
        requests, start = [], 0
        while (end := self._buffer.find(b"\n\n", max(start, self._scanned))) >= 0:
            if end + 2 - start > self.max_request:
                raise PolicyProtocolError(f"request over {self.max_request} bytes")
            block = self._buffer[start:end].decode("utf-8", "replace")
            requests.append(PolicyRequest(tuple(_attribute(line) for line in block.split("\n"))))
            start = end + 2
        self._buffer = self._buffer[start:]
        if self._buffer.startswith(b"\n"):
            raise PolicyProtocolError("empty line where a request should start")
        if len(self._buffer) > self.max_request:
            raise PolicyProtocolError(f"request over {self.max_request} bytes")
        self._scanned = max(len(self._buffer) - 1, 0)
        return requests


def _attribute(line: str) -> tuple[str, str]:
    name, sep, value = line.partition("=")
    if not sep or not name:
        raise PolicyProtocolError(f"not name=value: {line[:40]!r}")
    return name, value


@lru_cache(maxsize=64)  # a listener answers with the same few actions over and over
def encode_action(action: str) -> bytes:
    """The answer to one request: ``action=<action>`` and the empty line."""
    if not action or any(c in action for c in "\r\n\0"):
        raise ValueError(f"a policy action is one non-empty line: {action!r}")
    return f"action={action}\n\n".encode()
