"""IMAP clients log in to a real Dovecot (IMAP) through the real popbridge daemon.

Every test uses its own 127.0.0.x client address (fetchmail, which cannot choose one, comes from
127.0.0.1), and every test has a daemon of its own, so no test sees another's logins. The
daemon's log line names the command or SASL mechanism the client really used.
"""

from __future__ import annotations

import imaplib
import re
import time
from pathlib import Path

import pytest

from .conftest import require
from .imap_clients import (
    BoundIMAP4,
    close,
    curl_imap,
    fetch_literal,
    fetchmail_check,
    imap_authenticate_plain,
    imap_fetch_raw,
    imap_login,
    raw_imap_connection,
    read_until_closed,
)
from .servers import (
    Dovecot,
    Popbridge,
    Postfix,
    StartPopbridge,
    message_of_size,
    wait_until,
)

pytestmark = pytest.mark.realserver

LOGIN_REFUSED = 67  # curl: "Login denied"


def users(daemon: Popbridge, address: str) -> list[tuple[str, str]]:
    return [(login["user"], login["protocol"]) for login in daemon.logins(address)]  # type: ignore[misc]


def login_line(daemon: Popbridge, address: str) -> str:
    """The daemon's log line for the successful login from `address`."""
    return daemon.log.wait_for(lambda line: "login succeeded: user" in line and f"from {address} " in line)


# ---------------------------------------------------------------- clients that log in


