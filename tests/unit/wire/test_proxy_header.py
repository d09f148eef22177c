import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbridge.wire.proxy_header import V2_SIGNATURE, ProxyHeader, ProxyHeaderDecoder, ProxyHeaderError


def decode(data: bytes, chunk: int = 0) -> tuple[ProxyHeader | None, bytes]:
    """The header and the bytes after it, feeding `data` in pieces of `chunk` bytes."""
    decoder, size = ProxyHeaderDecoder(), chunk or max(len(data), 1)
    for start in range(0, len(data), size):
        header = decoder.feed(data[start : start + size])
        if header is not None:
            return header, decoder.rest + data[start + size :]
    return None, b""


V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 50123 110\r\nUSER alice\r\n"
V2 = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12) + bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 50123, 110)


def test_v1_header_names_the_client():
    header, rest = decode(V1)
    assert header == ProxyHeader(("192.0.2.7", 50123), ("198.51.100.1", 110))
    assert rest == b"USER alice\r\n"


def test_v1_ipv6():
    header, _ = decode(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 143\r\n")
    assert header.source == ("2001:db8::7", 4000)


def test_v1_unknown_is_a_health_check():
    assert decode(b"PROXY UNKNOWN\r\n")[0] == ProxyHeader(None, None)


def test_v2_header_names_the_client():
    header, rest = decode(V2 + b"+OK")
    assert header.source == ("192.0.2.7", 50123) and rest == b"+OK"


def test_v2_local_is_a_health_check():
    assert decode(V2_SIGNATURE + bytes([0x20, 0x00, 0, 0]))[0] == ProxyHeader(None, None)


@pytest.mark.parametrize("data", [
    b"USER alice\r\n", b"PROXY TCP4 999.0.2.7 1.2.3.4 1 2\r\n", b"PROXY TCP4 192.0.2.7 1.2.3.4 1\r\n",
    b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n", b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n", b"PROXY " + b"x" * 200,
    V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]) + bytes(12),
])
def test_malformed_headers_are_errors(data):
    with pytest.raises(ProxyHeaderError):
        decode(data)


@given(st.integers(min_value=1, max_value=20))
def test_chunking_never_changes_the_header(chunk):
    for data in (V1, V2 + b"rest"):
        assert decode(data, chunk) == decode(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_the_header_error(data):
    try:
        decode(data)
    except ProxyHeaderError:
        pass
