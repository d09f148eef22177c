"""Hostile input against the real daemon: nothing is falsely trusted, nothing stalls the reactor.

Each test runs `popbridge run` in front of a scripted backend (tests/integration/scripted.py) or,
where a real server can play its part, the private Dovecot. Every test ends with the same checks:
the ledger holds no login (the control socket's `list` and `popbridge query --json` for the
attacker's address), and a second client, connecting again and again to another listener of the
same daemon while the attack runs, got every greeting within 1 s. The daemon must still be running
and its log must hold no traceback.
"""

from __future__ import annotations

import base64
import contextlib
import resource
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from .conftest import USERS, require
from .scripted import (
    IMAP_GREETING,
    GreetingProbe,
    ScriptedBackend,
    Script,
    Wire,
    connect,
    control,
    imap_script,
    is_closed,
    pop3_script,
    read_for,
    read_imap_command,
    read_line,
    read_until_closed,
)
from .servers import Dovecot, Popbridge, ServerError, free_port, tcp_listening, wait_until

# every test asserts the second client's greetings each took under 1 s of real time
pytestmark = pytest.mark.wallclock

SECOND_CLIENT = "127.0.0.254"
SYSTEM_ERRORS = ("Traceback", "Unhandled", "#critical]")


@dataclass
class Bridge:
    """A running daemon, its scripted backends, and the listener the second client uses."""

    daemon: Popbridge
    pop3: ScriptedBackend | None
    imap: ScriptedBackend | None
    probe_port: int
    extra_backends: list[ScriptedBackend] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def imap_port(self) -> int:
        assert self.daemon.imap_port is not None
        return self.daemon.imap_port

    def second_client(self, **options: object) -> GreetingProbe:
        return GreetingProbe(self.probe_port, SECOND_CLIENT, **options)  # type: ignore[arg-type]

    def assert_nothing_recorded(self, *addresses: str) -> None:
        listed = control(self.daemon.control_socket, {"command": "list"})
        assert listed == {"ok": True, "logins": []}, f"the ledger holds {listed}"
        for address in addresses:
            assert self.daemon.logins(address) == [], f"popbridge query {address} found a login"


@pytest.fixture
def bridge() -> Iterator[Callable[..., Bridge]]:
    """`bridge(pop3=script, imap=script, proxy_extra=..., extra_config=...)` starts the daemon in
    front of scripted backends (or real ports: `pop3_port=`, `imap_port=`) plus a probe listener
    whose backend always greets. Stopped at teardown, which also fails on a crash or traceback."""
    started: list[Bridge] = []

    def start(
        pop3: Script | None = None,
        imap: Script | None = None,
        pop3_port: int | None = None,
        imap_port: int | None = None,
        proxy_extra: str = "",
        extra_config: str = "",
        extra_backends: tuple[ScriptedBackend, ...] = (),
        log_level: str = "info",
    ) -> Bridge:
        pop3_backend = ScriptedBackend(pop3 or pop3_script()) if pop3_port is None else None
        imap_backend = ScriptedBackend(imap) if imap is not None else None
        probe_backend = ScriptedBackend(pop3_script())
        probe_port = free_port()
        probe_listener = f"""
[[proxy]]
protocol = "pop3"
listen = "tcp:port={probe_port}:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={probe_backend.port}"
"""
        daemon = Popbridge(
            backend_port=pop3_port or pop3_backend.port,  # type: ignore[union-attr]
            imap_backend_port=imap_port or (imap_backend.port if imap_backend else None),
            proxy_extra=proxy_extra,
            extra_config=probe_listener + extra_config,
            log_level=log_level,
        )
        made = Bridge(daemon, pop3_backend, imap_backend, probe_port, [probe_backend, *extra_backends])
        started.append(made)
        try:
            daemon.start()
            wait_until(lambda: tcp_listening("127.0.0.1", probe_port), "probe listener")
        except ServerError as e:
            pytest.fail(f"popbridge did not start: {e}", pytrace=False)
        return made

    yield start
    for made in started:
        alive = made.daemon.process is not None and made.daemon.process.poll() is None
        made.daemon.stop()
        log = made.daemon.output()
        print(f"--- popbridge output ({made.daemon.config_path}):\n{log}")
        made.daemon.cleanup()
        for backend in (made.pop3, made.imap, *made.extra_backends):
            if backend is not None:
                backend.close()
                assert not backend.failures, f"scripted backend broke: {backend.failures}"
        assert alive, "the daemon died during the test"
        bad = [line for line in log.splitlines() if any(mark in line for mark in SYSTEM_ERRORS)]
        assert not bad, f"the daemon logged errors: {bad[:5]}"


