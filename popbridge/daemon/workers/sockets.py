"""[[proxy]] sockets the main process binds and never accepts on: its workers do.

Binding stays in the main process, in `privilegedStartService` like every listener, so ports
below 1024 are bound before twistd drops root, and ``systemd:`` sockets are taken from systemd
as always. The main process stops reading the socket at once; every worker gets a duplicate of
it (`spawnProcess` childFDs) and accepts on it. Which worker takes a connection is the kernel's
business (the first one whose accept wins); there is no balancing of our own.

A socket whose [[proxy]] settings change on SIGHUP but whose address does not stays open: the
next generation of workers gets the same socket, so a reload refuses no connection (and the
old workers, which still hold it while they drain, do not stop the address from being re-bound).
"""

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from popbridge.daemon.listener import Listener
from popbridge.settings import ProxyConfig


class _NoAccept(Factory):
    """The main process never serves a client itself: a connection it accepted is dropped."""

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        return None


@implementer(IStreamServerEndpoint)
class _BoundPort:
    """An endpoint whose `listen` gives back a port that is already bound."""

    def __init__(self, port: IListeningPort) -> None:
        self._port = port

    def listen(self, factory: IProtocolFactory) -> "Deferred[IListeningPort]":
        return succeed(self._port)


class SharedSocket(Listener):
    """One [[proxy]] listening socket, served by the workers."""

    def __init__(self, reactor: Any, spec: ProxyConfig, kept: dict[str, IListeningPort], fatal: bool = True) -> None:
        """`kept`: sockets of listeners retired by this reload, by bound address; one for
        `spec`'s address is taken over instead of binding again."""
        port = kept.pop(spec.listen_endpoint, None)
        endpoint = _BoundPort(port) if port is not None else None
        super().__init__(
            reactor, f"{spec.protocol} clients", spec.listen, _NoAccept(), spec.listen_endpoint, fatal=fatal, endpoint=endpoint
        )
        self.spec, self._kept = spec, kept

    def adopt(self, other: Listener) -> None:
        """A reload changed this listener's settings, not its address: the socket stays, and the
        next generation of workers (started by the reload) serves it with `other`'s settings."""
        assert isinstance(other, SharedSocket)
        self.spec = other.spec
        super().adopt(other)

    def _listening(self, port: IListeningPort) -> None:
        port.stopReading()  # type: ignore[attr-defined]  # every Twisted stream port is a FileDescriptor
        # Closing it here must not shut the socket down: workers may still be accepting on it.
        port._shouldShutdown = False  # type: ignore[attr-defined]
        super()._listening(port)

    def fileno(self) -> int | None:
        """The socket's descriptor, or None when it is not bound."""
        return self._port.fileno() if self._port is not None else None  # type: ignore[attr-defined]

    def family(self) -> int:
        assert self._port is not None
        return int(self._port.socket.family)  # type: ignore[attr-defined]

    def retire(self) -> "Deferred[None]":
        """A reload retires this listener: keep the socket for its successor at the same address."""
        if self._port is not None:
            self._kept[self.spec.listen_endpoint], self._port = self._port, None
        return super().retire()
