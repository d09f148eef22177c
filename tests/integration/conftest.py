"""Fixtures for the integration tests: private Dovecot and Postfix, and the popbridge daemon.
Courier, Cyrus, Exim and Sendmail come from Debian roots: `require_debian_root`.

The real servers need root (Dovecot and Postfix drop privileges to their own users) and the
Debian packages. Without them these tests skip with a message naming what is missing, except
under CI (`CI=true`), where a missing server is a failure: a green CI run must mean the real
servers were exercised.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import pytest

from .debian_root import RootSpec, RootUnavailable, ensure_root
from .login_burst import BurstDovecot
from .servers import Dovecot, Popbridge, Postfix, Redis, ServerError, StartPopbridge, find_binary, short_directory
from .tls_support import TlsCertificates, TlsDovecot

# binary -> the Debian package that provides it
REQUIRED = {
    "dovecot": "dovecot-pop3d",
    "doveadm": "dovecot-core",
    "postfix": "postfix",
    "postmap": "postfix",
    "curl": "curl",
    "swaks": "swaks",
    "redis-server": "redis-server",
    "redis-sentinel": "redis-sentinel",
    "fetchmail": "fetchmail",
    "slapd": "slapd",
    "slapadd": "slapd",
    "openssl": "openssl",
    "haproxy": "haproxy",
}

USERS = {
    "alice": "alice-pw",  # ordinary logins
    "bob": "bob-pw",
    "carol": "carol-pw",  # only the client-address forwarding test logs in as carol
    "dave": "dave-pw",  # holds the 5 MB message
    "erin": "erin-pw",  # holds the 5 MB message fetched over IMAP
}
MASTER_USERS = {"admin": "admin-pw"}  # Dovecot master user: SASL PLAIN authcid that may act as anyone


def missing_requirements(*binaries: str, root: bool = True) -> list[str]:
    reasons = []
    if root and os.geteuid() != 0:
        reasons.append(f"root (running as uid {os.geteuid()}; private Dovecot/Postfix need root)")
    for name in binaries:
        if find_binary(name) is None:
            reasons.append(f"{name} (apt-get install {REQUIRED[name]})")
    return reasons


def require(*binaries: str, root: bool = True) -> None:
    """Skip the test if something is missing; under CI=true fail instead."""
    reasons = missing_requirements(*binaries, root=root)
    if reasons:
        unavailable("real-server test needs: " + "; ".join(reasons))


def unavailable(message: str) -> NoReturn:
    """Skip the test for `message`; under CI=true fail instead."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (CI=true: a missing real server is a failure, not a skip)", pytrace=False)
    pytest.skip(message)


def require_debian_root(spec: RootSpec) -> list[Path]:
    """The layers of `spec`'s Debian root (see debian_root.py), built now if this machine has
    none yet; a root that cannot be built skips the test, or fails it under CI=true."""
    try:
        return ensure_root(spec)
    except RootUnavailable as e:
        unavailable(f"Debian root {spec.name} unavailable: {e}")


class Startable(Protocol):
    def start(self) -> Any: ...
    def cleanup(self) -> None: ...


StartableT = TypeVar("StartableT", bound=Startable)


def started(server: StartableT) -> StartableT:
    """`server` started, or the test failed (a server that did not start is cleaned up)."""
    try:
        server.start()
    except ServerError as e:
        server.cleanup()
        pytest.fail(f"{type(server).__name__} did not start: {e}", pytrace=False)
    return server