@pytest.fixture(scope="module")
def real_dovecot() -> Iterator[Dovecot]:
    """Dovecot of this module's own (its log is read for what reached it)."""
    require("dovecot", "doveadm")
    server = Dovecot(users=USERS)
    try:
        server.start()
    except ServerError as e:
        server.cleanup()
        pytest.fail(f"Dovecot did not start: {e}", pytrace=False)
    yield server
    server.cleanup()


def exchange(sock: socket.socket, data: bytes, lines: int = 1) -> bytes:
    sock.sendall(data)
    return b"".join(read_line(sock) for _ in range(lines))


def pop3_session(port: int, source: str) -> socket.socket:
    sock = connect(port, source)
    greeting = read_line(sock)
    assert greeting.startswith(b"+OK"), greeting
    return sock


def imap_session(port: int, source: str) -> socket.socket:
    sock = connect(port, source)
    greeting = read_line(sock)
    assert greeting.startswith(b"* OK"), greeting
    return sock


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# ---------------------------------------------------------------- DESIGN: what counts as a login


def test_pop3_ok_to_user_and_other_commands_records_nothing(bridge: Callable[..., Bridge]) -> None:
    b = bridge()
    with b.second_client():
        with pop3_session(b.port, "127.0.0.10") as s:
            for command in (b"USER alice\r\n", b"NOOP\r\n", b"STAT\r\n", b"LIST\r\n", b"UIDL\r\n"):
                assert exchange(s, command).startswith(b"+OK")
            assert exchange(s, b"QUIT\r\n") == b"+OK bye\r\n"
    b.assert_nothing_recorded("127.0.0.10")


@pytest.mark.parametrize(
    "refusal",
    [b"-ERR [IN-USE] Mailbox is locked by another session\r\n", b"-ERR [SYS/TEMP] Internal error, try later\r\n"],
    ids=["in-use", "sys-temp"],
)
def test_pop3_error_to_the_correct_password_records_nothing(bridge: Callable[..., Bridge], refusal: bytes) -> None:
    b = bridge(pop3=pop3_script(pass_reply=refusal))
    with b.second_client():
        with pop3_session(b.port, "127.0.0.11") as s:
            assert exchange(s, b"USER alice\r\n").startswith(b"+OK")
            assert exchange(s, f"PASS {USERS['alice']}\r\n".encode()) == refusal
            assert exchange(s, b"AUTH PLAIN " + b64(b"\0alice\0alice-pw") + b"\r\n") == refusal
            assert exchange(s, b"QUIT\r\n") == b"+OK bye\r\n"
    b.assert_nothing_recorded("127.0.0.11")


@pytest.mark.parametrize(
    "refusal",
    [b"NO [INUSE] Mailbox is locked", b"NO [UNAVAILABLE] Temporary failure", b"BAD [SERVERBUG] Internal error"],
    ids=["inuse", "unavailable", "serverbug"],
)
def test_imap_refusal_of_the_correct_password_records_nothing(bridge: Callable[..., Bridge], refusal: bytes) -> None:
    b = bridge(imap=imap_script(login_reply=lambda tag: tag + b" " + refusal + b"\r\n"))
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.12") as s:
            assert exchange(s, b"a LOGIN alice alice-pw\r\n") == b"a " + refusal + b"\r\n"
            assert exchange(s, b"b LOGOUT\r\n", 2) == b"* BYE logging out\r\nb OK done\r\n"
    b.assert_nothing_recorded("127.0.0.12")


def test_imap_preauth_greeting_is_passed_on_and_records_nothing(bridge: Callable[..., Bridge]) -> None:
    b = bridge(imap=imap_script(greeting=b"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice\r\n"))
    with b.second_client():
        with connect(b.imap_port, "127.0.0.13") as s:
            assert read_line(s) == b"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice\r\n"
            assert exchange(s, b"a NOOP\r\n") == b"a OK done\r\n"
            assert exchange(s, b"b LOGIN alice alice-pw\r\n").startswith(b"b NO")
    b.assert_nothing_recorded("127.0.0.13")


def test_imap_untagged_ok_during_a_login_records_nothing(bridge: Callable[..., Bridge]) -> None:
    reply = lambda tag: b"* OK [ALERT] Logged in\r\n* OK LOGIN completed\r\n" + tag + b" NO Authentication failed\r\n"  # noqa: E731
    b = bridge(imap=imap_script(login_reply=reply))
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.14") as s:
            assert exchange(s, b"a LOGIN alice wrong\r\n", 3).endswith(b"a NO Authentication failed\r\n")
    b.assert_nothing_recorded("127.0.0.14")


