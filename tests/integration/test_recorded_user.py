"""The recorded user is the user the backend logged in (issue 16), against real servers.

- A backend double that behaves like Courier-IMAP (no LITERAL+; a ``{n+}`` line is a syntax
  error and the literal's bytes are read as commands) shows the non-sync literal case.
- The differential check drives random legal and hostile login sessions through the real daemon
  to a real Dovecot and compares what popbridge recorded (``popbridge query``) with what
  Dovecot logged (``Login: user=<...>, ..., rip=...``). Any difference fails. Examples: a few
  for every run, many more with HYPOTHESIS_PROFILE=nightly. Against the code before issue 16
  it found, besides CRAM-MD5 initial responses: ``LOGIN alice "\\alice-pw"`` (Dovecot drops
  the needless escape and logs alice in; popbridge recorded "") and ``AUTH LOGIN =`` (Dovecot
  reads "=" as no initial response and asks for the name; popbridge recorded "").

Dovecot here trusts popbridge (login_trusted_networks), so popbridge forwards each client's
address (XCLIENT, ID) and Dovecot logs and penalises that address, never popbridge's own: each
example uses an address of its own and failed logins do not stall the next one. Dovecot's
default ``auth_username_format = %Lu`` would log ``ALICE`` in as ``alice`` while popbridge
records the name as sent (see docs/security.md, "Letter case"); this instance keeps names as sent, so that the check
compares the two readings of the bytes exactly.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.login_models import ImapModel

from .conftest import MASTER_USERS, USERS, require
from .login_sessions import Step, play_imap, play_pop3
from .scripted import ScriptedBackend, Wire, connect, pop3_script, read_line
from .servers import Dovecot, Popbridge, ServerError, wait_until

NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
_addresses = itertools.count(1)


def fresh_address() -> str:
    """A client machine of its own for each session group: 127.1.x.y, on loopback."""
    n = next(_addresses)
    return f"127.1.{n // 250}.{n % 250 + 1}"


# ---------------------------------------------------------------- a Courier-like backend


def courier_script(logins: list[str]) -> ScriptedBackend:
    """IMAP as Courier reads it (tests/unit/login_models.py); `logins` gets whom it logged in."""

    def script(wire: Wire) -> None:
        model = ImapModel(literal_plus=False, sasl_ir=False)
        wire.send(model.greeting())
        while (line := wire.line()) is not None:
            wire.send(model.feed(line))
            if model.logged_in:
                logins.extend(model.logged_in)
                return

    return ScriptedBackend(script)


@pytest.fixture
def courier_bridge() -> Iterator[tuple[Popbridge, list[str]]]:
    logins: list[str] = []
    imap, pop3 = courier_script(logins), ScriptedBackend(pop3_script())
    daemon = Popbridge(backend_port=pop3.port, imap_backend_port=imap.port)
    try:
        daemon.start()
    except ServerError as e:
        pytest.fail(f"popbridge did not start: {e}", pytrace=False)
    yield daemon, logins
    daemon.cleanup()
    imap.close()
    pop3.close()
    assert not imap.failures, imap.failures


def tagged_answer(sock: socket.socket, tag: bytes) -> list[bytes]:
    """The lines up to and including the tagged answer (or what came before the close)."""
    lines = [read_line(sock)]
    while lines[-1].endswith(b"\n") and not lines[-1].startswith(tag + b" "):
        lines.append(read_line(sock))
    return lines


def recorded_users(daemon: Popbridge, address: str) -> list[str]:
    return sorted(str(login["user"]) for login in daemon.logins(address))


def test_non_sync_literal_hiding_a_login_records_no_one_courier_did_not_log_in(courier_bridge) -> None:
    """Before issue 16, popbridge forwarded ``{20+}`` as it was; Courier answered ``* BAD``,
    logged bob in from the literal's bytes under tag ``a``, and popbridge recorded mallory."""
    daemon, logins = courier_bridge
    with connect(daemon.imap_port, "127.0.0.61") as sock:  # type: ignore[arg-type]
        assert read_line(sock).startswith(b"* OK")
        sock.sendall(b"a LOGIN mallory {20+}\r\na LOGIN bob bob-pw\r\n\r\n")
        answers = tagged_answer(sock, b"a")
    assert recorded_users(daemon, "127.0.0.61") == sorted(logins)
    assert answers == [b"a NO failed\r\n"] and logins == []  # the literal was mallory's password, to both


