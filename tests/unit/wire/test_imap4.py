import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbridge.wire.imap4 import PROBE_TAG, Imap4LoginWatcher, ImapProtocolError
from popbridge.wire.login import LoginFailed, LoginSucceeded
from tests.unit.wire.sessions import run_session

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5] ready.\r\n"


def imap(steps, chunk=0, **options):
    return run_session([("backend", GREETING), *steps], Imap4LoginWatcher(**options), chunk)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_tagged_ok_to_login_records_the_user():
    outcome = imap([("client", b"a1 LOGIN alice secret\r\n"), ("backend", b"a1 OK Logged in\r\n")])
    assert outcome.logins == [LoginSucceeded("alice", "LOGIN")]


def test_greeting_capabilities_lose_starttls():
    outcome = imap([])
    assert outcome.to_client == GREETING.replace(b" STARTTLS", b"")


def test_wrong_login_pipelined_with_noop_records_nothing():
    outcome = imap([
        ("client", b"a1 LOGIN bob wrong\r\na2 NOOP\r\n"),
        ("backend", b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        ("backend", b"a2 OK NOOP completed.\r\n"),
    ])
    assert outcome.logins == [] and outcome.failures == [LoginFailed("bob", "LOGIN")]


def test_commands_wait_for_the_previous_tagged_completion():
    watcher = Imap4LoginWatcher()
    run_session([("backend", GREETING)], watcher)
    first = run_session([("client", b"a1 LOGIN bob wrong\r\na2 NOOP\r\n")], watcher)
    assert first.to_backend == b"a1 LOGIN bob wrong\r\n"
    second = run_session([("backend", b"a1 NO failed\r\n")], watcher)
    assert second.to_backend == b"a2 NOOP\r\n"


def test_reused_tag_ok_after_a_failed_login_records_nothing():
    outcome = imap([
        ("client", b"a1 LOGIN bob wrong\r\na1 NOOP\r\n"),
        ("backend", b"a1 NO failed\r\n"), ("backend", b"a1 OK NOOP completed\r\n"),
    ])
    assert outcome.logins == []


def test_sync_literals_wait_for_the_backends_continuation():
    outcome = imap([
        ("client", b"a LOGIN {5}\r\n"), ("backend", b"+ OK\r\n"), ("client", b"alice {6}\r\n"),
        ("backend", b"+ OK\r\n"), ("client", b"secret\r\n"), ("backend", b"a OK Logged in\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("alice", "LOGIN")]
    assert outcome.to_backend == b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n"


def test_literal_bytes_are_not_forwarded_before_the_continuation():
    watcher = Imap4LoginWatcher()
    run_session([("backend", GREETING)], watcher)
    early = run_session([("client", b"a LOGIN {5}\r\nalice {6}\r\n")], watcher)
    assert early.to_backend == b"a LOGIN {5}\r\n"


def test_non_sync_literals_follow_at_once():
    outcome = imap([("client", b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"), ("backend", b"a OK Logged in\r\n")])
    assert outcome.logins == [LoginSucceeded("alice", "LOGIN")]
    assert outcome.to_backend == b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"


def test_a_password_literal_holding_a_tagged_ok_records_nothing_when_refused():
    outcome = imap([
        ("client", b"a1 LOGIN alice {12+}\r\nx\r\na1 OK\r\nyz\r\n"), ("backend", b"a1 NO [AUTHENTICATIONFAILED] failed\r\n"),
    ])
    assert outcome.logins == []


def test_a_refused_literal_ends_the_command_and_what_follows_is_a_new_command():
    outcome = imap([
        ("client", b"a LOGIN {5}\r\n"), ("backend", b"a NO literal refused\r\n"),
        ("client", b"b NOOP\r\n"), ("backend", b"b OK\r\n"),
    ])
    assert outcome.to_backend == b"a LOGIN {5}\r\nb NOOP\r\n"
    assert outcome.logins == []


def test_quoted_user_names_are_unescaped():
    outcome = imap([("client", b'a LOGIN "al\\"ice\\\\x" "pw"\r\n'), ("backend", b"a OK\r\n")])
    assert outcome.logins == [LoginSucceeded('al"ice\\x', "LOGIN")]


def test_authenticate_plain_with_continuation():
    outcome = imap([
        ("client", b"a AUTHENTICATE PLAIN\r\n"), ("backend", b"+ \r\n"),
        ("client", b64(b"\0alice\0secret") + b"\r\n"), ("backend", b"a OK Logged in\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("alice", "AUTHENTICATE PLAIN")]


def test_authenticate_with_sasl_ir():
    outcome = imap([("client", b"a AUTHENTICATE PLAIN " + b64(b"bob\0master\0pw") + b"\r\n"), ("backend", b"a OK\r\n")])
    assert outcome.logins == [LoginSucceeded("bob", "AUTHENTICATE PLAIN")]


def test_authenticate_cancelled_records_nothing():
    outcome = imap([
        ("client", b"a AUTHENTICATE LOGIN\r\n"), ("backend", b"+ VXNlcm5hbWU6\r\n"),
        ("client", b"*\r\n"), ("backend", b"a BAD Authentication aborted\r\n"),
    ])
    assert outcome.logins == []


def test_a_continuation_answer_is_sasl_data_never_a_command():
    outcome = imap([
        ("client", b"a AUTHENTICATE LOGIN\r\n"), ("backend", b"+ VXNlcm5hbWU6\r\n"),
        ("client", b"b LOGIN alice secret\r\n"), ("backend", b"a NO invalid base64\r\n"),
    ])
    assert outcome.to_backend == b"a AUTHENTICATE LOGIN\r\n*\r\n"  # not base64: cancelled, never a command
    assert outcome.logins == []


@pytest.mark.parametrize("answer", [b"* OK Logged in\r\n", b"* BYE bye\r\n", b"* PREAUTH x\r\n"])
def test_untagged_answers_after_login_are_not_a_login(answer):
    outcome = imap([("client", b"a LOGIN alice pw\r\n"), ("backend", answer)])
    assert outcome.logins == []


def test_a_tagged_ok_for_another_tag_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a LOGIN alice pw\r\n"), ("backend", b"b OK Logged in\r\n")])


def test_an_unsolicited_tagged_ok_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("backend", b"a OK surprise\r\n")])


def test_failed_then_good_login_records_only_the_second():
    outcome = imap([
        ("client", b"a LOGIN alice bad\r\nb LOGIN bob good\r\n"), ("backend", b"a NO failed\r\n"), ("backend", b"b OK\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("bob", "LOGIN")]


def test_preauth_greeting_is_a_pipe_without_a_login():
    outcome = run_session([("backend", b"* PREAUTH ready\r\n"), ("client", b"a SELECT INBOX\r\n")], Imap4LoginWatcher())
    assert outcome.logins == [] and "authenticated" in outcome.events
    assert outcome.to_backend == b"a SELECT INBOX\r\n"


def test_ok_to_another_command_is_not_a_login():
    outcome = imap([("client", b"a CAPABILITY\r\n"), ("backend", b"* CAPABILITY IMAP4rev1 STARTTLS\r\na OK\r\n")])
    assert outcome.logins == []
    assert outcome.to_client.endswith(b"* CAPABILITY IMAP4rev1\r\na OK\r\n")


def test_starttls_is_refused_locally():
    outcome = imap([("client", b"s STARTTLS\r\n")])
    assert outcome.to_backend == b""
    assert outcome.to_client.endswith(b"s BAD STARTTLS is not offered here\r\n")


def test_a_clients_id_loses_forwarding_fields():
    outcome = imap([("client", b'i ID ("name" "mutt" "X-Originating-IP" "10.9.9.9" "x-connected-ip" "1.1.1.1")\r\n')])
    assert outcome.to_backend == b'i ID ("name" "mutt")\r\n'


def test_our_id_carries_the_client_address_before_any_client_command():
    watcher = Imap4LoginWatcher(client_address=("192.0.2.7", 50123))
    outcome = run_session([
        ("backend", GREETING), ("client", b"a LOGIN alice pw\r\n"),
        ("backend", b'* ID ("name" "Dovecot")\r\n' + PROBE_TAG + b" OK ID completed.\r\n"),
    ], watcher)
    assert outcome.to_backend == PROBE_TAG + b' ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "50123")\r\na LOGIN alice pw\r\n'
    assert outcome.to_client == GREETING.replace(b" STARTTLS", b"")


def test_no_id_is_sent_to_a_backend_that_does_not_offer_it():
    watcher = Imap4LoginWatcher(client_address=("192.0.2.7", 1))
    outcome = run_session([("backend", b"* OK [CAPABILITY IMAP4rev1] hi\r\n")], watcher)
    assert outcome.to_backend == b"" and len(outcome.notices) == 1


@pytest.mark.parametrize("announcement", [b"{-1}", b"{99999999999999999999}", b"{5x}", b"{}"])
def test_bad_literal_announcements_are_protocol_errors(announcement):
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a LOGIN " + announcement + b"\r\n")])


def test_oversized_literal_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a LOGIN {70000+}\r\n")], max_literal=65_536)


def test_invalid_tag_gets_untagged_bad():
    outcome = imap([("client", b"a*b NOOP\r\n")])
    assert outcome.to_client.endswith(b"* BAD popbridge: missing or invalid tag\r\n")
    assert outcome.to_backend == b""


def test_many_bad_commands_close_the_session():
    with pytest.raises(ImapProtocolError, match="too many bad commands"):
        imap([("client", b"%\r\n" * 11)], max_bad_commands=10)


def test_a_megabyte_line_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a LOGIN " + b"x" * 1_000_000 + b"\r\n")])


def test_nul_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a LOGIN al\0ice pw\r\n")])


def test_server_literals_in_untagged_answers_are_relayed_whole():
    outcome = imap([
        ("client", b"i ID NIL\r\n"), ("backend", b'* ID ("name" {7}\r\nDovecot)\r\ni OK\r\n'),
        ("client", b"a LOGIN x y\r\n"), ("backend", b"a NO\r\n"),
    ])
    assert b'* ID ("name" {7}\r\nDovecot)\r\n' in outcome.to_client


def test_pipelined_commands_after_login_are_handed_over():
    outcome = imap([("client", b"a LOGIN alice pw\r\nb SELECT INBOX\r\nc IDLE\r\n"), ("backend", b"a OK\r\n")])
    assert outcome.to_backend.endswith(b"b SELECT INBOX\r\nc IDLE\r\n")
    assert "authenticated" in outcome.events


SESSIONS = [
    [("client", b"a LOGIN {5}\r\n"), ("backend", b"+ OK\r\n"), ("client", b"alice {6+}\r\nsecret\r\nb NOOP\r\n"),
     ("backend", b"* CAPABILITY X\r\na OK\r\n")],
    [("client", b"a AUTHENTICATE PLAIN\r\n"), ("backend", b"+ \r\n"), ("client", b64(b"\0bob\0pw") + b"\r\n"),
     ("backend", b"a NO\r\n"), ("client", b"b LOGOUT\r\n"), ("backend", b"* BYE\r\nb OK\r\n")],
]


@settings(max_examples=60, deadline=None)
@given(session=st.sampled_from(SESSIONS), chunk=st.integers(min_value=1, max_value=40))
def test_chunking_never_changes_the_outcome(session, chunk):
    assert imap(session, chunk=chunk) == imap(session)


@settings(max_examples=300, deadline=None)
@given(client=st.binary(max_size=300), backend=st.binary(max_size=300))
def test_arbitrary_input_raises_only_the_protocol_error(client, backend):
    watcher = Imap4LoginWatcher(max_line=64, max_literal=64, max_pending=256)
    try:
        watcher.feed_backend(GREETING)
        watcher.feed_client(client)
        watcher.feed_backend(backend)
    except ImapProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(client=st.lists(st.sampled_from([b"a LOGIN {5}\r\n", b"alice", b" pw\r\n", b"a NOOP\r\n", b"b LOGIN x y\r\n", b"{3+}\r\n"]), max_size=6),
       reply=st.sampled_from([b"a NO x\r\n", b"* OK x\r\n", b"b NO\r\n", b"+ go\r\n", b"a BAD\r\n", b"* BYE\r\n"]))
def test_no_reply_but_the_tagged_ok_records_a_login(client, reply):
    try:
        outcome = imap([("client", b"".join(client)), ("backend", reply)])
    except ImapProtocolError:
        return
    assert outcome.logins == []


def test_an_ok_before_the_login_literal_was_sent_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a LOGIN {5}\r\n"), ("backend", b"+ go ahead\r\na OK LOGIN completed\r\n")])


def test_an_ok_before_the_sasl_response_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a AUTHENTICATE PLAIN\r\n"), ("backend", b"+ \r\na OK done\r\n")])


def test_an_ok_to_authenticate_without_any_response_is_a_protocol_error():
    with pytest.raises(ImapProtocolError):
        imap([("client", b"a AUTHENTICATE EXTERNAL\r\n"), ("backend", b"a OK done\r\n")])
