"""Sender binding end to end: real Dovecot logins, real slapd, and a real Postfix that runs the
documented Postfix policy lines (docs/deploy/postfix.md), with swaks as the mail client from
127.0.0.x addresses.

Owners: `domains = ["example.org"]` gives every login name its example.org address; the map
file gives shared@example.org to alice and bob; LDAP gives carol carol@ldap.example (`mail`)
and carol.second@ldap.example (`mailAlternateAddress`), and dave dave@ldap.example.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import require, running, started
from .servers import (
    LDAP_BASE,
    LDAP_BIND_DN,
    LDAP_BIND_PASSWORD,
    Popbridge,
    Postfix,
    ServerError,
    Slapd,
    StartPopbridge,
    binary,
    policy_action,
    pop3_login,
    short_directory,
    wait_until,
)

pytestmark = pytest.mark.realserver

POSTFIX_PAGE = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "postfix.md"

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}
MISMATCH_TEXT = "Sender address is not yours"
TEMPFAIL_TEXT = "Service temporarily unavailable"
TIMEOUT = 1.0  # [ldap] timeout
MARGIN = 0.5  # what a look-up may take beyond it (reactor, threads, a busy 2-core machine)
SENDERS_MAP = "# popbridge test\nshared@example.org   alice,\n    bob\n"
# mailAlternateAddress as the qmail-ldap schema defines it (not in slapd's bundled schemas)
QMAIL_SCHEMA = """\
dn: cn=qmail,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: qmail
olcAttributeTypes: ( 1.3.6.1.4.1.7914.1.2.1.3 NAME 'mailAlternateAddress'
  DESC 'Secondary (alias) mailaddresses for the same user'
  EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )
olcObjectClasses: ( 1.3.6.1.4.1.7914.1.2.2.1 NAME 'qmailUser' SUP top AUXILIARY MAY ( mailAlternateAddress ) )

"""
PEOPLE = {
    "alice": {"mail": "alice@example.org"},
    "bob": {},
    "carol": {"objectClass": "qmailUser", "mail": "carol@ldap.example", "mailAlternateAddress": "carol.second@ldap.example"},
    "dave": {"mail": "dave@ldap.example"},
}


def documented_policy_lines() -> str:
    """docs/deploy/postfix.md's policy lines, verbatim: the block after its first line."""
    first = "```\n# main.cf: popbridge policy\n"
    text = POSTFIX_PAGE.read_text()
    start = text.index(first) + len(first)
    return text[start:text.index("```", start)]


class MailSlapd(Slapd):
    """The test slapd with the qmail schema, so entries may carry mailAlternateAddress."""

    def config_ldif(self) -> str:
        frontend = "dn: olcDatabase={-1}frontend,cn=config"
        return super().config_ldif().replace(frontend, QMAIL_SCHEMA + frontend)


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    yield from running(MailSlapd(people=PEOPLE), "slapd", "slapadd")


@pytest.fixture
def own_slapd() -> Iterator[Slapd]:
    """A slapd of its own, for the test that pauses and stops it."""
    yield from running(MailSlapd(people=PEOPLE), "slapd", "slapadd")


@pytest.fixture(scope="module")
def documented_postfix() -> Iterator[Postfix]:
    """Postfix with the `# main.cf: popbridge policy` lines of docs/deploy/postfix.md verbatim: the policy service is
    `unix:private/popbridge` under its queue directory, where the binding listener listens."""
    require("postfix", "postmap", "swaks")
    unused = short_directory("pb-unused-")
    server = started(Postfix(policy_socket=unused / "policy.sock", main_extra=documented_policy_lines()))
    yield server
    server.cleanup()
    unused.rmdir()


def binding_socket(postfix: Postfix) -> Path:
    return postfix.directory / "queue" / "private" / "popbridge"


class BindingDaemon:
    """The daemon with a binding policy listener where the documented Postfix asks, plus a client
    for that listener (to time an answer without Postfix in between)."""

    def __init__(self, daemon: Popbridge, socket_path: Path, senders_map: Path) -> None:
        self.daemon, self.port, self.socket_path, self.senders_map = daemon, daemon.port, socket_path, senders_map

    def reload(self) -> None:
        """SIGHUP, then wait for its last step, logged whether the file loaded or not."""
        assert self.daemon.process is not None
        mark = self.daemon.log.mark()
        self.daemon.process.send_signal(signal.SIGHUP)
        self.daemon.log.wait_for(lambda line: "certificates reloaded" in line, since=mark)

    def login(self, source: str, user: str) -> None:
        pop3_login(self.port, source, user, PASSWORDS[user])

    def policy(self, client: str, sender: str) -> str:
        action = policy_action(self.socket_path, client, timeout=30, client_name="unknown", sender=sender,
                               recipient="someone@outside.example")
        assert action.startswith("action="), action
        return action.removeprefix("action=")