def test_imap_tagged_ok_with_another_commands_tag_records_nothing(bridge: Callable[..., Bridge]) -> None:
    """The backend answers LOGIN `a` with `b OK`: not the login's tag, so the session ends."""
    b = bridge(imap=imap_script(login_reply=lambda tag: b"b OK LOGIN completed\r\n"))
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.15") as s:
            s.sendall(b"a LOGIN alice alice-pw\r\n")
            answer = read_until_closed(s)
    assert answer.startswith(b"* BYE popbridge:"), answer
    b.assert_nothing_recorded("127.0.0.15")


def test_imap_backend_unsolicited_tagged_ok_records_nothing(bridge: Callable[..., Bridge]) -> None:
    """`a OK LOGIN completed` arrives with the greeting, before the client said anything."""

    def script(wire: Wire) -> None:
        wire.send(IMAP_GREETING + b"a OK LOGIN completed\r\n")
        imap_script(greeting=b"")(wire)

    b = bridge(imap=script)
    with b.second_client():
        with connect(b.imap_port, "127.0.0.16") as s:
            with contextlib.suppress(OSError):
                s.sendall(b"a LOGIN alice wrong\r\n")
            answer = read_until_closed(s)
    assert answer.startswith(b"* BYE popbridge:") and not any(line.startswith(b"a OK") for line in answer.splitlines()), answer
    # the session was ended for the backend's fault: the client's command must not reach it
    assert b"LOGIN" not in b.imap.received()  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.16")


def test_imap_tagged_ok_before_the_login_literal_was_sent_records_nothing(bridge: Callable[..., Bridge]) -> None:
    """The backend answers a LOGIN's literal announcement with `+` and at once `a OK`: the
    password has not been sent, so that OK cannot be the answer to the login."""

    def script(wire: Wire) -> None:
        wire.send(IMAP_GREETING)
        line = wire.line()
        assert line is not None and line.endswith(b"{5}\r\n"), line
        wire.send(b"+ go ahead\r\na OK LOGIN completed\r\n")
        while wire.line() is not None:
            pass

    b = bridge(imap=script)
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.17") as s:
            s.sendall(b"a LOGIN {5}\r\n")
            first = read_line(s)
            with contextlib.suppress(OSError):
                s.sendall(b"alice wrong\r\n")
            answer = first + read_for(s, quiet=2)
    print("client saw:", answer)
    b.assert_nothing_recorded("127.0.0.17")


def test_imap_tagged_ok_before_the_sasl_response_records_nothing(bridge: Callable[..., Bridge]) -> None:
    """AUTHENTICATE PLAIN: the backend sends its challenge and, before the client answered it,
    a tagged OK. No credentials reached it, so no login."""

    def script(wire: Wire) -> None:
        wire.send(IMAP_GREETING)
        assert wire.line() == b"a AUTHENTICATE PLAIN\r\n"
        wire.send(b"+ \r\na OK AUTHENTICATE completed\r\n")
        while wire.line() is not None:
            pass

    b = bridge(imap=script)
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.18") as s:
            s.sendall(b"a AUTHENTICATE PLAIN\r\n")
            first = read_line(s)
            with contextlib.suppress(OSError):
                s.sendall(b64(b"\0alice\0wrong") + b"\r\n")
            answer = first + read_for(s, quiet=2)
    print("client saw:", answer)
    b.assert_nothing_recorded("127.0.0.18")


def test_pop3_backend_speaking_out_of_turn_records_nothing(bridge: Callable[..., Bridge]) -> None:
    """`+OK Logged in.` right behind the greeting, before any command: the session ends."""

    def script(wire: Wire) -> None:
        wire.send(b"+OK ready\r\n+OK Logged in.\r\n")
        pop3_script(greeting=b"", pass_reply=b"+OK Logged in.\r\n")(wire)

    b = bridge(pop3=script)
    with b.second_client():
        with connect(b.port, "127.0.0.19") as s:
            with contextlib.suppress(OSError):
                s.sendall(b"USER alice\r\nPASS wrong\r\n")
            answer = read_until_closed(s)
    assert answer.startswith(b"-ERR [SYS/PERM] popbridge: backend spoke out of turn"), answer
    assert b"PASS" not in b.pop3.received()  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.19")


def test_backend_down_gives_protocol_errors_and_records_nothing(bridge: Callable[..., Bridge]) -> None:
    b = bridge(pop3_port=free_port(), imap_port=free_port())
    with b.second_client():
        with connect(b.port, "127.0.0.20") as s:
            assert read_until_closed(s) == b"-ERR [SYS/TEMP] popbridge: mail server unavailable, try again later\r\n"
        with connect(b.imap_port, "127.0.0.20") as s:
            assert read_until_closed(s) == b"* BYE [UNAVAILABLE] popbridge: mail server unavailable, try again later\r\n"
    b.assert_nothing_recorded("127.0.0.20")