def test_non_sync_literals_reach_courier_as_sync_literals(courier_bridge) -> None:
    daemon, logins = courier_bridge
    with connect(daemon.imap_port, "127.0.0.62") as sock:  # type: ignore[arg-type]
        assert read_line(sock).startswith(b"* OK")
        sock.sendall(b"a LOGIN {3+}\r\nbob {6+}\r\nbob-pw\r\n")
        assert tagged_answer(sock, b"a") == [b"a OK logged in\r\n"]
    assert logins == ["bob"] and recorded_users(daemon, "127.0.0.62") == ["bob"]


# ---------------------------------------------------------------- the differential check


@pytest.fixture(scope="module")
def differential() -> Iterator[tuple[Dovecot, Popbridge]]:
    require("dovecot", "doveadm")
    dovecot = Dovecot(
        users=USERS,
        master_users=MASTER_USERS,
        auth_mechanisms="plain login cram-md5 scram-sha-1 scram-sha-256 apop",
        extra_config="auth_username_format = %u\n",
    )
    try:
        dovecot.start()
    except ServerError as e:
        dovecot.cleanup()
        pytest.fail(f"Dovecot did not start: {e}", pytrace=False)
    daemon = Popbridge(backend_port=dovecot.port, imap_backend_port=dovecot.imap_port, forward_client_address=True)
    try:
        daemon.start()
    except ServerError as e:
        dovecot.cleanup()
        pytest.fail(f"popbridge did not start: {e}", pytrace=False)
    yield dovecot, daemon
    print(f"--- popbridge output:\n{daemon.output()}")
    daemon.cleanup()
    dovecot.cleanup()


NAMES = st.sampled_from(["alice", "bob", "carol", "mallory", "ALICE"])
CREDENTIALS = st.one_of(
    st.sampled_from([("alice", "alice-pw"), ("bob", "bob-pw")]),
    st.tuples(NAMES, st.sampled_from(["alice-pw", "bob-pw", "wrong"])),
)
MECHANISMS = st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"])
BOGUS_IR = st.sampled_from([None] * 6 + [b"=", b"bWFsbG9yeSAwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==", b"!!"])


@st.composite
def sasl_steps(draw: st.DrawFn) -> Step:
    """(kind, mechanism, user, password, authzid, initial response?, cancel at round, bogus IR)."""
    mechanism = draw(MECHANISMS)
    user, password = draw(CREDENTIALS)
    authzid = ""
    if mechanism in ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256") and draw(st.booleans()):
        authzid = draw(st.sampled_from([user, "carol"]))  # as a Dovecot master user, or as oneself
        user, password = ("admin", "admin-pw") if authzid == "carol" else (user, password)
    cancel_at = draw(st.sampled_from([None, None, None, None, 0, 1]))
    return ("sasl", mechanism, user, password, authzid, draw(st.booleans()), cancel_at, draw(BOGUS_IR))


@st.composite
def pop3_steps(draw: st.DrawFn) -> Step:
    user, password = draw(CREDENTIALS)
    kind = draw(st.sampled_from(["user-pass", "user+pass", "apop", "auth", "capa", "raw"]))
    if kind == "user-pass":
        return ("user", user)
    if kind == "user+pass":
        return ("user+pass", user, password)
    if kind == "apop":
        return ("apop", user, password)
    if kind == "auth":
        return ("auth", *draw(sasl_steps())[1:])
    if kind == "capa":
        return ("capa",)
    return ("raw", draw(st.sampled_from([b"PASS " + password.encode() + b"\r\n", b"USER  alice\r\n", b"USER alice \r\n", b"NOOP\r\n"])))


