"""popbridge.fast.transports on the real reactor and real sockets: sooner, never different."""

import os
import socket
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from popbridge.fast.transports import FastSockets, fast_sockets


class Collect(Protocol):
    """Keeps what arrives; `done` fires with all of it when the peer closes."""

    def __init__(self) -> None:
        self.received, self.done = bytearray(), Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(bytes(self.received))


class Greet(Protocol):
    """Writes `chunks` on connect, then closes; records whether each write left the reactor idle."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.queued_after = chunks, []

    def connectionMade(self) -> None:
        for chunk in self.chunks:
            self.transport.write(chunk)
            self.queued_after.append(self.transport in reactor.getWriters())
        self.transport.loseConnection()


def serve(protocol: Protocol) -> Factory:
    return Factory.forProtocol(lambda: protocol)


async def exchange(chunks: list[bytes]) -> tuple[bytes, Greet]:
    greeter, collector = Greet(chunks), Collect()
    port = fast_sockets(reactor).listenTCP(0, serve(greeter), interface="127.0.0.1")
    try:
        client = ClientFactory.forProtocol(lambda: collector)
        reactor.connectTCP("127.0.0.1", port.getHost().port, client)
        received = await collector.done
    finally:
        await port.stopListening()
    return received, greeter


@pytest_twisted.ensureDeferred
async def test_a_small_write_is_sent_without_waiting_for_the_reactor():
    received, greeter = await exchange([b"+OK ready\r\n"])
    assert received == b"+OK ready\r\n"
    assert greeter.queued_after == [False]


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_does_not_take_is_queued_and_order_is_kept():
    big = bytes(range(256)) * 40_000  # 10 MB: more than a loopback socket buffer holds
    received, greeter = await exchange([big, b"after"])
    assert received == big + b"after"
    assert greeter.queued_after == [True, True]


@pytest_twisted.ensureDeferred
async def test_a_backend_connection_gets_the_fast_client_transport():
    made: Deferred[Protocol] = Deferred()

    class Leg(Protocol):
        def connectionMade(self) -> None:
            made.callback(self)

    port = reactor.listenTCP(0, serve(Collect()), interface="127.0.0.1")
    try:
        connector = fast_sockets(reactor).connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Leg))
        leg = await made
        assert type(leg.transport).__name__ == "TCPClient" and leg.transport.write.__qualname__ == "WriteThrough.write"
        connector.disconnect()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_backend_connection_is_under_way_when_connect_returns():
    made: Deferred[Protocol] = Deferred()

    class Leg(Protocol):
        def connectionMade(self) -> None:
            made.callback(self)

    port = reactor.listenTCP(0, serve(Collect()), interface="127.0.0.1")
    try:
        connector = fast_sockets(reactor).connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Leg))
        assert connector.state == "connected" or connector.transport in reactor.getWriters()  # not a turn later
        await made
        connector.disconnect()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_refused_backend_connection_is_reported_as_twisted_reports_it():
    failed: Deferred[list[Failure]] = Deferred()

    class Refused(ClientFactory):
        def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
            failed.callback([reason])

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
    try:
        fast_sockets(reactor).connectTCP("127.0.0.1", closed.getsockname()[1], Refused())
        [reason] = await failed
    finally:
        closed.close()
    assert reason.check(ConnectionRefusedError)


@pytest_twisted.ensureDeferred
async def test_a_unix_lookup_socket_reads_and_answers(tmp_path: Path):
    answered: Deferred[bytes] = Deferred()

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"got " + data)

    path = str(tmp_path / "s.sock")
    port = fast_sockets(reactor).listenUNIX(path, Factory.forProtocol(Echo))
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(path)
        client.sendall(b"ask")
        client.setblocking(False)
        reactor.addReader(Readable(client, answered))
        assert await answered == b"got ask"
    finally:
        client.close()
        await port.stopListening()


class Readable:
    """A raw socket the test reads through the reactor, without a transport of its own."""

    def __init__(self, sock: socket.socket, answered: Deferred) -> None:
        self.sock, self.answered = sock, answered

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "test"

    def doRead(self) -> None:
        reactor.removeReader(self)
        self.answered.callback(self.sock.recv(100))

    def connectionLost(self, reason: object) -> None:
        pass


def test_any_other_reactor_is_left_as_it_is():
    memory = MemoryReactor()
    assert fast_sockets(memory) is memory
    assert isinstance(fast_sockets(reactor), FastSockets)
    assert fast_sockets(fast_sockets(reactor)).listenTCP.__self__.__class__ is FastSockets



@pytest_twisted.ensureDeferred
async def test_a_passed_file_descriptor_still_travels_with_the_next_write(tmp_path: Path):
    class Passer(Protocol):
        def connectionMade(self) -> None:
            self.transport.sendFileDescriptor(passed.fileno())
            self.transport.write(b"fd")

    passed = open(tmp_path / "passed.txt", "w+b")  # noqa: SIM115 - closed below
    path = str(tmp_path / "fd.sock")
    port = fast_sockets(reactor).listenUNIX(path, Factory.forProtocol(Passer))
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(path)
        client.setblocking(False)
        arrived: Deferred[tuple[bytes, list]] = Deferred()
        reactor.addReader(FdReadable(client, arrived))
        data, fds = await arrived
        assert len(fds) == 1 and data and b"fd".startswith(data)  # Twisted sends one byte with each descriptor
        os.close(fds[0])
    finally:
        passed.close()
        client.close()
        await port.stopListening()


class FdReadable(Readable):
    def doRead(self) -> None:
        reactor.removeReader(self)
        data, fds, _, _ = socket.recv_fds(self.sock, 100, 4)
        self.answered.callback((data, fds))
