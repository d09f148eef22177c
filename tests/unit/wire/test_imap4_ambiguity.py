"""IMAP4: what the backend did not offer or the protocol forbids is refused or made safe
before it is forwarded, so the recorded user is always the one the backend read."""

import base64
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from popbridge.wire.imap4 import Imap4LoginWatcher, ImapProtocolError
from popbridge.wire.imap4_syntax import ImapSyntaxError, LiteralData, login_arguments, quoted
from popbridge.wire.login import LoginFailed, LoginSucceeded
from tests.unit.wire.sessions import run_session

DOVECOT = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5] ready.\r\n"
COURIER = b"* OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE IDLE AUTH=PLAIN AUTH=CRAM-MD5] Courier-IMAP ready.\r\n"
BARE = b"* OK ready.\r\n"  # no capabilities in the greeting


def imap(greeting, steps):
    return run_session([("backend", greeting), *steps], Imap4LoginWatcher())


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_non_sync_literal_to_a_backend_without_literal_plus_becomes_sync():
    outcome = imap(COURIER, [
        ("client", b"a LOGIN {5+}\r\nalice {8+}\r\nalice-pw\r\n"),
        ("backend", b"+ OK\r\n"), ("backend", b"+ OK\r\n"), ("backend", b"a OK LOGIN Ok.\r\n"),
    ])
    assert outcome.to_backend == b"a LOGIN {5}\r\nalice {8}\r\nalice-pw\r\n"
    assert outcome.to_client == COURIER + b"a OK LOGIN Ok.\r\n"  # popbridge's own "+" go to no one
    assert outcome.logins == [LoginSucceeded("alice", "LOGIN")]


def test_literal_bytes_wait_for_the_backends_answer_to_the_made_sync_literal():
    watcher = Imap4LoginWatcher()
    run_session([("backend", COURIER)], watcher)
    early = run_session([("client", b"a LOGIN {18+}\r\nb LOGIN bob bob-pw {3+}\r\npw!\r\n")], watcher)
    assert early.to_backend == b"a LOGIN {18}\r\n"


def test_capabilities_unknown_means_no_literal_plus():
    outcome = imap(BARE, [("client", b"a LOGIN {5+}\r\nalice pw\r\n")])
    assert outcome.to_backend == b"a LOGIN {5}\r\n"


def test_capability_answer_teaches_literal_plus():
    outcome = imap(BARE, [
        ("client", b"a CAPABILITY\r\n"), ("backend", b"* CAPABILITY IMAP4rev1 LITERAL+\r\na OK\r\n"),
        ("client", b"b LOGIN {5+}\r\nalice pw\r\n"),
    ])
    assert outcome.to_backend == b"a CAPABILITY\r\nb LOGIN {5+}\r\nalice pw\r\n"


@pytest.mark.parametrize(("size", "sent"), [(4096, b"{4096+}"), (4097, b"{4097}")])
def test_literal_minus_takes_non_sync_literals_up_to_4096_bytes(size, sent):
    greeting = b"* OK [CAPABILITY IMAP4rev1 LITERAL-] ready\r\n"
    watcher = Imap4LoginWatcher(max_literal=10_000, max_pending=20_000)
    outcome = run_session([("backend", greeting), ("client", b"a LOGIN alice {%d+}\r\n" % size)], watcher)
    assert outcome.to_backend == b"a LOGIN alice " + sent + b"\r\n"


def test_made_sync_literal_refused_by_the_backend_is_dropped_never_read_as_a_command():
    outcome = imap(COURIER, [
        ("client", b"a LOGIN {20+}\r\nb LOGIN bob bob-pw\r\n pw\r\nc NOOP\r\n"),
        ("backend", b"a NO literal too big\r\n"), ("backend", b"c OK\r\n"),
    ])
    assert outcome.to_backend == b"a LOGIN {20}\r\nc NOOP\r\n"
    assert outcome.logins == [] and outcome.failures == [LoginFailed("", "LOGIN")]


@pytest.mark.parametrize("line", [b"a LOGIN {5-}\r\n", b"a LOGIN alice ~{2}\r\n", b"a LOGIN alice ~{2+}\r\n"])
def test_minus_and_binary_literals_end_the_session(line):
    with pytest.raises(ImapProtocolError):
        imap(DOVECOT, [("client", line)])


@pytest.mark.parametrize("line", [
    b"a LOGIN  alice pw", b"a LOGIN alice pw ", b"a LOGIN alice pw extra", b"a LOGIN alice", b'a LOGIN "al\\ice" pw',
    b"a LOGIN al\xc3\xa9 pw", b'a LOGIN "al\x01ice" pw', b"a LOGIN alice\tpw", b'a LOGIN "alice"pw',
    b'a LOGIN "\xffalice" pw', b"a LOGIN " + b"a" * 256 + b" pw",
])
def test_malformed_login_gets_bad_and_is_not_forwarded(line):
    outcome = imap(DOVECOT, [("client", line + b"\r\n")])
    assert outcome.to_backend == b""
    assert outcome.to_client.startswith(DOVECOT + b"a BAD popbridge: ")


def test_refused_login_with_a_non_sync_literal_drops_that_literal():
    outcome = imap(DOVECOT, [
        ("client", b"a LOGIN alice{9+}\r\nb NOOP\r\n\r\nc NOOP\r\n"), ("backend", b"c OK\r\n"),
    ])
    assert outcome.to_backend == b"c NOOP\r\n"


def test_utf8_user_in_a_quoted_string_is_recorded():
    outcome = imap(DOVECOT, [("client", b'a LOGIN "j\xc3\xb6rg" pw\r\n'), ("backend", b"a OK\r\n")])
    assert outcome.logins == [LoginSucceeded("j\u00f6rg", "LOGIN")]


