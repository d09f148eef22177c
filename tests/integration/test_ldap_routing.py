"""Per-user backends: a user whose LDAP entry names a mail host is logged in there.

A second Dovecot ("home") knows carol and erin with passwords the default Dovecot does not
accept, so a login through popbridge succeeds only if it really reached the home server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import running
from .imap_clients import imap_authenticate_plain, imap_login
from .servers import LDAP_BASE, LDAP_BIND_DN, LDAP_BIND_PASSWORD, Dovecot, Slapd, StartPopbridge, curl_pop3, pop3_login

pytestmark = pytest.mark.realserver

HOME_USERS = {"carol": "carol-home-pw", "erin": "erin-home-pw"}


@pytest.fixture(scope="module")
def home() -> Iterator[Dovecot]:
    yield from running(Dovecot(users=HOME_USERS, trusted_networks=("127.0.0.1/32",)), "dovecot", "doveadm")


@pytest.fixture(scope="module")
def routing_slapd(home: Dovecot) -> Iterator[Slapd]:
    people = {
        "alice": {},
        "carol": {"mailHost": f"127.0.0.1:{home.port}"},  # POP3
        "erin": {"mailHost": f"127.0.0.1:{home.imap_port}"},  # IMAP
    }
    yield from running(Slapd(people=people, exempt=()), "slapd", "slapadd")


@pytest.fixture
def daemon(popbridge_daemon: StartPopbridge, routing_slapd: Slapd, tmp_path_factory: pytest.TempPathFactory):
    password_file = tmp_path_factory.mktemp("ldap") / "bind.pw"
    password_file.write_text(LDAP_BIND_PASSWORD)
    return popbridge_daemon(imap4=True, forward_client_address=True, extra_config=f"""
[ldap]
url = "{routing_slapd.url}"
bind_dn = "{LDAP_BIND_DN}"
bind_password_file = "{password_file}"
base = "{LDAP_BASE}"
backend_attribute = "mailHost"
timeout = 2
""")


def logged_in_at(server: Dovecot, user: str, address: str) -> bool:
    return f"user=<{user}>" in server.log.text() and f"rip={address}" in server.log.text()


def test_pop3_user_with_a_mail_host_logs_in_there(daemon, home: Dovecot) -> None:
    pop3_login(daemon.port, "127.0.0.81", "carol", HOME_USERS["carol"])
    assert [login["user"] for login in daemon.logins("127.0.0.81")] == ["carol"]
    assert logged_in_at(home, "carol", "127.0.0.81")  # XCLIENT went to the home server too


def test_pop3_auth_plain_is_routed_too(daemon, home: Dovecot) -> None:
    result = curl_pop3(daemon.port, "127.0.0.82", "carol", HOME_USERS["carol"], "--login-options", "AUTH=PLAIN")
    assert result.returncode == 0, result.stderr
    assert [login["user"] for login in daemon.logins("127.0.0.82")] == ["carol"]


def test_user_without_a_mail_host_stays_on_the_default_backend(daemon, dovecot: Dovecot, home: Dovecot) -> None:
    pop3_login(daemon.port, "127.0.0.83", "alice", "alice-pw")
    assert [login["user"] for login in daemon.logins("127.0.0.83")] == ["alice"]
    assert not logged_in_at(home, "alice", "127.0.0.83")


def test_imap_login_and_authenticate_are_routed(daemon, home: Dovecot) -> None:
    imap_login(daemon.imap_port, "127.0.0.84", "erin", HOME_USERS["erin"])
    imap_authenticate_plain(daemon.imap_port, "127.0.0.85", "erin", HOME_USERS["erin"])
    assert [login["user"] for login in daemon.logins("127.0.0.84")] == ["erin"]
    assert [login["user"] for login in daemon.logins("127.0.0.85")] == ["erin"]
    assert logged_in_at(home, "erin", "127.0.0.84")
