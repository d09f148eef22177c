"""The policy delegation decoder and encoder, without sockets."""

import pytest
from hypothesis import given, strategies as st

from popbridge.wire.policy import PolicyDecoder, PolicyProtocolError, PolicyRequest, encode_action

POSTFIX_REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.7\nclient_name=unknown\nsender=a@example.org\n"
    b"recipient=b@example.net\nsasl_username=\nccert_subject=\n\n"
)


def feed_all(decoder: PolicyDecoder, chunks: list[bytes]) -> list[PolicyRequest]:
    return [request for chunk in chunks for request in decoder.feed(chunk)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def test_postfix_request_yields_its_attributes() -> None:
    [request] = PolicyDecoder().feed(POSTFIX_REQUEST)
    assert request.get("client_address") == "192.0.2.7"
    assert request.get("sasl_username") == ""
    assert request.get("missing") == ""
    assert request.get("missing", "x") == "x"


def test_request_split_at_every_point_yields_the_same_request() -> None:
    expected = PolicyDecoder().feed(POSTFIX_REQUEST * 2)
    for cut in range(len(POSTFIX_REQUEST) * 2 + 1):
        assert feed_all(PolicyDecoder(), split(POSTFIX_REQUEST * 2, [cut])) == expected


def test_incomplete_request_yields_nothing_until_its_empty_line() -> None:
    decoder = PolicyDecoder()
    assert decoder.feed(b"client_address=192.0.2.7\n") == []
    assert decoder.feed(b"\n") == [PolicyRequest("client_address=192.0.2.7")]


def test_value_may_contain_equals_signs() -> None:
    [request] = PolicyDecoder().feed(b"sender=a=b@example.org\n\n")
    assert request.get("sender") == "a=b@example.org"


def test_repeated_name_answers_with_its_last_value() -> None:
    [request] = PolicyDecoder().feed(b"client_address=192.0.2.7\nclient_address=192.0.2.8\nx=y\n\n")
    assert request.get("client_address") == "192.0.2.8"


def test_a_name_ending_in_another_name_is_not_that_name() -> None:
    [request] = PolicyDecoder().feed(b"xclient_address=192.0.2.9\nsender=client_address=1\n\n")
    assert request.get("client_address") == ""


def test_carriage_return_stays_in_the_value() -> None:
    [request] = PolicyDecoder().feed(b"client_address=192.0.2.7\r\n\n")
    assert request.get("client_address") == "192.0.2.7\r"


@pytest.mark.parametrize("block", [b"no equals sign\n\n", b"=value\n\n", b"\n", b"a=b\n\nc=d\n\n\n"])
def test_line_without_a_name_is_a_protocol_error(block: bytes) -> None:
    with pytest.raises(PolicyProtocolError):
        PolicyDecoder().feed(block)


def test_request_over_the_limit_is_a_protocol_error() -> None:
    with pytest.raises(PolicyProtocolError):
        PolicyDecoder(max_request=100).feed(b"a=" + b"x" * 200)


def test_complete_request_over_the_limit_is_a_protocol_error() -> None:
    with pytest.raises(PolicyProtocolError):
        PolicyDecoder(max_request=100).feed(b"a=" + b"x" * 200 + b"\n\n")


def test_megabyte_attribute_line_is_a_protocol_error() -> None:
    with pytest.raises(PolicyProtocolError):
        PolicyDecoder().feed(b"client_name=" + b"x" * 1_000_000)


def test_requests_up_to_the_limit_are_accepted() -> None:
    block = b"a=" + b"x" * 96 + b"\n\n"  # 100 bytes with its terminator
    assert len(PolicyDecoder(max_request=100).feed(block * 3)) == 3


def test_encode_action_gives_one_line_and_the_empty_line() -> None:
    assert encode_action("OK") == b"action=OK\n\n"
    assert encode_action("DEFER_IF_PERMIT try later") == b"action=DEFER_IF_PERMIT try later\n\n"


@pytest.mark.parametrize("action", ["", "OK\nREJECT", "OK\r", "OK\0"])
def test_encode_action_refuses_what_would_break_the_answer(action: str) -> None:
    with pytest.raises(ValueError):
        encode_action(action)


names = st.text(st.characters(exclude_characters="=\n", codec="utf-8"), min_size=1, max_size=20)
values = st.text(st.characters(exclude_characters="\n", codec="utf-8"), max_size=40)
requests = st.lists(st.tuples(names, values), min_size=1, max_size=8)


def encode_request(attributes: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}={value}\n".encode() for name, value in attributes) + b"\n"


@given(st.lists(requests, max_size=5), st.lists(st.integers(min_value=0), max_size=10))
def test_chunking_never_changes_the_requests(stream: list[list[tuple[str, str]]], cuts: list[int]) -> None:
    data = b"".join(encode_request(attributes) for attributes in stream)
    decoded = feed_all(PolicyDecoder(), split(data, cuts))
    assert [request.text + "\n\n" for request in decoded] == [encode_request(attributes).decode() for attributes in stream]


def outcome(data: bytes, cuts: list[int]) -> tuple[list[PolicyRequest], bool]:
    decoder, decoded = PolicyDecoder(max_request=64), []
    try:
        for chunk in split(data, cuts):
            decoded += decoder.feed(chunk)
    except PolicyProtocolError:
        return [], True
    return decoded, False


pieces = st.sampled_from([b"client_address=192.0.2.7", b"a=b", b"\n", b"\n\n", b"=", b"x" * 30, b"\r", b"\xff"])
noise = st.one_of(st.binary(max_size=300), st.lists(pieces, max_size=30).map(b"".join))


@given(noise, st.lists(st.integers(min_value=0), max_size=10))
def test_only_the_protocol_error_escapes_and_chunking_keeps_the_outcome(data: bytes, cuts: list[int]) -> None:
    assert outcome(data, cuts) == outcome(data, [])


@given(requests, names)
def test_get_answers_like_the_last_attribute_of_that_name(attributes: list[tuple[str, str]], probe: str) -> None:
    [request] = PolicyDecoder().feed(encode_request(attributes))
    for name in [probe, *(name for name, _ in attributes)]:
        assert request.get(name, "<none>") == dict(attributes).get(name, "<none>")


@given(requests, names)
def test_attribute_tells_a_missing_line_from_an_empty_value(attributes: list[tuple[str, str]], probe: str) -> None:
    [request] = PolicyDecoder().feed(encode_request(attributes))
    for name in [probe, *(name for name, _ in attributes)]:
        assert request.attribute(name) == dict(attributes).get(name)


def test_empty_sender_is_an_empty_value_not_a_missing_line() -> None:
    [request] = PolicyDecoder().feed(b"client_address=192.0.2.7\nsender=\n\n")
    assert request.attribute("sender") == "" and request.attribute("recipient") is None