def test_unprintable_user_in_a_literal_ends_the_session_before_it_is_forwarded():
    watcher = Imap4LoginWatcher()
    run_session([("backend", DOVECOT), ("client", b"a LOGIN {5}\r\n"), ("backend", b"+ OK\r\n")], watcher)
    with pytest.raises(ImapProtocolError):
        watcher.feed_client(b"al\x01ce pw\r\n")


def test_tagged_answer_while_the_client_still_sends_a_literal_is_a_protocol_error():
    watcher = Imap4LoginWatcher()
    run_session([("backend", DOVECOT), ("client", b"a LOGIN {5}\r\n"), ("backend", b"+ OK\r\n"), ("client", b"al")], watcher)
    with pytest.raises(ImapProtocolError):
        watcher.feed_backend(b"a NO stop\r\n")


def test_cram_md5_with_an_initial_response_gets_bad_unforwarded():
    outcome = imap(DOVECOT, [("client", b"a AUTHENTICATE CRAM-MD5 " + b64(b"mallory 0123456789abcdef0123456789abcdef") + b"\r\n")])
    assert outcome.to_backend == b""
    assert outcome.to_client == DOVECOT + b"a BAD popbridge: CRAM-MD5 takes no initial response\r\n"


def test_initial_response_without_sasl_ir_answers_the_first_challenge():
    response = b64(b"\0alice\0alice-pw")
    outcome = imap(COURIER, [
        ("client", b"a AUTHENTICATE PLAIN " + response + b"\r\n"), ("backend", b"+ \r\n"), ("backend", b"a OK\r\n"),
    ])
    assert outcome.to_backend == b"a AUTHENTICATE PLAIN\r\n" + response + b"\r\n"
    assert outcome.to_client == COURIER + b"a OK\r\n"
    assert outcome.logins == [LoginSucceeded("alice", "AUTHENTICATE PLAIN")]


def test_initial_response_with_sasl_ir_goes_as_sent():
    command = b"a AUTHENTICATE PLAIN " + b64(b"\0alice\0alice-pw") + b"\r\n"
    outcome = imap(DOVECOT, [("client", command), ("backend", b"a OK\r\n")])
    assert outcome.to_backend == command and outcome.logins == [LoginSucceeded("alice", "AUTHENTICATE PLAIN")]


def test_empty_initial_response_for_plain_gets_bad():
    outcome = imap(DOVECOT, [("client", b"a AUTHENTICATE PLAIN =\r\n")])
    assert outcome.to_backend == b"" and b"a BAD popbridge: an empty initial response" in outcome.to_client


def test_mechanism_the_backend_did_not_list_gets_bad():
    outcome = imap(DOVECOT, [("client", b"a AUTHENTICATE XOAUTH2\r\n")])
    assert outcome.to_backend == b"" and outcome.to_client.endswith(b"a BAD popbridge: XOAUTH2 is not offered here\r\n")


@pytest.mark.parametrize("arguments", [b"PLAIN  AGFAYg==", b"PLAIN AGFAYg== x", b"PL\xffIN"])
def test_malformed_authenticate_gets_bad(arguments):
    outcome = imap(DOVECOT, [("client", b"a AUTHENTICATE " + arguments + b"\r\n")])
    assert outcome.to_backend == b"" and b"a BAD popbridge:" in outcome.to_client


def test_refused_first_response_is_replaced_by_a_cancel():
    outcome = imap(DOVECOT, [
        ("client", b"a AUTHENTICATE PLAIN\r\n"), ("backend", b"+ \r\n"),
        ("client", b64(b"\0ali\x00ce\0pw") + b"\r\n"), ("backend", b"a BAD Authentication aborted\r\n"),
    ])
    assert outcome.to_backend == b"a AUTHENTICATE PLAIN\r\n*\r\n" and outcome.logins == []


def test_ok_after_a_cancel_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap(DOVECOT, [
            ("client", b"a AUTHENTICATE PLAIN\r\n"), ("backend", b"+ \r\n"), ("client", b"*\r\n"), ("backend", b"a OK\r\n"),
        ])


def test_ok_before_the_held_initial_response_was_sent_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap(COURIER, [("client", b"a AUTHENTICATE PLAIN " + b64(b"\0alice\0pw") + b"\r\n"), ("backend", b"a OK\r\n")])


ASTRING_TEXT = st.binary(min_size=1, max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\0" not in b)


def astring(value: bytes, form: str) -> list:
    if form == "atom":
        return [value]
    if form == "quoted":
        return [quoted(value)]
    return [LiteralData(value)]


@given(user=ASTRING_TEXT, password=ASTRING_TEXT, forms=st.tuples(*[st.sampled_from(["atom", "quoted", "literal"])] * 2))
def test_login_arguments_read_back_what_any_well_formed_login_carries(user, password, forms):
    if "atom" in forms:
        assume(all(re.fullmatch(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+", v) for v, f in
                   zip((user, password), forms) if f == "atom"))
    parts = [b"a LOGIN ", *astring(user, forms[0]), b" ", *astring(password, forms[1]), b""]
    joined: list = []
    for part in parts:  # adjacent text parts arrive as one line segment
        if joined and isinstance(part, bytes) and isinstance(joined[-1], bytes):
            joined[-1] += part
        else:
            joined.append(part)
    assert login_arguments(joined, complete=True) == [user, password]


@given(parts=st.lists(st.one_of(st.binary(max_size=20), st.builds(LiteralData, st.binary(max_size=5))), max_size=5),
       complete=st.booleans())
def test_login_arguments_raise_only_the_syntax_error(parts, complete):
    try:
        arguments = login_arguments(parts, complete)
    except ImapSyntaxError:
        return
    assert len(arguments) <= 2
