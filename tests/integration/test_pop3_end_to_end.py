"""POP3 clients log in to a real Dovecot through the real popbridge daemon.

Every test uses its own 127.0.0.x client address, so no test sees another's logins.
"""

from __future__ import annotations

import poplib

import pytest

from .servers import Dovecot, Postfix, StartPopbridge, curl_pop3, message_of_size, pop3_login, pop3_retr_raw

pytestmark = pytest.mark.realserver


def test_curl_logs_in_through_popbridge(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon()
    result = curl_pop3(daemon.port, "127.0.0.11", "alice", "alice-pw")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 ")  # the message listing of alice's mailbox
    assert [(login["user"], login["protocol"]) for login in daemon.logins("127.0.0.11")] == [("alice", "pop3")]


def test_popbridge_run_uses_the_popbridge_reactor(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon()
    assert "reactor class: popbridge.fast.reactor.PopbridgeReactor" in daemon.log.text()


def test_plain_twistd_on_twisteds_default_reactor_works_the_same(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(plain_twistd=True)
    assert "reactor class: twisted.internet.epollreactor.EPollReactor" in daemon.log.text()
    assert pop3_login(daemon.port, "127.0.0.17", "bob", "bob-pw").startswith(b"+OK")
    assert [(login["user"], login["protocol"]) for login in daemon.logins("127.0.0.17")] == [("bob", "pop3")]


def test_poplib_logs_in_through_popbridge(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon()
    assert pop3_login(daemon.port, "127.0.0.12", "bob", "bob-pw").startswith(b"+OK")
    assert [(login["user"], login["protocol"]) for login in daemon.logins("127.0.0.12")] == [("bob", "pop3")]


def test_5mb_message_through_popbridge_is_byte_identical(popbridge_daemon: StartPopbridge, dovecot: Dovecot) -> None:
    dovecot.deliver("dave", message_of_size(5 * 1024 * 1024))
    daemon = popbridge_daemon()
    direct = pop3_retr_raw(dovecot.port, "127.0.0.13", "dave", "dave-pw")
    proxied = pop3_retr_raw(daemon.port, "127.0.0.13", "dave", "dave-pw")
    assert len(direct) > 5 * 1024 * 1024
    assert proxied == direct


def test_wrong_password_records_nothing(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon()
    with pytest.raises(poplib.error_proto, match="-ERR"):
        pop3_login(daemon.port, "127.0.0.14", "alice", "not-her-password")
    assert daemon.logins("127.0.0.14") == []
    assert postfix.postmap_query("127.0.0.14", daemon.socketmap_table("access")) is None


def test_forwarded_client_address_appears_in_dovecot_log(popbridge_daemon: StartPopbridge, dovecot: Dovecot) -> None:
    daemon = popbridge_daemon(forward_client_address=True)
    mark = dovecot.log.mark()
    pop3_login(daemon.port, "127.0.0.15", "carol", "carol-pw")
    line = dovecot.log.wait_for(lambda line: "Login: user=<carol>" in line, since=mark)
    assert "rip=127.0.0.15," in line


def test_without_forwarding_dovecot_sees_popbridge_address(popbridge_daemon: StartPopbridge, dovecot: Dovecot) -> None:
    daemon = popbridge_daemon(forward_client_address=False)
    mark = dovecot.log.mark()
    pop3_login(daemon.port, "127.0.0.16", "carol", "carol-pw")
    line = dovecot.log.wait_for(lambda line: "Login: user=<carol>" in line, since=mark)
    assert "rip=127.0.0.1," in line
