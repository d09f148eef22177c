"""Per-user policy from a real OpenLDAP slapd, through the real daemon, and real Postfix.

alice and dave are in the exempt group, bob is not, carol has a mailHost. popbridge runs with
an extra policy listener that answers `exempt_action` (a FILTER that skips the content filter)
and an extra WHOSON listener with updates enabled, used to put names that Dovecot would refuse
(injection strings, users without a mailbox) into the ledger.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require, running, started
from .servers import (
    LDAP_BASE,
    LDAP_BIND_DN,
    LDAP_BIND_PASSWORD,
    LDAP_EXEMPT_GROUP,
    Popbridge,
    Postfix,
    Slapd,
    SmtpSink,
    StartPopbridge,
    free_port,
    pop3_login,
    short_directory,
    unix_exchange,
    wait_until,
)

pytestmark = pytest.mark.realserver

PEOPLE = {"alice": {}, "bob": {}, "carol": {"mailHost": "127.0.0.1:1110"}, "dave": {}, "erin": {}}
EXEMPT = ("alice", "dave", "erin")
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}
AUTHORISED = "PREPEND X-Popbridge-Login: yes"  # the exempt listener's authorised_action
INJECTIONS = ["alice)(|(uid=*", "*", "alice*", "*)(memberOf=*", "alice)(memberOf=*", "(uid=alice)", "alice\\"]
TIMEOUT = 1.0  # [ldap] timeout


@pytest.fixture(scope="module")
def ldap_sockets() -> Iterator[Path]:
    """Sockets that outlive one daemon: the filtering Postfix asks the exempt listener here."""
    path = short_directory("pb-ldap-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    yield from running(Slapd(people=PEOPLE, exempt=EXEMPT), "slapd", "slapadd")


@pytest.fixture
def own_slapd() -> Iterator[Slapd]:
    """A slapd of its own, for tests that pause or stop it."""
    yield from running(Slapd(people=PEOPLE, exempt=EXEMPT), "slapd", "slapadd")


class LdapDaemon:
    """The daemon with [ldap] and the extra listeners, plus clients for them."""

    def __init__(self, daemon: Popbridge, sockets: Path, reinject_port: int) -> None:
        self.daemon, self.port = daemon, daemon.port
        self.exempt_policy = sockets / "exempt-policy.sock"
        self.whoson_updates = sockets / "whoson-updates.sock"
        self.exempt_action = f"FILTER smtp:[127.0.0.1]:{reinject_port}"

    def policy(self, client: str) -> str:
        """The exempt listener's action for `client`, as Postfix would receive it."""
        request = f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={client}\nclient_name=unknown\n\n"
        reply = unix_exchange(self.exempt_policy, request.encode(), b"\n\n")
        assert reply.startswith(b"action=") and reply.endswith(b"\n\n"), reply
        return reply[len(b"action="):-2].decode()

    def policy_per_recipient(self, client: str, recipients: int) -> list[tuple[float, str]]:
        """Ask as Postfix does for a message with `recipients` recipients: one request per
        recipient on one connection, each sent when the previous answer came. Each answer's
        wait in seconds, and its action."""
        answers = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.exempt_policy))
            for n in range(recipients):
                request = (f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={client}\n"
                           f"client_name=unknown\nrecipient=user{n}@outside.example\n\n")
                started = time.monotonic()
                s.sendall(request.encode())
                reply = b""
                while not reply.endswith(b"\n\n"):
                    chunk = s.recv(4096)
                    assert chunk, f"policy listener closed after {reply!r}"
                    reply += chunk
                answers.append((time.monotonic() - started, reply[len(b"action="):-2].decode()))
        return answers

    def whoson_login(self, client: str, user: str) -> None:
        reply = unix_exchange(self.whoson_updates, f"LOGIN {client} {user}\r\n\r\n".encode(), b"\r\n\r\n")
        assert reply.startswith(b"+"), reply


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port that refuses connections for the whole module: bound, never listening, so no
    other server can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def start_ldap_daemon(popbridge_daemon: StartPopbridge, ldap_sockets: Path, dead_port: int) -> Iterator:
    """`start_ldap_daemon(slapd, reinject_port=10025)`: the daemon in front of Dovecot, with the
    [ldap] table pointing at `slapd` behind a dead first URL (so fail-over is always exercised)."""
    password_file = ldap_sockets / "bind.pw"
    password_file.write_text(LDAP_BIND_PASSWORD + "\n")

    def start(slapd: Slapd, reinject_port: int = 10025) -> LdapDaemon:
        for stale in ("exempt-policy.sock", "whoson-updates.sock"):
            (ldap_sockets / stale).unlink(missing_ok=True)
        action = f"FILTER smtp:[127.0.0.1]:{reinject_port}"
        extra = f"""
[[lookup]]
protocol = "policy"
listen = "unix:address={ldap_sockets / 'exempt-policy.sock'}:mode=666"
authorised_action = "{AUTHORISED}"
exempt_action = "{action}"

[[lookup]]
protocol = "whoson"
listen = "unix:address={ldap_sockets / 'whoson-updates.sock'}:mode=600"
allow_updates = true

[ldap]
url = ["ldap://127.0.0.1:{dead_port}", "{slapd.url}"]
bind_dn = "{LDAP_BIND_DN}"
bind_password_file = "{password_file}"
base = "{LDAP_BASE}"
exempt_filter = "(memberOf={LDAP_EXEMPT_GROUP})"
backend_attribute = "mailHost"
timeout = {TIMEOUT}
"""
        daemon = LdapDaemon(popbridge_daemon(extra_config=extra), ldap_sockets, reinject_port)
        wait_until(lambda: daemon.exempt_policy.exists() and daemon.whoson_updates.exists(), "extra listeners")
        return daemon

    yield start


