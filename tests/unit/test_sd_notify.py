"""systemd readiness over a real datagram socket standing in for systemd's $NOTIFY_SOCKET."""

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from popbridge.config import parse_config
from popbridge.daemon import sd_notify
from popbridge.daemon.service import build_service

DOCUMENT = {
    "ledger": {"store": "memory"},
    "proxy": [{"protocol": "pop3", "listen": "tcp:port=1110:interface=127.0.0.1", "backend": "tcp:host=127.0.0.1:port=110"}],
    "lookup": [{"protocol": "policy", "listen": "unix:address=/tmp/pb-notify-policy:mode=666"}],
    "metrics": {"listen": "tcp:port=9110:interface=127.0.0.1"},
}


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket where systemd would listen, named in NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.setblocking(False)  # every datagram is sent before the test reads
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield receiver


def received(receiver: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(receiver.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_notify_sends_one_datagram_with_the_state(systemd: socket.socket) -> None:
    assert sd_notify.ready("3 listeners up")
    assert received(systemd) == ["READY=1\nSTATUS=3 listeners up"]


def test_abstract_notify_socket_names_start_with_an_at_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"popbridge-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.stopping()
        assert received(receiver) == ["STOPPING=1"]


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify.ready("up")


def test_a_missing_notify_socket_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sd_notify.ready("up")


def test_reloading_carries_the_monotonic_time_systemd_asks_for(systemd: socket.socket) -> None:
    sd_notify.reloading()
    [message] = received(systemd)
    state, clock = message.split("\n")
    assert state == "RELOADING=1" and clock.startswith("MONOTONIC_USEC=") and int(clock.split("=")[1]) > 0


def test_the_daemon_is_ready_only_once_running_with_every_listener_bound(systemd: socket.socket) -> None:
    reactor = MemoryReactorClock()
    daemon = build_service(parse_config(DOCUMENT, "t.toml"), reactor)
    daemon.privilegedStartService()
    daemon.startService()
    assert received(systemd) == []  # bound, but the reactor (and so the store) is not running yet
    reactor.run()
    assert received(systemd) == ["READY=1\nSTATUS=3 listeners up"]
    daemon.stopService()
    assert received(systemd) == ["STOPPING=1"]


def test_a_daemon_that_cannot_bind_never_says_ready(systemd: socket.socket) -> None:
    class RefusingReactor(MemoryReactorClock):
        def listenUNIX(self, *args: object, **kwargs: object) -> None:
            raise OSError(13, "Permission denied")

    reactor = RefusingReactor()
    daemon = build_service(parse_config(DOCUMENT, "t.toml"), reactor)
    daemon.privilegedStartService()
    daemon.startService()
    reactor.run()
    assert received(systemd) == []