StartBinding = Callable[[Slapd], BindingDaemon]


@pytest.fixture
def start_binding(popbridge_daemon: StartPopbridge, documented_postfix: Postfix) -> Iterator[StartBinding]:
    """`start_binding(slapd)`: the daemon in front of Dovecot with `sender_binding = true` on the
    listener the documented Postfix asks, [senders] from all three sources, and [ldap] on `slapd`."""
    directory = short_directory("pb-senders-")
    (directory / "senders").write_text(SENDERS_MAP)
    (directory / "bind.pw").write_text(LDAP_BIND_PASSWORD + "\n")
    socket_path = binding_socket(documented_postfix)

    def start(slapd: Slapd) -> BindingDaemon:
        socket_path.unlink(missing_ok=True)  # left by the previous test's daemon
        extra = f"""
[[lookup]]
protocol = "policy"
listen = "unix:address={socket_path}:mode=666"
sender_binding = true

[senders]
map = "{directory / 'senders'}"
ldap_attributes = ["mail", "mailAlternateAddress"]
domains = ["example.org"]

[ldap]
url = "{slapd.url}"
bind_dn = "{LDAP_BIND_DN}"
bind_password_file = "{directory / 'bind.pw'}"
base = "{LDAP_BASE}"
timeout = {TIMEOUT}
"""
        daemon = BindingDaemon(popbridge_daemon(extra_config=extra), socket_path, directory / "senders")
        wait_until(socket_path.exists, "the binding policy listener")
        return daemon

    yield start
    for name in ("senders", "bind.pw"):
        (directory / name).unlink()
    directory.rmdir()