def test_exempt_user_gets_the_exempt_action(slapd: Slapd, start_ldap_daemon) -> None:
    daemon = start_ldap_daemon(slapd)
    pop3_login(daemon.port, "127.0.0.31", "alice", PASSWORDS["alice"])
    assert daemon.policy("127.0.0.31") == daemon.exempt_action


def test_ordinary_user_gets_the_authorised_action(slapd: Slapd, start_ldap_daemon) -> None:
    daemon = start_ldap_daemon(slapd)
    pop3_login(daemon.port, "127.0.0.32", "bob", PASSWORDS["bob"])
    assert daemon.policy("127.0.0.32") == AUTHORISED


def test_exempt_and_ordinary_user_behind_one_address_get_the_authorised_action(slapd, start_ldap_daemon) -> None:
    daemon = start_ldap_daemon(slapd)
    pop3_login(daemon.port, "127.0.0.33", "alice", PASSWORDS["alice"])
    assert daemon.policy("127.0.0.33") == daemon.exempt_action
    pop3_login(daemon.port, "127.0.0.33", "bob", PASSWORDS["bob"])
    assert daemon.policy("127.0.0.33") == AUTHORISED


def test_address_without_a_login_is_never_exempt(slapd: Slapd, start_ldap_daemon) -> None:
    daemon = start_ldap_daemon(slapd)
    pop3_login(daemon.port, "127.0.0.34", "alice", PASSWORDS["alice"])
    assert daemon.policy("127.0.0.35") == "DUNNO"


def test_socketmap_exempt_map_answers_yes_only_for_exempt_addresses(slapd, start_ldap_daemon, postfix: Postfix) -> None:
    daemon = start_ldap_daemon(slapd)
    exempt_map = daemon.daemon.socketmap_table("exempt")
    pop3_login(daemon.port, "127.0.0.36", "alice", PASSWORDS["alice"])
    pop3_login(daemon.port, "127.0.0.37", "bob", PASSWORDS["bob"])
    assert postfix.postmap_query("127.0.0.36", exempt_map) == "yes"
    assert postfix.postmap_query("127.0.0.37", exempt_map) is None
    assert postfix.postmap_query("127.0.0.38", exempt_map) is None


@pytest.mark.parametrize("name", INJECTIONS)
def test_injection_strings_as_user_names_never_become_exempt(slapd: Slapd, start_ldap_daemon, name: str) -> None:
    daemon = start_ldap_daemon(slapd)
    daemon.whoson_login("127.0.0.39", name)
    assert daemon.policy("127.0.0.39") == AUTHORISED


@pytest.mark.wallclock
def test_ldap_outage_answers_the_fallback_within_the_timeout_then_recovers(own_slapd, start_ldap_daemon) -> None:
    daemon = start_ldap_daemon(own_slapd)
    pop3_login(daemon.port, "127.0.0.40", "alice", PASSWORDS["alice"])
    assert daemon.policy("127.0.0.40") == daemon.exempt_action  # now cached

    own_slapd.pause()
    pop3_login(daemon.port, "127.0.0.41", "dave", PASSWORDS["dave"])  # exempt, but never looked up
    started = time.monotonic()
    assert daemon.policy("127.0.0.41") == AUTHORISED  # the fallback: not exempt, still authorised
    assert time.monotonic() - started < TIMEOUT + 0.5
    assert daemon.policy("127.0.0.40") == daemon.exempt_action  # the cached answer still serves

    own_slapd.resume()  # the next probe (at most 1 + 2 + 1 + 3 s after the outage began) finds it back
    wait_until(lambda: daemon.policy("127.0.0.41") == daemon.exempt_action, "fresh answers after SIGCONT", timeout=15)

    own_slapd.stop()
    daemon.whoson_login("127.0.0.42", "erin")  # exempt, never looked up
    started = time.monotonic()
    assert daemon.policy("127.0.0.42") == AUTHORISED
    assert time.monotonic() - started < TIMEOUT + 0.5
    own_slapd.start()
    wait_until(lambda: daemon.policy("127.0.0.42") == daemon.exempt_action, "fresh answers after a restart", timeout=15)

    log = daemon.daemon.output()
    assert log.count("LDAP directory unavailable") == 2  # once per outage
    assert log.count("LDAP directory answers again") == 2
    assert LDAP_BIND_PASSWORD not in log


