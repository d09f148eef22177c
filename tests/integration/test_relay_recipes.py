"""The relay recipes of docs/deploy/ (Postfix, Sendmail, Exim), against the real daemon.

Postfix: the main.cf lines are cut out of docs/deploy/postfix.md here and put into a real Postfix
verbatim (only the socket path is moved to this test's directory), so page and test cannot drift.
Sendmail and Exim are not installed here: what they rely on on the wire is tested instead,
over the daemon's real unix sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require
from .servers import Dovecot, Popbridge, Postfix, Redis, ServerError, pop3_login

pytestmark = pytest.mark.realserver

POSTFIX_PAGE = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "postfix.md"
RELAY_DENIED, ACCEPTED, DEFERRED = 554, 250, 450
INBOUND = "inbound.example"  # a relay_domains domain: mail for it is not a relay attempt


def documented_main_cf(name: str) -> str:
    """The lines of the docs/deploy/postfix.md block that starts with ``# main.cf: popbridge NAME``."""
    deploying = POSTFIX_PAGE.read_text()
    blocks: list[list[str]] = []
    block: list[str] | None = None  # the lines of the fenced block we are in, if any
    for line in deploying.splitlines():
        if line.startswith("```") and block is None:
            block = []
        elif line.startswith("```"):
            blocks.append(block)
            block = None
        elif block is not None:
            block.append(line)
    for first, *lines in filter(None, blocks):
        if first == f"# main.cf: popbridge {name}":
            return "\n".join(lines) + "\n"
    raise AssertionError(f"docs/deploy/postfix.md has no '# main.cf: popbridge {name}' block")


@pytest.fixture
def relay() -> Iterator[list[object]]:
    """Servers a test starts, stopped and removed afterwards in reverse order."""
    started: list[object] = []
    yield started
    for server in reversed(started):
        if isinstance(server, Popbridge):
            print(f"--- popbridge output:\n{server.output()}")
        server.cleanup()  # type: ignore[attr-defined]


def start_postfix(relay: list[object], main_cf: str, unused_policy: Path) -> Postfix:
    require("postfix", "postmap")
    postfix = Postfix(policy_socket=unused_policy, main_extra=main_cf)  # a later line wins in main.cf
    relay.append(postfix)
    try:
        return postfix.start()
    except ServerError as e:
        pytest.fail(f"Postfix with the documented lines did not start: {e}", pytrace=False)


def start_popbridge(relay: list[object], dovecot: Dovecot, **options: object) -> Popbridge:
    daemon = Popbridge(backend_port=dovecot.port, **options)  # type: ignore[arg-type]
    relay.append(daemon)
    return daemon.start()


def test_documented_policy_lines_let_a_pop3_client_relay_and_defer_what_popbridge_cannot_judge(
    relay: list[object], dovecot: Dovecot, tmp_path: Path
) -> None:
    main_cf = documented_main_cf("policy")
    assert "{ default_action = DEFER 4.3.0 POP-before-SMTP check unavailable }" in main_cf
    postfix = start_postfix(relay, main_cf + f"relay_domains = {INBOUND}\n", tmp_path / "unused.sock")
    # unix:private/popbridge is relative to the queue directory, as inside Debian's chroot
    daemon = start_popbridge(relay, dovecot, policy_socket=postfix.directory / "queue" / "private" / "popbridge")
    assert postfix.rcpt_code("127.0.0.21") == RELAY_DENIED
    pop3_login(daemon.port, "127.0.0.21", "alice", "alice-pw")
    assert postfix.rcpt_code("127.0.0.21") == ACCEPTED
    daemon.stop()
    assert postfix.rcpt_code("127.0.0.21") == DEFERRED  # default_action: retried, not refused
    assert postfix.rcpt_code("127.0.0.22", recipient=f"someone@{INBOUND}") == ACCEPTED  # inbound mail never waits
    assert postfix.rcpt_code("127.0.0.1") == ACCEPTED  # mynetworks still relays


def test_documented_policy_lines_defer_a_relay_attempt_when_the_store_is_down(
    relay: list[object], dovecot: Dovecot, own_redis: Redis, tmp_path: Path
) -> None:
    postfix = start_postfix(relay, documented_main_cf("policy"), tmp_path / "unused.sock")
    socket_path = postfix.directory / "queue" / "private" / "popbridge"
    daemon = start_popbridge(relay, dovecot, policy_socket=socket_path, store=own_redis.url)
    pop3_login(daemon.port, "127.0.0.28", "alice", "alice-pw")
    assert postfix.rcpt_code("127.0.0.28") == ACCEPTED
    own_redis.stop()
    assert postfix.rcpt_code("127.0.0.28") == DEFERRED  # tempfail_action: DEFER, not DEFER_IF_PERMIT's 554
    assert postfix.rcpt_code("127.0.0.29") == DEFERRED


def test_documented_socketmap_lines_let_a_pop3_client_relay(relay: list[object], dovecot: Dovecot, tmp_path: Path) -> None:
    daemon = start_popbridge(relay, dovecot)
    main_cf = documented_main_cf("socketmap").replace("/run/popbridge/socketmap.sock", str(daemon.socketmap_socket))
    assert "proxy:socketmap:unix:" in main_cf
    postfix = start_postfix(relay, main_cf, daemon.policy_socket)
    assert postfix.rcpt_code("127.0.0.22") == RELAY_DENIED
    pop3_login(daemon.port, "127.0.0.22", "bob", "bob-pw")
    assert postfix.rcpt_code("127.0.0.22") == ACCEPTED
    assert postfix.rcpt_code("127.0.0.23") == RELAY_DENIED


def exchange(path: Path, request: bytes, half_close: bool) -> bytes:
    """Send `request`, optionally shut down writing (as Exim does), and read until EOF or a
    complete netstring-free answer; returns every byte received."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(4096):
            received += chunk
        return received


def test_exim_readsocket_gets_the_whole_whoson_answer_then_eof(relay: list[object], dovecot: Dovecot) -> None:
    daemon = start_popbridge(relay, dovecot)
    pop3_login(daemon.port, "127.0.0.24", "alice", "alice-pw")
    # ${readsocket}: the request as docs/deploy/exim.md writes it, then half-close, then read to EOF
    assert exchange(daemon.whoson_socket, b"QUERY 127.0.0.24\n\n", half_close=True) == b"+alice\r\n\r\n"
    assert exchange(daemon.whoson_socket, b"QUERY 127.0.0.25\n\n", half_close=True) == b"-\r\n\r\n"


def netstring(text: str) -> bytes:
    return b"%d:%s," % (len(text), text.encode())


def test_sendmail_socketmap_user_map_answers_on_one_kept_connection(relay: list[object], dovecot: Dovecot) -> None:
    daemon = start_popbridge(relay, dovecot)
    pop3_login(daemon.port, "127.0.0.26", "carol", "carol-pw")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # Sendmail keeps its map connection
        s.settimeout(10)
        s.connect(str(daemon.socketmap_socket))
        for key, answer in (("127.0.0.26", "OK carol"), ("127.0.0.27", "NOTFOUND ")):
            s.sendall(netstring(f"user {key}"))
            expected = netstring(answer)
            received = b""
            while len(received) < len(expected):
                received += s.recv(4096)
            assert received == expected
