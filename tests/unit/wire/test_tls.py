"""STLS / STARTTLS in the watchers: offered, performed, required, and the injection closed."""

import pytest

from popbridge.wire.imap4 import STARTTLS_TAG, Imap4LoginWatcher, ImapProtocolError
from popbridge.wire.login import StartBackendTls, StartClientTls, TlsOptions
from popbridge.wire.pop3 import Pop3LoginWatcher, Pop3ProtocolError
from tests.unit.wire.sessions import GREETING, run_session

OFFER = TlsOptions(offer_starttls=True)
REQUIRED = TlsOptions(offer_starttls=True, required=True)
IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 ID STARTTLS AUTH=PLAIN] ready.\r\n"


def test_pop3_capa_lists_popbridges_own_stls_before_the_dot():
    outcome = run_session([("backend", GREETING), ("client", b"CAPA\r\n"), ("backend", b"+OK\r\nUSER\r\nSTLS\r\n.\r\n")],
                          Pop3LoginWatcher(tls=OFFER))
    assert outcome.to_client.endswith(b"+OK\r\nUSER\r\nSTLS\r\n.\r\n")


def test_pop3_stls_starts_tls_and_drops_what_was_pipelined_behind_it():
    watcher = Pop3LoginWatcher(tls=OFFER)
    outcome = run_session([("backend", GREETING), ("client", b"STLS\r\nUSER alice\r\nPASS secret\r\n")], watcher)
    assert outcome.to_client == GREETING + b"+OK Begin TLS negotiation\r\n"
    assert StartClientTls() in outcome.events
    assert outcome.to_backend == b""
    after = run_session([("client", b"CAPA\r\n"), ("backend", b"+OK\r\nUSER\r\n.\r\n")], watcher)
    assert after.to_backend == b"CAPA\r\n"
    assert b"STLS" not in after.to_client


def test_pop3_stls_is_refused_when_no_certificate_is_configured():
    outcome = run_session([("backend", GREETING), ("client", b"STLS\r\n")], Pop3LoginWatcher())
    assert outcome.to_client.endswith(b"-ERR STLS is not offered here\r\n") and StartClientTls() not in outcome.events


def test_pop3_required_tls_refuses_logins_before_tls_and_sends_nothing():
    outcome = run_session([
        ("backend", GREETING), ("client", b"USER alice\r\nPASS secret\r\nAPOP a 0123456789abcdef0123456789abcdef\r\nAUTH PLAIN AGEAYg==\r\n"),
    ], Pop3LoginWatcher(tls=REQUIRED))
    assert outcome.to_backend == b""
    assert outcome.to_client.count(b"-ERR [AUTH] TLS is required") == 4


def test_pop3_required_tls_hides_login_methods_from_capa_before_tls():
    outcome = run_session([("backend", GREETING), ("client", b"CAPA\r\n"), ("backend", b"+OK\r\nUSER\r\nSASL PLAIN\r\nTOP\r\n.\r\n")],
                          Pop3LoginWatcher(tls=REQUIRED))
    assert outcome.to_client.endswith(b"+OK\r\nTOP\r\nSTLS\r\n.\r\n")


def test_pop3_required_tls_allows_logins_on_implicit_tls():
    outcome = run_session([("backend", GREETING), ("client", b"APOP alice 0123456789abcdef0123456789abcdef\r\n"), ("backend", b"+OK\r\n")],
                          Pop3LoginWatcher(tls=TlsOptions(active=True, required=True)))
    assert [login.user for login in outcome.logins] == ["alice"]


def test_pop3_backend_starttls_drops_bytes_sent_before_the_handshake():
    watcher = Pop3LoginWatcher(tls=TlsOptions(backend_starttls=True))
    outcome = run_session([("backend", GREETING), ("backend", b"+OK Begin TLS\r\n+OK fake greeting\r\n")], watcher)
    assert outcome.to_backend == b"STLS\r\n"
    assert StartBackendTls() in outcome.events
    assert outcome.to_client == GREETING
    after = run_session([("client", b"USER alice\r\n"), ("backend", b"+OK\r\n")], watcher)
    assert after.to_backend == b"USER alice\r\n"


def test_pop3_backend_refusing_stls_ends_the_session():
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", GREETING), ("backend", b"-ERR no TLS here\r\n")],
                    Pop3LoginWatcher(tls=TlsOptions(backend_starttls=True)))


def test_imap_capabilities_show_popbridges_starttls():
    outcome = run_session([("backend", IMAP_GREETING), ("client", b"a CAPABILITY\r\n"),
                           ("backend", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na OK\r\n")], Imap4LoginWatcher(tls=OFFER))
    assert b"[CAPABILITY IMAP4rev1 ID AUTH=PLAIN STARTTLS]" in outcome.to_client
    assert b"* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS\r\n" in outcome.to_client


def test_imap_starttls_starts_tls_and_drops_what_was_pipelined_behind_it():
    watcher = Imap4LoginWatcher(tls=OFFER)
    outcome = run_session([("backend", IMAP_GREETING), ("client", b"a STARTTLS\r\nb LOGIN alice secret\r\n")], watcher)
    assert outcome.to_client.endswith(b"a OK Begin TLS negotiation now\r\n")
    assert StartClientTls() in outcome.events and outcome.to_backend == b""
    after = run_session([("client", b"c CAPABILITY\r\n"), ("backend", b"* CAPABILITY IMAP4rev1 STARTTLS\r\nc OK\r\n")], watcher)
    assert b"STARTTLS" not in after.to_client


def test_imap_required_tls_advertises_logindisabled_and_refuses_login():
    outcome = run_session([("backend", IMAP_GREETING), ("client", b"a LOGIN alice secret\r\nb AUTHENTICATE PLAIN\r\n")],
                          Imap4LoginWatcher(tls=REQUIRED))
    assert b"[CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED]" in outcome.to_client
    assert b"a NO [PRIVACYREQUIRED]" in outcome.to_client and b"b NO [PRIVACYREQUIRED]" in outcome.to_client
    assert outcome.to_backend == b""


def test_imap_backend_starttls_ok_followed_by_a_fake_login_ok_records_nothing():
    watcher = Imap4LoginWatcher(tls=TlsOptions(backend_starttls=True))
    outcome = run_session([
        ("backend", IMAP_GREETING), ("backend", STARTTLS_TAG + b" OK begin TLS\r\nb OK LOGIN done\r\n"),
        ("client", b"b LOGIN alice x\r\n"), ("backend", b"b NO [AUTHENTICATIONFAILED] failed\r\n"),
    ], watcher)
    assert outcome.to_backend == STARTTLS_TAG + b" STARTTLS\r\nb LOGIN alice x\r\n"
    assert outcome.logins == []
    assert outcome.to_client.startswith(b"* OK ready.\r\n")


def test_imap_backend_refusing_starttls_ends_the_session():
    with pytest.raises(ImapProtocolError):
        run_session([("backend", IMAP_GREETING), ("backend", STARTTLS_TAG + b" BAD no\r\n")],
                    Imap4LoginWatcher(tls=TlsOptions(backend_starttls=True)))
