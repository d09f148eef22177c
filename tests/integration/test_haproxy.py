"""popbridge behind a real HAProxy: the PROXY header names the client, and only a trusted proxy
may send one.

popbridge reads the header itself on haproxy: listeners (popbridge.proxy.trusted_proxy): Twisted's
own wrapper connects the wrapped protocol before the header arrives, and POP3 speaks first.
"""

from __future__ import annotations

import poplib
import shutil
import socket
from collections.abc import Iterator

import pytest

from .conftest import require
from .haproxy import Haproxy
from .servers import Popbridge, StartPopbridge, free_port, pop3_login

pytestmark = pytest.mark.realserver


@pytest.fixture
def behind_haproxy(popbridge_daemon: StartPopbridge, dovecot) -> Iterator[tuple[Popbridge, Haproxy]]:
    require("haproxy", root=False)
    port = free_port()
    daemon = popbridge_daemon(extra_config=f"""
[[proxy]]
protocol = "pop3"
listen = "haproxy:tcp:port={port}:interface=127.0.0.1"
trusted_proxies = ["127.0.0.1/32"]
backend = "tcp:host=127.0.0.1:port={dovecot.port}"
""")
    haproxy = Haproxy(target_port=port).start()
    daemon.haproxy_port = port  # type: ignore[attr-defined]
    try:
        yield daemon, haproxy
    finally:
        haproxy.stop()
        shutil.rmtree(haproxy.directory, ignore_errors=True)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_login_is_recorded_for_the_client_behind_haproxy(behind_haproxy: tuple[Popbridge, Haproxy], version: str) -> None:
    daemon, haproxy = behind_haproxy
    port = haproxy.v1_port if version == "v1" else haproxy.v2_port
    client = "127.0.0.7" if version == "v1" else "127.0.0.8"
    assert pop3_login(port, client, "alice", "alice-pw").startswith(b"+OK")
    assert [login["user"] for login in daemon.logins(client)] == ["alice"]
    assert daemon.logins("127.0.0.1") == []  # never HAProxy's own address


def test_a_direct_connection_from_an_untrusted_address_is_dropped_and_records_nothing(
    behind_haproxy: tuple[Popbridge, Haproxy],
) -> None:
    daemon, _ = behind_haproxy
    received = b""
    try:  # popbridge aborts at once: the reset may even reach connect() on loopback
        with socket.create_connection(("127.0.0.1", daemon.haproxy_port), timeout=10, source_address=("127.0.0.9", 0)) as s:  # type: ignore[attr-defined]
            s.sendall(b"PROXY TCP4 192.0.2.66 127.0.0.1 40000 110\r\nUSER alice\r\nPASS alice-pw\r\n")
            received = s.recv(1024)
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert received == b""  # no greeting: dropped before any mail session
    assert daemon.logins("127.0.0.9") == [] and daemon.logins("192.0.2.66") == []
    assert "PROXY header refused: " in daemon.output() and "127.0.0.9" in daemon.output()


def test_a_client_that_skips_haproxy_cannot_log_in_through_the_proxy_port(behind_haproxy: tuple[Popbridge, Haproxy]) -> None:
    daemon, _ = behind_haproxy
    with pytest.raises((poplib.error_proto, OSError)):
        pop3_login(daemon.haproxy_port, "127.0.0.10", "alice", "alice-pw")  # type: ignore[attr-defined]
    assert daemon.logins("127.0.0.10") == []