# ---------------------------------------------------------------- pipelining and tags


def one_at_a_time(replies: Callable[[bytes], bytes], greeting: bytes, overlaps: list[bytes], imap: bool) -> Script:
    """A backend that notes every command followed by another before it was answered."""

    def script(wire: Wire) -> None:
        wire.send(greeting)
        while (command := read_imap_command(wire) if imap else wire.line()) is not None:
            if wire.pending(0.3):
                overlaps.append(command)
            wire.send(replies(command))
            if command.upper().startswith(b"QUIT") or b" LOGOUT" in command.upper():
                return

    return script


def test_pop3_pipelined_logins_reach_the_backend_one_at_a_time(bridge: Callable[..., Bridge]) -> None:
    overlaps: list[bytes] = []
    answers = {b"USER": b"+OK\r\n", b"PASS": b"-ERR [AUTH] Authentication failed.\r\n", b"QUIT": b"+OK bye\r\n"}
    b = bridge(pop3=one_at_a_time(lambda c: answers[c.split()[0]], b"+OK ready\r\n", overlaps, imap=False))
    pipelined = b"USER alice\r\nPASS wrong\r\nUSER bob\r\nPASS alice-pw\r\nQUIT\r\n"
    with b.second_client():
        with pop3_session(b.port, "127.0.0.21") as s:
            s.sendall(pipelined)
            replies = read_until_closed(s)
    assert replies == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n" * 2 + b"+OK bye\r\n"
    assert b.pop3.received() == pipelined  # type: ignore[union-attr]
    assert overlaps == []
    b.assert_nothing_recorded("127.0.0.21")


def test_imap_pipelined_logins_reach_the_backend_one_at_a_time(bridge: Callable[..., Bridge]) -> None:
    overlaps: list[bytes] = []

    def replies(command: bytes) -> bytes:
        tag = command.split()[0]
        return (b"* BYE bye\r\n" + tag + b" OK\r\n") if b"LOGOUT" in command else tag + b" NO failed\r\n"

    b = bridge(imap=one_at_a_time(replies, IMAP_GREETING, overlaps, imap=True))
    pipelined = b"a LOGIN alice w1\r\nb LOGIN {3+}\r\nbob pw2\r\nc AUTHENTICATE PLAIN " + b64(b"\0alice\0w3") + b"\r\nd LOGOUT\r\n"
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.22") as s:
            s.sendall(pipelined)
            answer = read_until_closed(s)
    assert answer == b"a NO failed\r\nb NO failed\r\nc NO failed\r\n* BYE bye\r\nd OK\r\n"
    assert b.imap.received() == pipelined  # type: ignore[union-attr]
    assert overlaps == []
    b.assert_nothing_recorded("127.0.0.22")


def test_imap_reused_tag_cannot_lend_an_ok_to_a_login(bridge: Callable[..., Bridge]) -> None:
    """`a NOOP` then `a LOGIN`, pipelined with the same tag: the OK belongs to the NOOP."""
    overlaps: list[bytes] = []

    def replies(command: bytes) -> bytes:
        return b"a NO failed\r\n" if b"LOGIN" in command else b"a OK NOOP completed\r\n"

    b = bridge(imap=one_at_a_time(replies, IMAP_GREETING, overlaps, imap=True))
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.23") as s:
            s.sendall(b"a NOOP\r\na LOGIN alice wrong\r\na NOOP\r\n")
            assert b"".join(read_line(s) for _ in range(3)) == b"a OK NOOP completed\r\na NO failed\r\na OK NOOP completed\r\n"
    assert overlaps == []
    b.assert_nothing_recorded("127.0.0.23")


# ---------------------------------------------------------------- literals


@pytest.mark.parametrize("announcement", [b"{-1}", b"{99999999999999999999}", b"{65537}", b"{5x}"])
def test_imap_impossible_literal_is_refused_before_the_backend_sees_it(
    bridge: Callable[..., Bridge], announcement: bytes
) -> None:
    b = bridge(imap=imap_script())
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.24") as s:
            with contextlib.suppress(OSError):
                s.sendall(b"a LOGIN alice " + announcement + b"\r\nalice-pw\r\n")
            answer = read_until_closed(s)
    assert answer.startswith(b"* BYE popbridge:"), answer
    assert b.imap.received() == b""  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.24")


