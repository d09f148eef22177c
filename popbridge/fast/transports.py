"""Twisted's TCP and Unix socket transports, minus two costs popbridge pays on every exchange.

bench/profile.py showed where a policy lookup's time went once popbridge's own work was small:

- **Writes wait a loop turn.** `FileDescriptor.write` only queues: it registers for
  writability (``epoll_ctl``), the next reactor turn calls ``doWrite`` to ``send``, and an
  emptied buffer unregisters (``epoll_ctl`` again). Every lookup answer and every line of a
  POP3 or IMAP login pays that. `WriteThrough` sends at once when nothing is queued; what the
  kernel does not take (a full socket buffer) is queued the usual way, so producers, ordering,
  TLS and errors stay Twisted's.
- **Unix reads ask for file descriptors.** `unix.Server.doRead` uses ``recvmsg`` to collect
  passed descriptors for protocols that take them; lookups never do, so `PlainRecv` reads
  with ``recv``.

Together they took a bare Twisted lookup server from about 25 to 14 µs of CPU per request.

- **A backend connection starts a loop turn late.** `tcp.Client` schedules its own first step
  (resolve, ``connect``) with ``callLater(0)``: a DelayedCall made, heaped, popped and run for
  every proxied session. `TCPConnector.connect` takes that step itself once Twisted's connector
  has set everything up (its connect timeout, ``startedConnecting``), so the order of events
  is Twisted's; a refused connection is only reported before ``connectTCP`` returns.

`fast_sockets(reactor)` is how the daemon gets them: a view of a real posix reactor whose
``listenTCP``, ``listenUNIX``, ``adoptStreamPort`` (a proxy worker's sockets) and
``connectTCP`` build these transports, and which passes everything else through, so endpoint
strings (``tcp:``, ``unix:``, ``haproxy:``, ``systemd:``, ``ssl:``) parse as always. Any other
reactor (a test's MemoryReactor), or any reactor under a Twisted outside `TESTED_TWISTED`, is
returned unchanged.
"""

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import main, tcp, unix
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.posixbase import PosixReactorBase

from popbridge.fast import twisted_is_tested

if TYPE_CHECKING:  # what the mixins are mixed into, so their attribute reads are checked
    _Connection = tcp.Connection
    _UnixServer = unix.Server
else:
    _Connection = _UnixServer = object


class WriteThrough(_Connection):
    """Mixed into a Twisted socket transport (before it): send at once when nothing waits."""

    def write(self, data: bytes) -> None:
        if (
            data
            and self._tempDataLen == 0
            and self.offset == len(self.dataBuffer)
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self.TLS  # startTLS: the TLS layer writes
            and not getattr(self, "_sendmsgQueue", None)  # Unix: descriptors ride with the next write
        ):
            try:
                sent = self.socket.send(data)
            except OSError:  # a full buffer waits for doWrite; an error, doWrite reports it
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)


class PlainRecv(_UnixServer):
    """Mixed into `unix.Server`: ``recv`` unless the protocol takes passed file descriptors."""

    def doRead(self) -> ConnectionLost | ConnectionDone | None:  # type: ignore[override]  # tcp._AbortingMixin's doRead is a lambda it assigns
        if IFileDescriptorReceiver.providedBy(self.protocol):
            return super().doRead()
        try:
            data = self.socket.recv(self.bufferSize)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        return self._dataReceived(data)


class TCPServer(WriteThrough, tcp.Server):
    pass


class TCPClient(WriteThrough, tcp.Client):
    _first_step: Callable[[], None] | None = None  # for TCPConnector.connect, instead of callLater(0)

    def _finishInit(self, whenDone: Callable[[], None] | None, skt: Any, error: Any, reactor: Any) -> None:
        if whenDone is None:  # no socket could be made: Twisted reports that a turn later, as ever
            super()._finishInit(whenDone, skt, error, reactor)
            return
        self._commonConnection.__init__(self, skt, None, reactor)  # type: ignore[arg-type]  # as tcp.Client: no protocol yet
        self._first_step = whenDone


class UNIXServer(WriteThrough, PlainRecv, unix.Server):
    pass


class TCPPort(tcp.Port):
    transport = TCPServer


class UNIXPort(unix.Port):
    transport = UNIXServer


class TCPConnector(tcp.Connector):
    def _makeTransport(self) -> TCPClient:
        return TCPClient(self.host, self.port, self.bindAddress, self, self.reactor)

    def connect(self) -> None:
        super().connect()
        transport = self.transport
        if isinstance(transport, TCPClient) and transport._first_step is not None:
            first_step, transport._first_step = transport._first_step, None
            first_step()


class FastSockets:
    """A real reactor whose TCP and Unix stream sockets get the transports above."""

    def __init__(self, reactor: PosixReactorBase) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> TCPPort:
        listening = TCPPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0) -> UNIXPort:
        # Twisted annotates unix.Port's path as bytes; its own listenUNIX passes the str it got
        listening = UNIXPort(address, factory, backlog, mode, self._reactor, wantPID)  # type: ignore[arg-type]
        listening.startListening()
        return listening

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> TCPPort | UNIXPort:
        """A socket another process bound (a proxy worker's, from the main process)."""
        if addressFamily == socket.AF_UNIX:
            listening: TCPPort | UNIXPort = UNIXPort._fromListeningDescriptor(self._reactor, fileDescriptor, factory)
        else:
            listening = TCPPort._fromListeningDescriptor(self._reactor, fileDescriptor, addressFamily, factory)
        listening.startListening()
        return listening

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None
    ) -> TCPConnector:
        connector = TCPConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector


def fast_sockets(reactor: Any) -> Any:
    """`FastSockets` over a real posix reactor; any other reactor, or another Twisted, unchanged."""
    if isinstance(reactor, FastSockets) or not isinstance(reactor, PosixReactorBase) or not twisted_is_tested():
        return reactor
    return FastSockets(reactor)
