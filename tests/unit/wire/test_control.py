"""The control socket JSON-lines codec, without sockets."""

import json

import pytest
from hypothesis import given, strategies as st

from popbridge.wire.control import (
    ControlDecoder,
    ControlEvent,
    ControlMalformed,
    ControlProtocolError,
    ControlRequest,
    encode_reply,
    error_reply,
    ok_reply,
)


def feed_all(decoder: ControlDecoder, chunks: list[bytes]) -> list[ControlEvent]:
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def test_each_command_is_a_request() -> None:
    data = (
        b'{"command": "list"}\n{"command": "query", "address": "192.0.2.7"}\n'
        b'{"command": "revoke", "address": "2001:db8::1"}\r\n{"command": "stats"}\n'
    )
    expected = [
        ControlRequest("list"),
        ControlRequest("query", "192.0.2.7"),
        ControlRequest("revoke", "2001:db8::1"),
        ControlRequest("stats"),
    ]
    for cut in range(len(data) + 1):
        assert feed_all(ControlDecoder(), split(data, [cut])) == expected


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json", "not a JSON object"),
        (b"", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe{}", "not a JSON object"),
        (b"[" * 3000 + b"]" * 3000, "not a JSON object"),
        (b'{"command": "reboot"}', "unknown command; known: list, query, revoke, stats"),
        (b'{"command": ["list"]}', "unknown command; known: list, query, revoke, stats"),
        (b'{"command": "query"}', "query needs an IP address"),
        (b'{"command": "revoke", "address": "mail.example.org"}', "revoke needs an IP address"),
        (b'{"command": "revoke", "address": 7}', "revoke needs an IP address"),
        (b'{"command": "list", "address": "192.0.2.7"}', "unknown key 'address' for list"),
    ],
)
def test_bad_line_is_malformed_not_an_error(line: bytes, error: str) -> None:
    assert ControlDecoder(max_line=8192).feed(line + b"\n") == [ControlMalformed(error)]


def test_over_long_line_is_a_protocol_error() -> None:
    with pytest.raises(ControlProtocolError):
        ControlDecoder().feed(b"x" * 5000)


def test_replies_are_one_json_object_per_line() -> None:
    assert json.loads(ok_reply(revoked=2)) == {"ok": True, "revoked": 2}
    assert json.loads(error_reply("no")) == {"ok": False, "error": "no"}
    assert ok_reply().endswith(b"\n") and ok_reply().count(b"\n") == 1


def test_reply_text_cannot_break_the_line() -> None:
    line = encode_reply({"ok": True, "user": "al\nice\u2028é"})
    assert line.count(b"\n") == 1 and line.isascii()


@given(
    st.lists(st.sampled_from([ControlRequest("list"), ControlRequest("stats"), ControlRequest("query", "192.0.2.7")])),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_chunking_never_changes_the_requests(stream: list[ControlRequest], cuts: list[int]) -> None:
    lines = [
        {"command": r.command, **({"address": r.address} if r.address else {})} for r in stream
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    assert feed_all(ControlDecoder(), split(data, cuts)) == stream


def outcome(data: bytes, cuts: list[int]) -> tuple[list[ControlEvent], bool]:
    decoder, decoded = ControlDecoder(max_line=60), []
    try:
        for chunk in split(data, cuts):
            decoded += decoder.feed(chunk)
    except ControlProtocolError:
        return [], True
    return decoded, False


pieces = st.sampled_from([b'{"command": "list"}', b"{", b"}", b'"', b"\n", b":", b"[", b"\xff", b"x" * 25])
noise = st.one_of(st.binary(max_size=200), st.lists(pieces, max_size=30).map(b"".join))


@given(noise, st.lists(st.integers(min_value=0), max_size=10))
def test_only_the_protocol_error_escapes_and_chunking_keeps_the_outcome(data: bytes, cuts: list[int]) -> None:
    assert outcome(data, cuts) == outcome(data, [])