def test_imap_brace_not_at_the_end_cannot_split_popbridge_and_dovecot(
    bridge: Callable[..., Bridge], real_dovecot: Dovecot
) -> None:
    """`a LOGIN {5}x` is no well-formed LOGIN (Dovecot would start a literal at `{5}` and send
    `+ OK` before it notices the missing LF): popbridge answers BAD itself and forwards nothing,
    so both read what follows as new commands, and nothing is recorded."""
    b = bridge(pop3_port=real_dovecot.port, imap_port=real_dovecot.imap_port)
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.25") as s:
            assert exchange(s, b"a LOGIN {5}x\r\n").startswith(b"a BAD popbridge: ")
            assert exchange(s, b"alice\r\n") == b"* BAD popbridge: missing or invalid tag\r\n"
    b.assert_nothing_recorded("127.0.0.25")
    b.assert_nothing_recorded("127.0.0.25")


def test_imap_backend_literal_holding_a_tagged_ok_records_nothing(bridge: Callable[..., Bridge]) -> None:
    inner = b"a OK LOGIN completed\r\n"
    reply = lambda tag: b'* ID ("name" {%d}\r\n' % len(inner) + inner + b")\r\n" + tag + b" NO failed\r\n"  # noqa: E731
    b = bridge(imap=imap_script(login_reply=reply))
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.26") as s:
            assert exchange(s, b"a LOGIN alice wrong\r\n", 4) == reply(b"a")
    b.assert_nothing_recorded("127.0.0.26")


def test_imap_client_literal_holding_a_tagged_ok_is_only_a_password(
    bridge: Callable[..., Bridge], real_dovecot: Dovecot
) -> None:
    b = bridge(pop3_port=real_dovecot.port, imap_port=real_dovecot.imap_port)
    password = b"x\r\na OK LOGIN completed\r\n"
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.27") as s:
            assert exchange(s, b"a LOGIN alice {%d}\r\n" % len(password)).startswith(b"+")
            s.sendall(password + b"\r\n")
            assert read_line(s).startswith(b"a NO")
            s.sendall(b"b LOGOUT\r\n")
            assert b"b OK" in read_until_closed(s)
    b.assert_nothing_recorded("127.0.0.27")


# ---------------------------------------------------------------- SASL


def test_pop3_sasl_cancel_records_nothing(bridge: Callable[..., Bridge], real_dovecot: Dovecot) -> None:
    b = bridge(pop3_port=real_dovecot.port, imap_port=real_dovecot.imap_port)
    with b.second_client():
        with pop3_session(b.port, "127.0.0.28") as s:
            assert exchange(s, b"AUTH PLAIN\r\n").startswith(b"+")
            assert exchange(s, b"*\r\n").startswith(b"-ERR")
            assert exchange(s, b"AUTH LOGIN\r\n").startswith(b"+ ")
            assert exchange(s, b64(b"alice") + b"\r\n").startswith(b"+ ")
            assert exchange(s, b"*\r\n").startswith(b"-ERR")
            # after the cancel, base64 of a correct login is a command, not SASL data
            assert exchange(s, b64(b"\0alice\0alice-pw") + b"\r\n").startswith(b"-ERR")
            assert exchange(s, b"QUIT\r\n").startswith(b"+OK")
    b.assert_nothing_recorded("127.0.0.28")


def test_imap_sasl_cancel_records_nothing(bridge: Callable[..., Bridge], real_dovecot: Dovecot) -> None:
    b = bridge(pop3_port=real_dovecot.port, imap_port=real_dovecot.imap_port)
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.29") as s:
            assert exchange(s, b"a AUTHENTICATE PLAIN\r\n").startswith(b"+")
            assert exchange(s, b"*\r\n").startswith(b"a BAD")
            assert exchange(s, b"b AUTHENTICATE LOGIN\r\n").startswith(b"+ ")
            assert exchange(s, b64(b"alice") + b"\r\n").startswith(b"+ ")
            assert exchange(s, b"*\r\n").startswith(b"b BAD")
            s.sendall(b64(b"\0alice\0alice-pw") + b"\r\nc LOGOUT\r\n")
            assert b"c OK" in read_until_closed(s)
    b.assert_nothing_recorded("127.0.0.29")


def test_pop3_continuation_to_a_password_is_not_a_login(bridge: Callable[..., Bridge]) -> None:
    """`+ ` is a SASL continuation, never a status: as the answer to PASS it ends the session."""
    b = bridge(pop3=pop3_script(pass_reply=b"+ \r\n"))
    with b.second_client():
        with pop3_session(b.port, "127.0.0.30") as s:
            assert exchange(s, b"USER alice\r\n").startswith(b"+OK")
            s.sendall(b"PASS alice-pw\r\n")
            answer = read_until_closed(s)
    assert answer.startswith(b"-ERR [SYS/PERM] popbridge: backend sent no status indicator"), answer
    b.assert_nothing_recorded("127.0.0.30")


