"""The real Postfix relay test of test_postfix_relay.py, with an IMAP login instead of POP3.

Postfix (fixture) relays for 127.0.0.1 only, and otherwise only when popbridge's policy service
says OK; a refusal must be 554 "Relay access denied", never the 451 of a broken lookup.
"""

from __future__ import annotations

import imaplib

import pytest

from .imap_clients import curl_imap, imap_authenticate_plain, imap_login
from .servers import Postfix, StartPopbridge

pytestmark = pytest.mark.realserver

RELAY_DENIED = 554
ACCEPTED = 250


def test_imap_login_lets_its_address_relay_and_no_other(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon(imap4=True)
    assert postfix.rcpt_code("127.0.0.61") == RELAY_DENIED
    imap_login(daemon.imap_port, "127.0.0.61", "alice", "alice-pw")
    assert postfix.rcpt_code("127.0.0.61") == ACCEPTED
    assert postfix.rcpt_code("127.0.0.62") == RELAY_DENIED


def test_imap_authenticate_lets_its_address_relay(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon(imap4=True)
    assert postfix.rcpt_code("127.0.0.63") == RELAY_DENIED
    imap_authenticate_plain(daemon.imap_port, "127.0.0.63", "bob", "bob-pw")
    assert postfix.rcpt_code("127.0.0.63") == ACCEPTED


def test_curl_imap_login_lets_its_address_relay(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon(imap4=True)
    assert postfix.rcpt_code("127.0.0.64") == RELAY_DENIED
    result = curl_imap(daemon.imap_port, "127.0.0.64", "alice", "alice-pw")
    assert result.returncode == 0, result.stderr
    assert postfix.rcpt_code("127.0.0.64") == ACCEPTED


def test_failed_imap_login_does_not_let_its_address_relay(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon(imap4=True)
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(daemon.imap_port, "127.0.0.65", "alice", "not-her-password")
    assert postfix.rcpt_code("127.0.0.65") == RELAY_DENIED