def running(server: StartableT, *binaries: str) -> Iterator[StartableT]:
    """For a fixture to `yield from`: skip without `binaries`, start `server` (or fail the
    test), hand it over, and clean it up afterwards."""
    require(*binaries)
    yield started(server)
    server.cleanup()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """Dovecot POP3 and IMAP on 127.0.0.1 trusting 127.0.0.1 (popbridge) for XCLIENT and ID."""
    require("dovecot", "doveadm")
    server = started(Dovecot(users=USERS, trusted_networks=("127.0.0.1/32",), master_users=MASTER_USERS))
    assert isinstance(server, Dovecot)
    server.deliver("alice", b"From: a@example.org\r\nSubject: hello\r\n\r\nhello alice\r\n")
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def burst_dovecot() -> Iterator[Dovecot]:
    """A Dovecot like `dovecot`, sized for hundreds of concurrent logins (tests marked wallclock)."""
    require("dovecot", "doveadm")
    server = started(BurstDovecot(users=USERS, trusted_networks=("127.0.0.1/32",)))
    assert isinstance(server, Dovecot)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    """One private redis-server for tests that only read and write it (each flushes it first)."""
    require("redis-server", root=False)
    server = started(Redis())
    assert isinstance(server, Redis)
    yield server
    server.cleanup()


@pytest.fixture
def own_redis() -> Iterator[Redis]:
    """A redis-server of the test's own, to kill, pause and restart."""
    require("redis-server", root=False)
    server = started(Redis())
    assert isinstance(server, Redis)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def socket_directory() -> Iterator[Path]:
    """A short directory, searchable by `postfix`, for sockets shared by Postfix and popbridge."""
    path = short_directory("pb-sockets-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def policy_socket(socket_directory: Path) -> Path:
    """Where Postfix asks its policy service: every popbridge daemon listens here."""
    return socket_directory / "policy.sock"


@pytest.fixture(scope="session")
def postfix(policy_socket: Path) -> Iterator[Postfix]:
    """Postfix smtpd on 127.0.0.1: relay for 127.0.0.1 or by the policy service, else 554."""
    require("postfix", "postmap")
    server = started(Postfix(policy_socket=policy_socket))
    assert isinstance(server, Postfix)
    yield server
    server.cleanup()


def stop_and_show(daemons: list[Popbridge]) -> None:
    """Stop each daemon and print its output (pytest shows it when the test failed), then clean up."""
    for daemon in daemons:
        daemon.stop()
        print(f"--- popbridge output ({daemon.config_path}):\n{daemon.output()}")
        daemon.cleanup()


@pytest.fixture
def daemons() -> Iterator[list[Popbridge]]:
    """Daemons a test starts itself (`daemons.append(...)`); stopped and shown at teardown."""
    running: list[Popbridge] = []
    yield running
    stop_and_show(running)


@pytest.fixture
def popbridge_daemon(dovecot: Dovecot, policy_socket: Path) -> Iterator[StartPopbridge]:
    """Start `popbridge run --config FILE` in front of the Dovecot fixture:
    `daemon = popbridge_daemon(ttl=2, forward_client_address=True)`; with `imap4=True` it also
    proxies Dovecot's IMAP on `daemon.imap_port`. Its policy socket is the one the Postfix
    fixture asks, so run one daemon at a time. Stopped at teardown; its output is printed then,
    so a failing test shows it."""
    daemons: list[Popbridge] = []

    def start(imap4: bool = False, **options: object) -> Popbridge:
        if imap4:
            options["imap_backend_port"] = dovecot.imap_port
        daemon = Popbridge(backend_port=dovecot.port, policy_socket=policy_socket, **options)  # type: ignore[arg-type]
        daemons.append(daemon)
        try:
            return daemon.start()
        except ServerError as e:
            pytest.fail(f"popbridge did not start: {e}", pytrace=False)

    yield start
    stop_and_show(daemons)


@pytest.fixture(scope="session")
def tls_certificates() -> Iterator[TlsCertificates]:
    """A trustme CA made for this run, with certificates for popbridge and the TLS Dovecot."""
    directory = short_directory("pb-tls-")
    yield TlsCertificates(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_dovecot(tls_certificates: TlsCertificates) -> Iterator[TlsDovecot]:
    """A second private Dovecot with `ssl = yes` (certificate for mail.popbridge.test and
    127.0.0.1): STLS/STARTTLS on its plain ports, implicit TLS on pop3s_port/imaps_port."""
    require("dovecot", "doveadm")
    server = started(TlsDovecot(users=USERS, certificate=tls_certificates.dovecot))
    assert isinstance(server, TlsDovecot)
    yield server
    server.cleanup()