def test_imap_continuation_outside_a_literal_or_sasl_ends_the_session(bridge: Callable[..., Bridge]) -> None:
    b = bridge(imap=imap_script(replies={b"NOOP": lambda tag: b"+ send your password\r\n" + tag + b" OK\r\n"}))
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.31") as s:
            s.sendall(b"a NOOP\r\n")
            with contextlib.suppress(OSError):
                s.sendall(b"a LOGIN alice alice-pw\r\n")
            answer = read_until_closed(s)
    assert answer.startswith(b"* BYE popbridge: backend sent an unexpected continuation"), answer
    assert b"LOGIN" not in b.imap.received()  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.31")


def test_sasl_data_that_looks_like_a_command_stays_sasl_data(bridge: Callable[..., Bridge]) -> None:
    """Inside AUTH the next client line is SASL data even if it reads `PASS ...`; not being
    base64, it is not forwarded at all: popbridge cancels the exchange with `*`, and the
    backend's -ERR is a failed login."""
    b = bridge(pop3=pop3_script(auth_reply=b"-ERR [AUTH] bad response\r\n"))
    with b.second_client():
        with pop3_session(b.port, "127.0.0.32") as s:
            assert exchange(s, b"AUTH PLAIN\r\n") == b"+ \r\n"
            assert exchange(s, b"PASS alice-pw\r\n") == b"-ERR cancelled\r\n"
            assert exchange(s, b"QUIT\r\n") == b"+OK bye\r\n"
    assert b"PASS" not in b.pop3.received()  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.32")


# ---------------------------------------------------------------- bytes no mail server expects


@pytest.mark.parametrize("protocol", ["pop3", "imap4"])
def test_nul_bytes_end_the_session_before_the_backend_sees_them(bridge: Callable[..., Bridge], protocol: str) -> None:
    b = bridge(imap=imap_script())
    port, line = (b.port, b"USER al\0ice\r\n") if protocol == "pop3" else (b.imap_port, b"a LOGIN al\0ice pw\r\n")
    with b.second_client():
        with connect(port, "127.0.0.33") as s:
            read_line(s)
            with contextlib.suppress(OSError):
                s.sendall(line)
            answer = read_until_closed(s)
    assert b"CR or NUL inside a line" in answer, answer
    assert b"\0" not in b.pop3.received() + b.imap.received()  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.33")


@pytest.mark.parametrize("side", ["pop3-client", "imap4-client", "pop3-backend", "imap4-backend"])
def test_one_megabyte_line_ends_the_session(bridge: Callable[..., Bridge], side: str) -> None:
    megabyte = b"A" * (1 << 20)

    def flooding(wire: Wire) -> None:
        wire.send(megabyte)
        while wire.line() is not None:
            pass

    backend = flooding if side.endswith("backend") else None
    b = bridge(pop3=backend, imap=backend or imap_script())
    port = b.port if side.startswith("pop3") else b.imap_port
    with b.second_client():
        with connect(port, "127.0.0.34") as s:
            if side.endswith("client"):
                read_line(s)
                with contextlib.suppress(OSError):
                    s.sendall(megabyte + b"\r\n")
            assert is_closed(s, timeout=10)
    backend_received = b.pop3.received() + b.imap.received()  # type: ignore[union-attr]
    assert b"AAAA" not in backend_received
    b.assert_nothing_recorded("127.0.0.34")


def test_one_megabyte_line_gets_the_protocol_error_first(bridge: Callable[..., Bridge]) -> None:
    """The same flood, read slowly enough to see the last words: POP3 -ERR, IMAP * BYE."""
    b = bridge(imap=imap_script())
    for port, expected in ((b.port, b"-ERR [SYS/PERM] popbridge: "), (b.imap_port, b"* BYE popbridge: ")):
        with connect(port, "127.0.0.35") as s:
            read_line(s)
            with contextlib.suppress(OSError):
                s.sendall(b"A" * 20_000)  # over max_line, so the answer comes while we still read
            assert read_line(s).startswith(expected)
            assert is_closed(s)
    b.assert_nothing_recorded("127.0.0.35")


# ---------------------------------------------------------------- trust boundaries


def test_client_xclient_and_stls_never_reach_the_backend(bridge: Callable[..., Bridge]) -> None:
    b = bridge()
    with b.second_client():
        with pop3_session(b.port, "127.0.0.36") as s:
            assert exchange(s, b"XCLIENT ADDR=203.0.113.9 PORT=1\r\n").startswith(b"-ERR")
            assert exchange(s, b"STLS\r\n").startswith(b"-ERR")
            assert exchange(s, b"QUIT\r\n") == b"+OK bye\r\n"
    assert b.pop3.received() == b"QUIT\r\n"  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.36", "203.0.113.9")


