"""Test doubles shared by the unit and integration tests, one of each, so a fake behaves the
same wherever a test uses it: a fired Deferred's result, a `run_blocking` that runs at once, a
ledger whose store is down, a backend endpoint the test connects by hand, and a server protocol
connected to a StringTransport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from popbridge.ledger import LedgerUnavailable, Login
from popbridge.ledger.memory import MemoryLedger


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired; a failure is raised."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def direct_call(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """`run_blocking` for tests: the "thread" runs at once, in this one."""
    return maybeDeferred(function, *args)


class UnavailableLedger(MemoryLedger):
    """A store that is down (Redis unreachable): every lookup and listing fails with
    LedgerUnavailable. It has no synchronous lookup, as a store that has to wait has none."""

    lookup_now = None

    def lookup(self, address: str) -> Deferred[list[Login]]:
        return fail(LedgerUnavailable("store down"))

    def logins(self) -> Deferred[list[Login]]:
        return fail(LedgerUnavailable("store down"))


class SpyEndpoint:
    """A backend endpoint whose connect() the test completes (or fails) by hand."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Factory, Deferred[Protocol]]] = []

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        d: Deferred[Protocol] = Deferred()
        self.attempts.append((factory, d))
        return d

    def complete(self) -> tuple[Protocol, StringTransport]:
        """Connect the latest attempt to a StringTransport; the backend's side of it."""
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 110))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport


UNIX_PEER = UNIXAddress(None)
TCP_PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def connected(factory: Factory, peer: IAddress = UNIX_PEER) -> tuple[Any, StringTransport]:
    """A server protocol from `factory`, connected to a StringTransport whose peer is `peer`."""
    transport = StringTransport(peerAddress=peer)
    server = factory.buildProtocol(None)
    assert server is not None
    server.makeConnection(transport)
    return server, transport
