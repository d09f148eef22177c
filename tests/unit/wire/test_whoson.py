"""The WHOSON decoder and answer encoders, without sockets."""

import pytest
from hypothesis import given, strategies as st

from popbridge.wire.whoson import (
    Command,
    WhosonDecoder,
    WhosonEvent,
    WhosonMalformed,
    WhosonProtocolError,
    WhosonRequest,
    encode_error,
    encode_no,
    encode_yes,
)


def feed_all(decoder: WhosonDecoder, chunks: list[bytes]) -> list[WhosonEvent]:
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def test_query_yields_a_request() -> None:
    assert WhosonDecoder().feed(b"QUERY 192.0.2.7\r\n\r\n") == [WhosonRequest(Command.QUERY, "192.0.2.7")]


def test_bare_lf_line_ends_are_accepted() -> None:
    assert WhosonDecoder().feed(b"QUERY 192.0.2.7\n\n") == [WhosonRequest(Command.QUERY, "192.0.2.7")]


def test_login_carries_the_user_and_logout_the_address() -> None:
    events = WhosonDecoder().feed(b"LOGIN 192.0.2.7 alice\r\n\r\nlogout 2001:db8::1\r\n\r\n")
    assert events == [
        WhosonRequest(Command.LOGIN, "192.0.2.7", "alice"),
        WhosonRequest(Command.LOGOUT, "2001:db8::1"),
    ]


def test_requests_split_at_every_point_yield_the_same_events() -> None:
    data = b"QUERY 192.0.2.7\r\n\r\nLOGIN 192.0.2.8 bob smith\r\n\r\nQUERY\r\n\r\n"
    expected = [
        WhosonRequest(Command.QUERY, "192.0.2.7"),
        WhosonRequest(Command.LOGIN, "192.0.2.8", "bob smith"),
        WhosonMalformed("QUERY needs an address"),
    ]
    for cut in range(len(data) + 1):
        for second in range(cut, len(data) + 1, 3):
            assert feed_all(WhosonDecoder(), split(data, [cut, second])) == expected


def test_request_waits_for_its_empty_line() -> None:
    decoder = WhosonDecoder()
    assert decoder.feed(b"QUERY 192.0.2.7\r\n") == []
    assert decoder.feed(b"\r\n") == [WhosonRequest(Command.QUERY, "192.0.2.7")]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"QUERY\r\n\r\n", "QUERY needs an address"),
        (b"QUERY mail.example.org\r\n\r\n", "not an IP address"),
        (b"FROB 192.0.2.7\r\n\r\n", "unknown command"),
        (b"   \r\n\r\n", "empty command"),
        (b"\r\n", "empty request"),
        (b"QUERY 192.0.2.7\r\nQUERY 192.0.2.8\r\n\r\n", "one command line per request"),
    ],
)
def test_framed_but_bad_request_is_malformed_not_an_error(data: bytes, reason: str) -> None:
    assert WhosonDecoder().feed(data) == [WhosonMalformed(reason)]


def test_decoder_keeps_serving_after_a_malformed_request() -> None:
    events = WhosonDecoder().feed(b"QUERY\r\n\r\nQUERY 192.0.2.7\r\n\r\n")
    assert events == [WhosonMalformed("QUERY needs an address"), WhosonRequest(Command.QUERY, "192.0.2.7")]


@pytest.mark.parametrize(
    "data",
    [
        b"QUERY " + b"1" * 2000,  # a line over the limit, unfinished
        b"QUERY " + b"1" * 2000 + b"\r\n\r\n",
        b"QUERY 192.0.2.7\r\n" * 200,  # a request block over the limit
        b"QUERY 192.0.2.7\0\r\n\r\n",
    ],
)
def test_framing_abuse_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(WhosonProtocolError):
        WhosonDecoder().feed(data)


def test_answers_end_with_an_empty_line() -> None:
    assert encode_yes("alice") == b"+alice\r\n\r\n"
    assert encode_yes() == b"+\r\n\r\n"
    assert encode_no() == b"-\r\n\r\n"
    assert encode_error("updates are disabled") == b"*updates are disabled\r\n\r\n"


def test_answer_text_cannot_break_the_line() -> None:
    assert encode_yes("al\r\n\r\n+ice\0") == b"+al????+ice?\r\n\r\n"


requests = st.tuples(
    st.sampled_from(["QUERY", "LOGIN", "LOGOUT", "query"]),
    st.sampled_from(["192.0.2.7", "2001:db8::1", "::ffff:192.0.2.1"]),
    st.text(st.characters(categories=("L", "N")), max_size=10),
    st.sampled_from([b"\r\n", b"\n"]),
)


@given(st.lists(requests, max_size=6), st.lists(st.integers(min_value=0), max_size=10))
def test_chunking_never_changes_the_events(stream: list[tuple[str, str, str, bytes]], cuts: list[int]) -> None:
    data = b"".join(f"{cmd} {addr} {extra}".encode() + eol + eol for cmd, addr, extra, eol in stream)
    expected = [WhosonRequest(Command(cmd.upper()), addr, extra) for cmd, addr, extra, _ in stream]
    assert feed_all(WhosonDecoder(), split(data, cuts)) == expected


def outcome(data: bytes, cuts: list[int]) -> tuple[list[WhosonEvent], bool]:
    decoder, decoded = WhosonDecoder(max_line=40, max_request=60), []
    try:
        for chunk in split(data, cuts):
            decoded += decoder.feed(chunk)
    except WhosonProtocolError:
        return [], True
    return decoded, False


pieces = st.sampled_from([b"QUERY ", b"LOGIN ", b"192.0.2.7", b"\r\n", b"\n", b" ", b"x" * 20, b"\0", b"\xff"])
noise = st.one_of(st.binary(max_size=200), st.lists(pieces, max_size=30).map(b"".join))


@given(noise, st.lists(st.integers(min_value=0), max_size=10))
def test_only_the_protocol_error_escapes_and_chunking_keeps_the_outcome(data: bytes, cuts: list[int]) -> None:
    assert outcome(data, cuts) == outcome(data, [])
