"""A real Postfix asks the real popbridge daemon whether a client may relay.

Postfix (fixture) relays for 127.0.0.1 only, and otherwise only when popbridge's policy service
says OK; a refusal must be 554 "Relay access denied", never the 451 of a broken lookup.
"""

from __future__ import annotations

import time

import pytest

from .servers import Postfix, StartPopbridge, pop3_login, wait_until

pytestmark = pytest.mark.realserver

RELAY_DENIED = 554
ACCEPTED = 250


def test_address_without_login_may_not_relay(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    popbridge_daemon()
    assert postfix.rcpt_code("127.0.0.5") == RELAY_DENIED


def test_pop3_login_lets_its_address_relay(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon()
    assert postfix.rcpt_code("127.0.0.5") == RELAY_DENIED
    pop3_login(daemon.port, "127.0.0.5", "alice", "alice-pw")
    assert postfix.rcpt_code("127.0.0.5") == ACCEPTED


def test_login_from_one_address_does_not_let_another_relay(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon()
    pop3_login(daemon.port, "127.0.0.5", "alice", "alice-pw")
    assert postfix.rcpt_code("127.0.0.6") == RELAY_DENIED


@pytest.mark.wallclock
def test_relay_is_refused_again_after_ttl(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    ttl = 2.0
    daemon = popbridge_daemon(ttl=ttl)
    pop3_login(daemon.port, "127.0.0.5", "alice", "alice-pw")
    closed = time.monotonic()  # the session is over: its ttl runs from here at the latest
    assert postfix.rcpt_code("127.0.0.5") == ACCEPTED
    time.sleep(max(0.0, closed + ttl - time.monotonic()))  # let the ttl pass
    wait_until(lambda: postfix.rcpt_code("127.0.0.5") == RELAY_DENIED, "relay refused after the ttl", timeout=5)


def test_postmap_finds_address_only_after_login(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon()
    access = daemon.socketmap_table("access")
    assert postfix.postmap_query("127.0.0.5", access) is None
    pop3_login(daemon.port, "127.0.0.5", "alice", "alice-pw")
    assert postfix.postmap_query("127.0.0.5", access) == "OK"