def swaks(postfix: Postfix, source: str, sender: str, recipient: str = "someone@outside.example") -> tuple[int, str]:
    """Send one mail with swaks from `source`; the reply to RCPT TO as (code, text). An
    accepted recipient must be followed by an accepted message."""
    result = subprocess.run(
        [binary("swaks"), "--server", f"{postfix.host}:{postfix.port}", "--local-interface", source,
         "--helo", "client.example", "--from", sender, "--to", recipient, "--timeout", "30"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    lines = result.stdout.splitlines()
    at = next((n for n, line in enumerate(lines) if line.lstrip().startswith("-> RCPT TO:")), None)
    if at is None or at + 1 >= len(lines):
        raise ServerError(f"swaks did not get to RCPT TO:\n{result.stdout}{result.stderr}")
    reply = lines[at + 1].split(None, 1)[1]  # "<-  250 2.1.5 Ok" or "<** 554 5.7.1 <...>: ..."
    code = int(reply[:3])
    if code == 250 and result.returncode != 0:
        raise ServerError(f"RCPT accepted but the message was not (swaks exit {result.returncode}):\n{result.stdout}")
    return code, reply


def rcpt_code(postfix: Postfix, source: str, sender: str) -> int:
    return swaks(postfix, source, sender)[0]


def test_logged_in_user_relays_as_herself_not_as_another_and_bounces_pass(slapd, start_binding, documented_postfix) -> None:
    daemon = start_binding(slapd)
    daemon.login("127.0.0.61", "alice")
    assert rcpt_code(documented_postfix, "127.0.0.61", "alice@example.org") == 250
    code, text = swaks(documented_postfix, "127.0.0.61", "bob@example.org")
    assert code == 554 and text.endswith(f"Recipient address rejected: {MISMATCH_TEXT}")
    assert rcpt_code(documented_postfix, "127.0.0.61", "<>") == 250
    log = daemon.daemon.output()
    assert "policy 127.0.0.61: sender bob@example.org refused: not an address of alice" in log
    assert "alice-pw" not in log
    stats = daemon.daemon.cli("stats").stdout
    assert 'popbridge_lookups_total{answer="mismatch",protocol="policy"} 1' in stats


def test_every_user_logged_in_on_the_address_may_send_as_themselves(slapd, start_binding, documented_postfix) -> None:
    daemon = start_binding(slapd)
    daemon.login("127.0.0.62", "alice")
    daemon.login("127.0.0.62", "bob")
    assert rcpt_code(documented_postfix, "127.0.0.62", "alice@example.org") == 250
    assert rcpt_code(documented_postfix, "127.0.0.62", "bob@example.org") == 250
    assert swaks(documented_postfix, "127.0.0.62", "carol@ldap.example")[1].endswith(MISMATCH_TEXT)


def test_address_without_a_login_is_denied_as_before(slapd, start_binding, documented_postfix) -> None:
    daemon = start_binding(slapd)
    daemon.login("127.0.0.63", "alice")
    code, text = swaks(documented_postfix, "127.0.0.64", "alice@example.org")
    assert code == 554 and "Relay access denied" in text


def test_without_sender_binding_any_sender_relays_as_today(slapd, start_binding, postfix: Postfix) -> None:
    daemon = start_binding(slapd)  # its plain policy listener is the one the `postfix` fixture asks
    daemon.login("127.0.0.65", "alice")
    assert rcpt_code(postfix, "127.0.0.65", "bob@example.org") == 250
    assert rcpt_code(postfix, "127.0.0.66", "alice@example.org") == 554


def test_owners_from_the_map_file(slapd, start_binding, documented_postfix) -> None:
    daemon = start_binding(slapd)
    daemon.login("127.0.0.67", "bob")
    daemon.login("127.0.0.68", "carol")
    assert rcpt_code(documented_postfix, "127.0.0.67", "shared@example.org") == 250
    assert rcpt_code(documented_postfix, "127.0.0.68", "shared@example.org") == 554


def test_owners_from_ldap_mail_and_mail_alternate_address(slapd, start_binding, documented_postfix) -> None:
    daemon = start_binding(slapd)
    daemon.login("127.0.0.69", "carol")
    assert rcpt_code(documented_postfix, "127.0.0.69", "carol@ldap.example") == 250  # mail
    assert rcpt_code(documented_postfix, "127.0.0.69", "carol.second@ldap.example") == 250  # mailAlternateAddress
    assert rcpt_code(documented_postfix, "127.0.0.69", "carol@example.org") == 250  # domains
    assert rcpt_code(documented_postfix, "127.0.0.69", "dave@ldap.example") == 554  # dave's entry, not carol's


def timed(ask: Callable[[], str]) -> tuple[str, float]:
    started = time.monotonic()
    answer = ask()
    return answer, time.monotonic() - started


@pytest.mark.wallclock
def test_ldap_outage_leaves_the_map_deciding_and_defers_what_only_ldap_could_vouch_for(
    own_slapd, start_binding, documented_postfix
) -> None:
    daemon = start_binding(own_slapd)
    daemon.login("127.0.0.70", "carol")  # nobody has asked LDAP about carol yet

    own_slapd.pause()  # hung: every query waits for the timeout
    answer, seconds = timed(lambda: daemon.policy("127.0.0.70", "carol.second@ldap.example"))
    print(f"slapd hung: {answer!r} after {seconds:.3f} s (timeout {TIMEOUT} s)")
    assert answer.startswith("DEFER 4.3.0") and seconds < TIMEOUT + MARGIN
    code, text = swaks(documented_postfix, "127.0.0.70", "carol.second@ldap.example")
    assert code == 450 and text.endswith(TEMPFAIL_TEXT)
    assert rcpt_code(documented_postfix, "127.0.0.70", "carol@example.org") == 250  # domains still decide
    assert swaks(documented_postfix, "127.0.0.70", "shared@example.org")[1].endswith(MISMATCH_TEXT)  # the map too

    own_slapd.resume()
    wait_until(lambda: daemon.policy("127.0.0.70", "carol.second@ldap.example") == "OK", "LDAP answers after SIGCONT")

    own_slapd.stop()  # gone: connections refused
    daemon.login("127.0.0.71", "dave")  # never looked up
    answer, seconds = timed(lambda: daemon.policy("127.0.0.71", "dave@ldap.example"))
    print(f"slapd stopped: {answer!r} after {seconds:.3f} s")
    assert answer.startswith("DEFER 4.3.0") and seconds < TIMEOUT + MARGIN
    assert rcpt_code(documented_postfix, "127.0.0.71", "dave@ldap.example") == 450
    assert rcpt_code(documented_postfix, "127.0.0.71", "dave@example.org") == 250
    assert rcpt_code(documented_postfix, "127.0.0.70", "carol.second@ldap.example") == 250  # carol's entry is cached
    assert LDAP_BIND_PASSWORD not in daemon.daemon.output()


def test_map_file_is_reread_on_sighup_and_a_broken_one_changes_nothing(slapd, start_binding, documented_postfix) -> None:
    daemon = start_binding(slapd)
    daemon.login("127.0.0.72", "carol")
    assert rcpt_code(documented_postfix, "127.0.0.72", "shared@example.org") == 554
    daemon.senders_map.write_text("shared@example.org  alice, bob, carol\n")
    daemon.reload()
    assert rcpt_code(documented_postfix, "127.0.0.72", "shared@example.org") == 250
    daemon.senders_map.write_text("shared@example.org  alice\ncarol carol\n")
    daemon.reload()
    assert "line 2: 'carol' is not address@domain or @domain" in daemon.daemon.output()
    assert rcpt_code(documented_postfix, "127.0.0.72", "shared@example.org") == 250
