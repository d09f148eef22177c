"""PopbridgeReactor's poll loop, driven by hand on a socket pair (the reactor is never run)."""

import socket

import pytest

from popbridge.fast.reactor import PopbridgeReactor


class Reader:
    def __init__(self, sock: socket.socket, fails: bool = False) -> None:
        self.sock, self.fails, self.read, self.lost = sock, fails, b"", None

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "reader"

    def doRead(self) -> None:
        if self.fails:
            raise RuntimeError("a protocol bug")
        self.read += self.sock.recv(100)

    def connectionLost(self, reason: object) -> None:
        self.lost = reason


@pytest.fixture
def poller():
    reactor = PopbridgeReactor()
    pairs: list[socket.socket] = []

    def reader(fails: bool = False) -> tuple[Reader, socket.socket]:
        ours, theirs = socket.socketpair()
        pairs.extend((ours, theirs))
        r = Reader(ours, fails)
        reactor.addReader(r)
        return r, theirs

    yield reactor, reader
    for s in pairs:
        s.close()
    reactor._poller.close()


def test_a_ready_socket_is_read_in_one_poll(poller):
    reactor, reader = poller
    r, peer = reader()
    peer.send(b"hello")
    reactor.doPoll(1)
    assert r.read == b"hello"


def test_a_failing_reader_is_disconnected_and_the_others_in_that_turn_still_read(poller):
    reactor, reader = poller
    broken, broken_peer = reader(fails=True)
    fine, fine_peer = reader()
    broken_peer.send(b"x")
    fine_peer.send(b"y")
    reactor.doPoll(1)
    assert broken.lost is not None and broken not in reactor.getReaders()
    assert fine.read == b"y" and fine in reactor.getReaders()


def test_what_the_daemon_built_before_serving_is_kept_out_of_the_collectors_way(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr("popbridge.fast.reactor.gc.freeze", lambda: frozen.append(True))
    reactor = PopbridgeReactor()
    try:
        assert frozen == []
        reactor.fireSystemEvent("startup")
        assert frozen == [True]
    finally:
        reactor._poller.close()