def test_client_id_cannot_name_its_own_address(bridge: Callable[..., Bridge]) -> None:
    b = bridge(imap=imap_script())
    with b.second_client():
        with imap_session(b.imap_port, "127.0.0.37") as s:
            answer = exchange(s, b'a ID ("name" "evil" "x-originating-ip" "203.0.113.9" "X-Connected-IP" "203.0.113.9")\r\n')
            assert answer == b"a OK done\r\n"
    received = b.imap.received()  # type: ignore[union-attr]
    assert received == b'a ID ("name" "evil")\r\n', received
    b.assert_nothing_recorded("127.0.0.37", "203.0.113.9")


def test_spoofed_proxy_header_from_an_untrusted_peer_is_dropped(bridge: Callable[..., Bridge]) -> None:
    """The backend behind the haproxy: listener accepts every password, so a believed header
    would record 203.0.113.9. From 127.0.0.38 (untrusted) it is dropped unread; from the
    trusted 127.0.0.2 the same bytes do log in, which shows the setup could record."""
    accepting = ScriptedBackend(pop3_script(pass_reply=b"+OK Logged in.\r\n"))
    haproxy_port = free_port()
    listener = f"""
[[proxy]]
protocol = "pop3"
listen = "haproxy:tcp:port={haproxy_port}:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={accepting.port}"
trusted_proxies = ["127.0.0.2/32"]
"""
    b = bridge(extra_config=listener, extra_backends=(accepting,))
    wait_until(lambda: tcp_listening("127.0.0.1", haproxy_port), "haproxy listener")
    spoof = b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 110\r\nUSER alice\r\nPASS anything\r\n"
    with b.second_client():
        v2 = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 9, 127, 0, 0, 1, 19, 136, 0, 110])
        for version in (spoof, v2 + spoof.split(b"\r\n", 1)[1]):
            received = b""
            with contextlib.suppress(ConnectionResetError):  # popbridge aborts at once: the reset may reach connect()
                with connect(haproxy_port, "127.0.0.38") as s:
                    with contextlib.suppress(OSError):
                        s.sendall(version)
                    received = read_until_closed(s)
            assert received == b""
    assert accepting.connections == 0
    b.assert_nothing_recorded("127.0.0.38", "203.0.113.9")
    with connect(haproxy_port, "127.0.0.2") as s:  # the control: a trusted balancer
        s.sendall(spoof)
        assert read_line(s).startswith(b"+OK")
        assert read_line(s) == b"+OK\r\n"
        assert read_line(s) == b"+OK Logged in.\r\n"
    assert [login["user"] for login in b.daemon.logins("203.0.113.9")] == ["alice"]


def test_lookups_create_no_authorisation_and_never_say_yes_to_a_stranger(bridge: Callable[..., Bridge]) -> None:
    b = bridge()
    stranger = "127.0.0.39"
    with b.second_client():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(b.daemon.whoson_socket))
            s.sendall(f"LOGIN {stranger} mallory\r\n\r\nQUERY {stranger}\r\n\r\n".encode())
            answers = [read_line(s) for _ in range(4)]
        assert answers[0].startswith(b"*") and answers[1] == b"\r\n", answers  # LOGIN refused
        assert answers[2].startswith(b"-") and answers[3] == b"\r\n", answers  # and the address unknown
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(b.daemon.policy_socket))
            s.sendall(
                f"request=smtpd_access_policy\nclient_address={stranger}\nsasl_username=alice\n"
                f"action=OK\nclient_address=127.0.0.1\n\n".encode()
            )
            assert read_line(s) == b"action=DUNNO\n"
        for name in ("access", "user", "exempt"):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(b.daemon.socketmap_socket))
                query = f"{name} {stranger}".encode()
                s.sendall(b"%d:%s," % (len(query), query))
                assert s.recv(100).startswith(b"9:NOTFOUND "), name
    b.assert_nothing_recorded(stranger)


def test_garbage_on_every_lookup_socket_is_refused_without_disturbing_others(bridge: Callable[..., Bridge]) -> None:
    b = bridge()
    garbage = {
        b.daemon.policy_socket: b"x" * (1 << 20),
        b.daemon.socketmap_socket: b"99999999999:access 127.0.0.1,",
        b.daemon.whoson_socket: b"QUERY \0\r\n" + b"y" * 100_000,
        b.daemon.control_socket: b"{" * 100_000 + b"\n",
    }
    with b.second_client():
        for path, data in garbage.items():
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(path))
                with contextlib.suppress(OSError):
                    s.sendall(data)
                assert is_closed(s), f"{path.name} kept a connection fed with garbage"
        with socket.socket(socket.AF_UNIX) as s:  # and the next relay is served
            s.connect(str(b.daemon.policy_socket))
            s.sendall(b"request=smtpd_access_policy\nclient_address=127.0.0.40\n\n")
            assert read_line(s) == b"action=DUNNO\n"
    b.assert_nothing_recorded("127.0.0.40")


