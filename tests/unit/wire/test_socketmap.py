"""The socketmap netstring decoder and reply encoders, without sockets."""

import pytest
from hypothesis import given, strategies as st

from popbridge.wire.socketmap import (
    SocketmapDecoder,
    SocketmapProtocolError,
    SocketmapRequest,
    encode_notfound,
    encode_ok,
    encode_perm,
    encode_temp,
    netstring,
)


def feed_all(decoder: SocketmapDecoder, chunks: list[bytes]) -> list[SocketmapRequest]:
    return [request for chunk in chunks for request in decoder.feed(chunk)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def test_query_yields_map_name_and_key() -> None:
    assert SocketmapDecoder().feed(b"16:access 192.0.2.7,") == [SocketmapRequest("access", "192.0.2.7")]


def test_key_keeps_its_spaces() -> None:
    assert SocketmapDecoder().feed(b"12:user a b  c ,") == [SocketmapRequest("user", "a b  c ")]


def test_empty_key_is_a_request() -> None:
    assert SocketmapDecoder().feed(b"7:access ,") == [SocketmapRequest("access", "")]


def test_several_queries_split_at_every_point_yield_the_same_requests() -> None:
    data = b"16:access 192.0.2.7,14:access unknown,16:user 2001:db8::1,"
    expected = [
        SocketmapRequest("access", "192.0.2.7"),
        SocketmapRequest("access", "unknown"),
        SocketmapRequest("user", "2001:db8::1"),
    ]
    for cut in range(len(data) + 1):
        for second in range(cut, len(data) + 1):
            assert feed_all(SocketmapDecoder(), split(data, [cut, second])) == expected


def test_incomplete_query_yields_nothing_yet() -> None:
    decoder = SocketmapDecoder()
    assert decoder.feed(b"16:access 192.0.2") == []
    assert decoder.feed(b".7") == []
    assert decoder.feed(b",") == [SocketmapRequest("access", "192.0.2.7")]


@pytest.mark.parametrize(
    "data",
    [
        b"x6:access 192.0.2.7,",  # non-digit length
        b" 16:access 192.0.2.7,",  # leading junk
        b"1x:access,",
        b":access x,",  # no length
        b"016:access 192.0.2.7,",  # leading zero
        b"123456:",  # too many digits for the limit
        b"1234567",  # too many digits, no colon yet
        b"10001:",  # over the limit
        b"16:access 192.0.2.7;",  # missing comma
        b"16:access 192.0.2.77",  # wrong length: no comma where it should be
        b"15:access192.0.2.7,",  # no space between name and key
        b"8: access ,",  # empty map name
        b"0:,",
    ],
)
def test_malformed_netstring_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(SocketmapProtocolError):
        SocketmapDecoder().feed(data)


def test_query_of_exactly_the_limit_is_accepted() -> None:
    payload = b"access " + b"k" * 9993
    assert SocketmapDecoder().feed(netstring(payload)) == [SocketmapRequest("access", "k" * 9993)]


def test_replies_are_netstrings() -> None:
    assert encode_ok("OK") == b"5:OK OK,"
    assert encode_notfound() == b"9:NOTFOUND ,"
    assert encode_temp("store down") == b"15:TEMP store down,"
    assert encode_perm("unknown map") == b"16:PERM unknown map,"


def test_ok_never_goes_out_bare() -> None:
    with pytest.raises(ValueError):
        encode_ok("")


def test_utf8_value_length_counts_bytes() -> None:
    assert encode_ok("é") == b"5:OK \xc3\xa9,"


words = st.text(st.characters(exclude_characters=" ", codec="utf-8"), min_size=1, max_size=12)
keys = st.text(st.characters(codec="utf-8"), max_size=30)


@given(st.lists(st.tuples(words, keys), max_size=6), st.lists(st.integers(min_value=0), max_size=10))
def test_chunking_never_changes_the_requests(queries: list[tuple[str, str]], cuts: list[int]) -> None:
    data = b"".join(netstring(f"{name} {key}".encode()) for name, key in queries)
    assert feed_all(SocketmapDecoder(), split(data, cuts)) == [SocketmapRequest(n, k) for n, k in queries]


def outcome(data: bytes, cuts: list[int]) -> tuple[list[SocketmapRequest], bool]:
    decoder, decoded = SocketmapDecoder(max_query=50), []
    try:
        for chunk in split(data, cuts):
            decoded += decoder.feed(chunk)
    except SocketmapProtocolError:
        return [], True
    return decoded, False


pieces = st.sampled_from([b"16:access 192.0.2.7,", b"5:", b"1", b"0", b":", b",", b" ", b"access", b"\xff", b"9"])
noise = st.one_of(st.binary(max_size=200), st.lists(pieces, max_size=30).map(b"".join))


@given(noise, st.lists(st.integers(min_value=0), max_size=10))
def test_only_the_protocol_error_escapes_and_chunking_keeps_the_outcome(data: bytes, cuts: list[int]) -> None:
    assert outcome(data, cuts) == outcome(data, [])