@pytest.mark.wallclock
def test_a_hung_directory_costs_one_timeout_then_every_lookup_answers_at_once(own_slapd, start_ldap_daemon) -> None:
    """Issue 16, defect 4: slapd under SIGSTOP accepts connections and never answers. Postfix
    asks once per recipient; only the first look-up may wait the `timeout`, the others answer
    at once (the fallback: authorised, not exempt) while one probe retries; the first probe
    after SIGCONT ends the outage."""
    daemon = start_ldap_daemon(own_slapd)
    daemon.whoson_login("127.0.0.45", "dave")  # exempt, never looked up (a POP3 login would route it)
    daemon.whoson_login("127.0.0.46", "erin")
    own_slapd.pause()
    first, *others = daemon.policy_per_recipient("127.0.0.45", 20)
    assert first[1] == AUTHORISED and first[0] < TIMEOUT + 0.5
    assert [action for _, action in others] == [AUTHORISED] * 19
    assert max(wait for wait, _ in others) < 0.25, others  # not a timeout each: at once
    started = time.monotonic()
    assert {action for _, action in daemon.policy_per_recipient("127.0.0.46", 20)} == {AUTHORISED}  # another user
    assert time.monotonic() - started < 1.0
    own_slapd.resume()
    wait_until(lambda: daemon.policy("127.0.0.46") == daemon.exempt_action, "the probe to end the outage", timeout=15)
    assert daemon.policy("127.0.0.45") == daemon.exempt_action
    log = daemon.daemon.output()
    assert log.count("LDAP directory unavailable") == 1 and log.count("LDAP directory answers again") == 1


# ---------------------------------------------------------------- a real content filter


@pytest.fixture(scope="module")
def filtering_postfix(policy_socket: Path, ldap_sockets: Path) -> Iterator[tuple[Postfix, SmtpSink, SmtpSink, int]]:
    """Postfix with `content_filter` pointing at a scanner the test runs, a re-injection smtpd
    that skips it (where exempt mail is sent by FILTER), and everything delivered to an
    "outside" sink. Relay permission comes from the daemon's ordinary policy socket, the
    exempt decision from the exempt listener in smtpd_recipient_restrictions."""
    require("postfix", "postmap")
    scanner, outside = SmtpSink("scanner"), SmtpSink("outside")
    reinject_port = free_port()
    server = Postfix(
        policy_socket=policy_socket,
        main_extra=f"""\
content_filter = smtp:[127.0.0.1]:{scanner.port}
smtpd_recipient_restrictions = check_policy_service unix:{ldap_sockets / 'exempt-policy.sock'}
default_transport = smtp
relayhost = [127.0.0.1]:{outside.port}
""",
        master_extra=f"""\
127.0.0.1:{reinject_port} inet n - n - - smtpd
  -o content_filter=
  -o myhostname=reinject.popbridge-test.invalid
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=
""",
    )
    started(server)
    yield server, scanner, outside, reinject_port
    server.cleanup()
    scanner.close()
    outside.close()


def send_mail(postfix: Postfix, source: str, marker: str) -> None:
    message = f"Subject: {marker}\r\nMessage-ID: <{marker}@client.example>\r\n\r\n{marker}\r\n"
    with smtplib.SMTP(postfix.host, postfix.port, source_address=(source, 0), timeout=30) as smtp:
        smtp.sendmail("user@client.example", ["someone@outside.example"], message)


def test_exempt_users_mail_skips_the_content_filter_and_ordinary_mail_passes_it(
    slapd: Slapd, start_ldap_daemon, filtering_postfix
) -> None:
    postfix, scanner, outside, reinject_port = filtering_postfix
    daemon = start_ldap_daemon(slapd, reinject_port=reinject_port)
    pop3_login(daemon.port, "127.0.0.43", "alice", PASSWORDS["alice"])
    pop3_login(daemon.port, "127.0.0.44", "bob", PASSWORDS["bob"])

    alice_marker, bob_marker = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    send_mail(postfix, "127.0.0.43", alice_marker)
    send_mail(postfix, "127.0.0.44", bob_marker)

    delivered = outside.wait_for(alice_marker.encode())  # FILTER -> re-injection -> next hop
    assert scanner.find(alice_marker.encode()) is None
    scanned = scanner.wait_for(bob_marker.encode())
    assert outside.find(bob_marker.encode()) is None
    assert b"X-Popbridge-Login: yes" in scanned.data and b"X-Popbridge-Login" not in delivered.data