def test_imaplib_login_is_recorded(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(imap4=True)
    assert imap_login(daemon.imap_port, "127.0.0.41", "alice", "alice-pw") == "OK"
    assert users(daemon, "127.0.0.41") == [("alice", "imap4")]
    assert login_line(daemon, "127.0.0.41").endswith("via imap4 LOGIN")


def test_imaplib_authenticate_plain_is_recorded(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(imap4=True)
    assert imap_authenticate_plain(daemon.imap_port, "127.0.0.42", "bob", "bob-pw") == "OK"
    assert users(daemon, "127.0.0.42") == [("bob", "imap4")]
    assert login_line(daemon, "127.0.0.42").endswith("via imap4 AUTHENTICATE PLAIN")


def test_authenticate_plain_with_authzid_records_the_user_dovecot_logged_in_as(
    popbridge_daemon: StartPopbridge, dovecot: Dovecot
) -> None:
    daemon = popbridge_daemon(imap4=True)
    mark = dovecot.log.mark()
    # the master user "admin" (authcid) logs in as carol (authzid) with admin's password
    assert imap_authenticate_plain(daemon.imap_port, "127.0.0.56", "admin", "admin-pw", authzid="carol") == "OK"
    dovecot.log.wait_for(lambda line: "imap-login: Info: Login: user=<carol>" in line, since=mark)
    assert users(daemon, "127.0.0.56") == [("carol", "imap4")]


def test_curl_logs_in_with_its_preferred_mechanism(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(imap4=True)
    result = curl_imap(daemon.imap_port, "127.0.0.43", "alice", "alice-pw")
    assert result.returncode == 0, result.stderr
    assert "INBOX" in result.stdout  # the folder listing, answered after the login
    assert "> A002 AUTHENTICATE CRAM-MD5" in result.stderr  # curl picks the strongest offered
    assert users(daemon, "127.0.0.43") == [("alice", "imap4")]
    assert login_line(daemon, "127.0.0.43").endswith("via imap4 AUTHENTICATE CRAM-MD5")


def test_curl_authenticate_plain_with_initial_response_is_recorded(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(imap4=True)
    result = curl_imap(daemon.imap_port, "127.0.0.44", "bob", "bob-pw", "--login-options", "AUTH=PLAIN")
    assert result.returncode == 0, result.stderr
    assert "> A002 AUTHENTICATE PLAIN " in result.stderr  # SASL-IR: the credentials on the command line
    assert users(daemon, "127.0.0.44") == [("bob", "imap4")]


def test_curl_authenticate_login_with_continuation_is_recorded(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(imap4=True)
    result = curl_imap(daemon.imap_port, "127.0.0.45", "alice", "alice-pw", "--login-options", "AUTH=LOGIN")
    assert result.returncode == 0, result.stderr
    assert "> A002 AUTHENTICATE LOGIN " in result.stderr  # user as initial response, password after "+"
    assert users(daemon, "127.0.0.45") == [("alice", "imap4")]
    assert login_line(daemon, "127.0.0.45").endswith("via imap4 AUTHENTICATE LOGIN")


def test_fetchmail_login_command_is_recorded(popbridge_daemon: StartPopbridge, tmp_path: Path) -> None:
    require("fetchmail")
    daemon = popbridge_daemon(imap4=True)
    result = fetchmail_check(tmp_path, daemon.imap_port, "alice", "alice-pw", auth="password")
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 0: mail waiting, 1: none
    assert re.search(r'IMAP> A\d+ LOGIN "alice" \*', result.stdout), result.stdout  # password shown as *
    assert users(daemon, "127.0.0.1") == [("alice", "imap4")]
    assert login_line(daemon, "127.0.0.1").endswith("via imap4 LOGIN")


def test_fetchmail_cram_md5_is_recorded(popbridge_daemon: StartPopbridge, tmp_path: Path) -> None:
    require("fetchmail")
    daemon = popbridge_daemon(imap4=True)
    result = fetchmail_check(tmp_path, daemon.imap_port, "bob", "bob-pw")
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: no mail, logged in all the same
    assert re.search(r"IMAP> A\d+ AUTHENTICATE CRAM-MD5", result.stdout), result.stdout
    assert users(daemon, "127.0.0.1") == [("bob", "imap4")]


# ---------------------------------------------------------------- failed logins


def test_wrong_imap_password_records_nothing(popbridge_daemon: StartPopbridge, postfix: Postfix) -> None:
    daemon = popbridge_daemon(imap4=True)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(daemon.imap_port, "127.0.0.46", "alice", "not-her-password")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_authenticate_plain(daemon.imap_port, "127.0.0.46", "bob", "not-his-password")
    result = curl_imap(daemon.imap_port, "127.0.0.46", "alice", "not-her-password")
    assert result.returncode == LOGIN_REFUSED, result.stderr
    assert daemon.logins("127.0.0.46") == []
    assert postfix.postmap_query("127.0.0.46", daemon.socketmap_table("access")) is None


def test_fetchmail_wrong_password_records_nothing(popbridge_daemon: StartPopbridge, tmp_path: Path) -> None:
    require("fetchmail")
    daemon = popbridge_daemon(imap4=True)
    result = fetchmail_check(tmp_path, daemon.imap_port, "alice", "not-her-password", auth="password")
    assert result.returncode == 3, result.stdout + result.stderr  # 3: authentication failed
    assert daemon.logins("127.0.0.1") == []


# ---------------------------------------------------------------- the session after the login


def test_5mb_imap_fetch_through_popbridge_is_byte_identical(popbridge_daemon: StartPopbridge, dovecot: Dovecot) -> None:
    message = message_of_size(5 * 1024 * 1024, subject="big imap")
    dovecot.deliver("erin", message)
    daemon = popbridge_daemon(imap4=True)
    direct = imap_fetch_raw(dovecot.imap_port, "127.0.0.48", "erin", "erin-pw")
    proxied = imap_fetch_raw(daemon.imap_port, "127.0.0.48", "erin", "erin-pw")
    assert fetch_literal(direct) == message
    assert proxied == direct


@pytest.mark.wallclock
def test_idle_session_keeps_its_address_authorised_until_ttl_after_it_closes(
    popbridge_daemon: StartPopbridge, postfix: Postfix
) -> None:
    ttl = 2.0
    daemon = popbridge_daemon(imap4=True, ttl=ttl)
    access = daemon.socketmap_table("access")
    imap = BoundIMAP4("127.0.0.1", daemon.imap_port, "127.0.0.49")
    try:
        imap.login("bob", "bob-pw")
        logged_in = time.monotonic()
        imap.select("INBOX")
        tag = imap._new_tag()
        imap.send_line(tag + b" IDLE")
        assert imap.readline().startswith(b"+ ")  # idling
        time.sleep(max(0.0, logged_in + 1.5 * ttl - time.monotonic()))  # hold IDLE past the ttl
        [login] = daemon.logins("127.0.0.49")
        assert (login["user"], login["open_sessions"]) == ("bob", 1)
        assert postfix.postmap_query("127.0.0.49", access) == "OK"
        imap.send_line(b"DONE")
        _, completion = imap.read_until_tagged(tag)
        assert completion.startswith(tag + b" OK")
        imap.logout()
    finally:
        close(imap)
    closed = time.monotonic()
    wait_until(lambda: daemon.logins("127.0.0.49")[0]["open_sessions"] == 0, "popbridge saw the session close")
    time.sleep(max(0.0, closed + ttl / 2 - time.monotonic()))  # half the ttl after the close
    assert postfix.postmap_query("127.0.0.49", access) == "OK"
    time.sleep(max(0.0, closed + ttl - time.monotonic()))  # the whole ttl after the close
    wait_until(lambda: daemon.logins("127.0.0.49") == [], "login expired ttl after the close", timeout=5)
    assert postfix.postmap_query("127.0.0.49", access) is None


# ---------------------------------------------------------------- the client's address for Dovecot


def test_forwarded_client_address_appears_in_dovecot_imap_log(
    popbridge_daemon: StartPopbridge, dovecot: Dovecot
) -> None:
    daemon = popbridge_daemon(imap4=True, forward_client_address=True)
    mark = dovecot.log.mark()
    imap_login(daemon.imap_port, "127.0.0.50", "carol", "carol-pw")
    line = dovecot.log.wait_for(lambda line: "imap-login: Info: Login: user=<carol>" in line, since=mark)
    assert "rip=127.0.0.50," in line
    assert users(daemon, "127.0.0.50") == [("carol", "imap4")]


def test_without_forwarding_dovecot_imap_sees_popbridge_address(
    popbridge_daemon: StartPopbridge, dovecot: Dovecot
) -> None:
    daemon = popbridge_daemon(imap4=True, forward_client_address=False)
    mark = dovecot.log.mark()
    imap_login(daemon.imap_port, "127.0.0.51", "carol", "carol-pw")
    line = dovecot.log.wait_for(lambda line: "imap-login: Info: Login: user=<carol>" in line, since=mark)
    assert "rip=127.0.0.1," in line


# ---------------------------------------------------------------- abuse before the login


BAD_COMMANDS = {
    # unknown commands: Dovecot answers BAD and hangs up itself after a few
    "rejected-by-dovecot": (b"".join(b"b%d FROBNICATE\r\n" % n for n in range(100)), b"* BYE"),
    # lines without a valid tag never reach Dovecot: popbridge answers and counts them itself
    "rejected-by-popbridge": (b"* NOOP\r\n" * 100, b"* BYE popbridge: too many bad commands"),
}


@pytest.mark.parametrize("commands, goodbye", BAD_COMMANDS.values(), ids=BAD_COMMANDS.keys())
def test_100_bad_commands_close_the_session_and_spare_other_clients(
    popbridge_daemon: StartPopbridge, commands: bytes, goodbye: bytes
) -> None:
    daemon = popbridge_daemon(imap4=True)
    abuser = raw_imap_connection(daemon.imap_port, "127.0.0.52")
    try:
        abuser.sendall(commands)
        assert imap_login(daemon.imap_port, "127.0.0.53", "alice", "alice-pw") == "OK"  # greeted, logged in
        answers = read_until_closed(abuser)
    finally:
        abuser.close()
    assert answers.count(b" BAD ") < 100, answers  # closed long before the last command was answered
    assert goodbye in answers, answers
    assert daemon.logins("127.0.0.52") == []
    assert users(daemon, "127.0.0.53") == [("alice", "imap4")]


def test_1mb_line_closes_the_session_and_spares_other_clients(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(imap4=True)
    abuser = raw_imap_connection(daemon.imap_port, "127.0.0.54")
    try:
        try:
            abuser.sendall(b"a LOGIN " + b"x" * (1024 * 1024) + b" y\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # popbridge hung up while the line was still coming: that is the point
        assert imap_login(daemon.imap_port, "127.0.0.55", "bob", "bob-pw") == "OK"
        read_until_closed(abuser)  # returns on EOF or reset; a socket timeout fails the test
    finally:
        abuser.close()
    assert daemon.logins("127.0.0.54") == []
    assert users(daemon, "127.0.0.55") == [("bob", "imap4")]