# ---------------------------------------------------------------- abuse by volume and by time


def test_hundred_failed_logins_on_one_connection_end_after_max_bad_commands(bridge: Callable[..., Bridge]) -> None:
    b = bridge(imap=imap_script())
    with b.second_client():
        with pop3_session(b.port, "127.0.0.41") as s:
            with contextlib.suppress(OSError):
                s.sendall(b"USER alice\r\nPASS wrong\r\n" * 100)
            pop3_answer = read_until_closed(s)
        with imap_session(b.imap_port, "127.0.0.41") as s:
            with contextlib.suppress(OSError):
                s.sendall(b"".join(b"t%d LOGIN alice wrong\r\n" % n for n in range(100)))
            imap_answer = read_until_closed(s)
    # the sixth refusal reaches popbridge, which answers with its own error instead and hangs up
    assert pop3_answer.count(b"-ERR [AUTH]") == 5 and pop3_answer.endswith(b"-ERR [SYS/PERM] popbridge: too many bad commands\r\n")
    assert imap_answer.count(b" NO ") == 5 and imap_answer.endswith(b"* BYE popbridge: too many bad commands\r\n")
    assert b.pop3.received().count(b"PASS") == 6  # type: ignore[union-attr]
    assert b.imap.received().count(b"LOGIN") == 6  # type: ignore[union-attr]
    b.assert_nothing_recorded("127.0.0.41")


def test_connections_past_the_per_client_limit_are_refused(bridge: Callable[..., Bridge]) -> None:
    b = bridge(proxy_extra="max_sessions_per_client = 3")
    with b.second_client(), contextlib.ExitStack() as open_sessions:
        for _ in range(3):
            open_sessions.enter_context(pop3_session(b.port, "127.0.0.42"))
        with connect(b.port, "127.0.0.42") as s:
            assert read_until_closed(s) == b"-ERR [SYS/TEMP] popbridge: too many connections, try again later\r\n"
        with pop3_session(b.port, "127.0.0.43"):  # another address still gets in
            pass
    assert b.pop3.connections == 4  # type: ignore[union-attr]  # the refused one never reached it
    b.assert_nothing_recorded("127.0.0.42", "127.0.0.43")


def test_thousand_idle_unauthenticated_connections_leave_the_daemon_responsive(bridge: Callable[..., Bridge]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))  # the daemon inherits it
    b = bridge(proxy_extra="max_sessions_per_client = 2000")
    sockets: list[socket.socket] = []
    sources = [f"127.0.1.{n}" for n in range(1, 11)]
    try:
        with b.second_client(minimum=10) as probe:
            for n in range(1000):
                sockets.append(connect(b.port, sources[n % 10]))
            greetings = [read_line(s) for s in sockets]
            assert all(g == b"+OK scripted POP3 ready\r\n" for g in greetings)
            assert b.pop3.connections == 1000  # type: ignore[union-attr]
            stats = control(b.daemon.control_socket, {"command": "stats"})
            assert stats["ok"] and stats["live_logins"] == 0
        print(f"second client: {len(probe.latencies)} greetings, slowest {probe.slowest:.3f} s")
    finally:
        for s in sockets:
            s.close()
    b.assert_nothing_recorded(*sources)


def test_client_trickling_one_byte_a_second_is_served_and_then_timed_out(bridge: Callable[..., Bridge]) -> None:
    """idle_timeout = 2: every byte counts as activity, so `NOOP` sent a byte a second is
    answered; once the client falls silent it is closed about 2 s later."""
    b = bridge(proxy_extra="idle_timeout = 2")
    with b.second_client(minimum=10):
        with pop3_session(b.port, "127.0.0.44") as s:
            for byte in b"NOOP\r\n":
                time.sleep(1)  # the attack itself: one byte per second
                s.sendall(bytes([byte]))
            fell_silent = time.monotonic()
            assert read_line(s) == b"+OK\r\n"
            s.settimeout(10)
            assert read_line(s) == b"-ERR [SYS/TEMP] popbridge: idle for too long\r\n"
            assert 1.5 < time.monotonic() - fell_silent < 4
            assert is_closed(s)
    b.assert_nothing_recorded("127.0.0.44")