@st.composite
def imap_steps(draw: st.DrawFn) -> Step:
    user, password = draw(CREDENTIALS)
    kind = draw(st.sampled_from(["login", "login", "pipelined-login", "authenticate", "raw"]))
    forms = st.sampled_from(["atom", "quoted", "needless-escape", "sync", "non-sync"])
    if kind == "login":
        return ("login", user, password, draw(forms), draw(forms))
    if kind == "pipelined-login":
        return ("pipelined-login", user, password)
    if kind == "authenticate":
        return ("authenticate", *draw(sasl_steps())[1:])
    return ("raw", draw(st.sampled_from([b" LOGIN  alice alice-pw\r\n", b" NOOP\r\n", b" CAPABILITY\r\n", b" LOGIN alice\r\n"])))


SESSIONS = st.lists(
    st.one_of(
        st.tuples(st.just("pop3"), st.lists(pop3_steps(), min_size=1, max_size=4)),
        st.tuples(st.just("imap"), st.lists(imap_steps(), min_size=1, max_size=4)),
    ),
    min_size=1,
    max_size=2,  # a second session from the same address: a second login
)

LOGIN_LINE = r"(?:pop3|imap)-login: Info: Login: user=<([^>]*)>, method=\S+, rip={}[,\s]"
ANY_LINE = r"(?:pop3|imap)-login: Info: .*rip={}[,\s]"


def run_sessions(dovecot: Dovecot, daemon: Popbridge, sessions: list[tuple[str, list[Step]]]) -> tuple[list[str], list[str]]:
    """(users popbridge recorded, users Dovecot logged in) for the sessions from one address."""
    address = fresh_address()
    mark = dovecot.log.mark()
    for protocol, steps in sessions:
        port = daemon.port if protocol == "pop3" else daemon.imap_port
        with connect(port, address) as sock:  # type: ignore[arg-type]
            (play_pop3 if protocol == "pop3" else play_imap)(sock, steps)
            sock.shutdown(socket.SHUT_WR)
    quoted = re.escape(address)
    # Dovecot's login process logs one line per connection when it ends: wait for all of them
    wait_until(lambda: len(re.findall(ANY_LINE.format(quoted), dovecot.log.text(mark))) >= len(sessions), "Dovecot's lines")
    logged = re.findall(LOGIN_LINE.format(quoted), dovecot.log.text(mark))
    return sorted(set(recorded_users(daemon, address))), sorted(set(logged))  # one ledger entry per protocol


@example(sessions=[("imap", [("authenticate", "CRAM-MD5", "alice", "alice-pw", "", True, None,
                              b"bWFsbG9yeSAwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==")])])
@example(sessions=[("pop3", [("auth", "CRAM-MD5", "alice", "alice-pw", "", True, None,
                              b"bWFsbG9yeSAwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==")])])
@example(sessions=[("imap", [("login", "alice", "alice-pw", "non-sync", "sync")])])
@example(sessions=[("pop3", [("auth", "PLAIN", "admin", "admin-pw", "carol", True, None, None)])])
@example(sessions=[("imap", [("authenticate", "SCRAM-SHA-1", "admin", "admin-pw", "carol", False, None, None)])])
@example(sessions=[("pop3", [("auth", "SCRAM-SHA-256", "bob", "bob-pw", "", True, None, None)]),
                   ("imap", [("authenticate", "LOGIN", "alice", "alice-pw", "", True, None, None)])])
@settings(
    max_examples=400 if NIGHTLY else 12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sessions=SESSIONS)
def test_popbridge_records_the_users_dovecot_logged_in(differential, sessions) -> None:
    dovecot, daemon = differential
    recorded, logged = run_sessions(dovecot, daemon, sessions)
    assert recorded == logged, f"popbridge recorded {recorded}, Dovecot logged in {logged}"
