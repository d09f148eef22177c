"""Logins held while their backend is chosen, then sent on or replayed to another backend."""

import base64

import pytest

from popbridge.wire.imap4 import Imap4LoginWatcher
from popbridge.wire.login import LoginSucceeded, RouteLogin
from popbridge.wire.pop3 import Pop3LoginWatcher, Pop3ProtocolError
from tests.unit.wire.sessions import GREETING, Outcome, run_session

IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready.\r\n"
OTHER_POP3 = b"+OK other server ready.\r\n"
OTHER_IMAP = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] other ready.\r\n"


def decide(watcher, switch: bool) -> Outcome:
    outcome = Outcome()
    outcome.take(watcher.route_decided(switch))
    return outcome


def test_pop3_user_is_held_until_its_backend_is_chosen():
    watcher = Pop3LoginWatcher(route_logins=True)
    held = run_session([("backend", GREETING), ("client", b"USER carol\r\nPASS pw\r\n")], watcher)
    assert RouteLogin("carol") in held.events and held.to_backend == b""
    assert decide(watcher, False).to_backend == b"USER carol\r\n"
    rest = run_session([("backend", b"+OK\r\n"), ("backend", b"+OK Logged in\r\n")], watcher)
    assert rest.to_backend == b"PASS pw\r\n" and rest.logins == [LoginSucceeded("carol", "USER")]


def test_pop3_switched_backend_greets_popbridge_and_gets_the_held_user():
    watcher = Pop3LoginWatcher(route_logins=True)
    run_session([("backend", GREETING), ("client", b"USER carol\r\nPASS pw\r\n")], watcher)
    assert decide(watcher, True).to_backend == b""
    after = run_session([("backend", OTHER_POP3), ("backend", b"+OK\r\n"), ("backend", b"+OK Logged in\r\n")], watcher)
    assert after.to_backend == b"USER carol\r\nPASS pw\r\n"
    assert after.to_client == b"+OK\r\n+OK Logged in\r\n"  # the new greeting is not shown
    assert after.logins == [LoginSucceeded("carol", "USER")]


def test_pop3_auth_plain_without_initial_response_is_replayed_with_the_held_response():
    response = base64.b64encode(b"\0carol\0pw") + b"\r\n"
    watcher = Pop3LoginWatcher(route_logins=True)
    held = run_session([("backend", GREETING), ("client", b"AUTH PLAIN\r\n"), ("backend", b"+ \r\n"),
                        ("client", response)], watcher)
    assert RouteLogin("carol") in held.events and held.to_backend == b"AUTH PLAIN\r\n"
    decide(watcher, True)
    after = run_session([("backend", OTHER_POP3), ("backend", b"+ \r\n"), ("backend", b"+OK Logged in\r\n")], watcher)
    assert after.to_backend == b"AUTH PLAIN\r\n" + response
    assert after.to_client == b"+OK Logged in\r\n" and after.logins == [LoginSucceeded("carol", "AUTH PLAIN")]


def test_pop3_apop_and_cram_md5_are_never_held():
    watcher = Pop3LoginWatcher(route_logins=True)
    outcome = run_session([("backend", GREETING), ("client", b"APOP carol 0123456789abcdef0123456789abcdef\r\n")], watcher)
    assert outcome.to_backend == b"APOP carol 0123456789abcdef0123456789abcdef\r\n"
    watcher = Pop3LoginWatcher(route_logins=True)
    outcome = run_session([("backend", GREETING), ("client", b"AUTH CRAM-MD5\r\n"), ("backend", b"+ PDEyMz4=\r\n"),
                           ("client", base64.b64encode(b"carol 0123") + b"\r\n")], watcher)
    assert not any(isinstance(e, RouteLogin) for e in outcome.events)


def test_imap_one_line_login_is_replayed_to_the_switched_backend():
    watcher = Imap4LoginWatcher(route_logins=True)
    held = run_session([("backend", IMAP_GREETING), ("client", b"a LOGIN carol pw\r\nb SELECT INBOX\r\n")], watcher)
    assert RouteLogin("carol") in held.events and held.to_backend == b""
    decide(watcher, True)
    after = run_session([("backend", OTHER_IMAP), ("backend", b"a OK Logged in\r\n")], watcher)
    assert after.to_backend == b"a LOGIN carol pw\r\nb SELECT INBOX\r\n"
    assert after.to_client == b"a OK Logged in\r\n" and after.logins == [LoginSucceeded("carol", "LOGIN")]


def test_imap_authenticate_with_sasl_ir_is_held_and_sent_on():
    response = base64.b64encode(b"\0carol\0pw") + b"\r\n"
    watcher = Imap4LoginWatcher(route_logins=True)
    run_session([("backend", IMAP_GREETING), ("client", b"a AUTHENTICATE PLAIN " + response)], watcher)
    # the backend is not chosen yet, so its SASL-IR is not known: the response answers the challenge
    assert decide(watcher, False).to_backend == b"a AUTHENTICATE PLAIN\r\n"
    assert run_session([("backend", b"+ \r\n")], watcher).to_backend == response
    assert run_session([("backend", b"a OK\r\n")], watcher).logins == [LoginSucceeded("carol", "AUTHENTICATE PLAIN")]


def test_imap_login_with_a_sync_literal_user_stays_on_the_default_backend():
    watcher = Imap4LoginWatcher(route_logins=True)
    outcome = run_session([("backend", IMAP_GREETING), ("client", b"a LOGIN {5}\r\n")], watcher)
    assert outcome.to_backend == b"a LOGIN {5}\r\n"
    assert not any(isinstance(e, RouteLogin) for e in outcome.events)


def test_a_switched_backend_that_refuses_ends_the_session():
    watcher = Pop3LoginWatcher(route_logins=True)
    run_session([("backend", GREETING), ("client", b"USER carol\r\n")], watcher)
    decide(watcher, True)
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", b"-ERR go away\r\n")], watcher)
