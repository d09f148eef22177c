"""The socketmap protocol (Postfix socketmap_table(5), Sendmail), sans-IO.

Every query and every reply is a netstring, ``<length>:<payload>,``. A query's payload is
``<map name> <key>``; a reply's is ``OK <value>``, ``NOTFOUND ``, ``TEMP <reason>`` or
``PERM <reason>``. Several queries may share one connection. The length is plain decimal
digits without leading zeros, at most `max_query` (Postfix sends at most 10000 bytes).
"""

from dataclasses import dataclass, field


class SocketmapProtocolError(ValueError):
    """The peer broke the socketmap protocol; the caller hangs up."""


@dataclass(frozen=True)
class SocketmapRequest:
    map_name: str
    key: str


@dataclass
class SocketmapDecoder:
    """Turns bytes into SocketmapRequests; a payload may be at most `max_query` bytes."""

    max_query: int = 10_000
    _buffer: bytes = field(default=b"", init=False, repr=False)

    def feed(self, data: bytes) -> list[SocketmapRequest]:
        self._buffer += data
        requests, start = [], 0
        while (parsed := self._next(start)) is not None:
            request, start = parsed
            requests.append(request)
        self._buffer = self._buffer[start:]
        return requests

    def _next(self, start: int) -> tuple[SocketmapRequest, int] | None:
        """The query at `start` and where the next one starts, or None until more bytes come."""
        buffer, digits_max = self._buffer, len(str(self.max_query))
        colon = buffer.find(b":", start, start + digits_max + 1)
        digits = buffer[start:colon] if colon >= 0 else buffer[start : start + digits_max + 1]
        if digits and not digits.isdigit():
            raise SocketmapProtocolError(f"bad netstring length {digits[:20]!r}")
        if digits.startswith(b"0") and len(digits) > 1:
            raise SocketmapProtocolError(f"netstring length with a leading zero {digits!r}")
        if colon < 0:
            if len(digits) > digits_max:
                raise SocketmapProtocolError(f"netstring length over {digits_max} digits")
            return None
        if not digits:
            raise SocketmapProtocolError("netstring without a length")
        length = int(digits)
        if length > self.max_query:
            raise SocketmapProtocolError(f"query of {length} bytes, over {self.max_query}")
        end = colon + 1 + length
        if len(buffer) <= end:
            return None
        if buffer[end : end + 1] != b",":
            raise SocketmapProtocolError("netstring not ended by a comma")
        name, space, key = buffer[colon + 1 : end].partition(b" ")
        if not space or not name:
            raise SocketmapProtocolError(f"not '<map name> <key>': {buffer[colon + 1 : end][:40]!r}")
        return SocketmapRequest(name.decode("utf-8", "replace"), key.decode("utf-8", "replace")), end + 1


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def encode_ok(value: str) -> bytes:
    """``OK <value>``; the value must not be empty (older Postfix reads a bare OK as not found)."""
    if not value:
        raise ValueError("a socketmap OK reply needs a non-empty value")
    return netstring(b"OK " + value.encode())


def encode_notfound() -> bytes:
    """``NOTFOUND `` with its trailing space, the canonical empty reply."""
    return netstring(b"NOTFOUND ")


def encode_temp(reason: str) -> bytes:
    return netstring(b"TEMP " + (reason or "temporary failure").encode())


def encode_perm(reason: str) -> bytes:
    return netstring(b"PERM " + (reason or "permanent failure").encode())
