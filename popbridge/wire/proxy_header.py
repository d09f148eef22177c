"""The PROXY protocol header (HAProxy, versions 1 and 2), sans-IO.

A load balancer in front of popbridge sends this header first, naming the real client; the
address recorded for a login must be that client's, never the balancer's. Only the header is
read here; whoever may send it (``trusted_proxies``) is decided by the glue.
"""

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_MAX_BODY = 4096  # addresses plus TLVs; real balancers send far less


class ProxyHeaderError(ValueError):
    """Not a PROXY header, or a malformed one: the connection is dropped."""


@dataclass(frozen=True)
class ProxyHeader:
    """The proxied connection's addresses; None for LOCAL / UNKNOWN (a health check)."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None


class ProxyHeaderDecoder:
    """Feed bytes until `feed` returns the header; `rest` then holds what followed it."""

    def __init__(self) -> None:
        self._buffer = b""
        self.rest = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        self._buffer += data
        buffer = self._buffer
        if buffer[:12] == V2_SIGNATURE[: len(buffer[:12])] and len(buffer) < 16:
            return None
        if buffer.startswith(V2_SIGNATURE):
            return self._v2(buffer)
        if V1_PREFIX.startswith(buffer[:6]) and len(buffer) < 6:
            return None
        if buffer.startswith(V1_PREFIX):
            return self._v1(buffer)
        raise ProxyHeaderError("no PROXY header")

    def _v1(self, buffer: bytes) -> ProxyHeader | None:
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise ProxyHeaderError("PROXY v1 line too long")
            return None
        self.rest = buffer[end + 2 :]
        fields = buffer[:end].split(b" ")
        if fields[1:2] == [b"UNKNOWN"]:
            return ProxyHeader(None, None)
        if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
            raise ProxyHeaderError("malformed PROXY v1 line")
        version = 4 if fields[1] == b"TCP4" else 6
        source = (_address(fields[2], version), _port(fields[4]))
        destination = (_address(fields[3], version), _port(fields[5]))
        return ProxyHeader(source, destination)

    def _v2(self, buffer: bytes) -> ProxyHeader | None:
        version_command, family, length = buffer[12], buffer[13], struct.unpack("!H", buffer[14:16])[0]
        if version_command >> 4 != 2 or version_command & 0x0F > 1:
            raise ProxyHeaderError("unsupported PROXY v2 version or command")
        if length > V2_MAX_BODY:
            raise ProxyHeaderError("PROXY v2 header too long")
        if len(buffer) < 16 + length:
            return None
        body, self.rest = buffer[16 : 16 + length], buffer[16 + length :]
        if version_command & 0x0F == 0:  # LOCAL: the balancer itself (health check)
            return ProxyHeader(None, None)
        if family == 0x11 and length >= 12:
            source_ip, destination_ip, source_port, destination_port = struct.unpack("!4s4sHH", body[:12])
        elif family == 0x21 and length >= 36:
            source_ip, destination_ip, source_port, destination_port = struct.unpack("!16s16sHH", body[:36])
        elif family == 0x00:
            return ProxyHeader(None, None)
        else:
            raise ProxyHeaderError("unsupported or short PROXY v2 address block")
        return ProxyHeader(
            (str(ipaddress.ip_address(source_ip)), source_port),
            (str(ipaddress.ip_address(destination_ip)), destination_port),
        )


def _address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("bad address in PROXY v1 line") from None
    if address.version != version:
        raise ProxyHeaderError("address family does not match the PROXY v1 line")
    return str(address)


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError("bad port in PROXY v1 line")
    return int(text)
