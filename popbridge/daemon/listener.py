"""One listening endpoint of the daemon, with the log line, ownership and drain that go with it."""

import grp
import os
import pwd
from collections.abc import Callable
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import _parse, serverFromString  # _parse: Twisted's own endpoint tokenizer
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from popbridge.fast.transports import fast_sockets

LISTEN_BACKLOG = 1024  # connections the kernel queues for accept(); Twisted's default is 50
_BACKLOG_ENDPOINTS = ("tcp", "tcp6", "ssl", "unix")


class Listener(Service):
    """One listening endpoint. Binds in privilegedStartService (before twistd drops root).

    A listener that cannot bind at start stops the daemon: an operator would rather see it
    fail than run without, say, its policy socket and have Postfix answer 451 all day. One
    started by a reload (`fatal` False) must never take the running daemon down: it logs an
    error and tries again with back-off (`retry_delay(attempt)` seconds: 1 s, growing by half
    each time up to a minute), so a port still held by the process being replaced, or a socket
    directory the operator is about to fix, comes up by itself. Stopping it ends the retries.

    A reload that changes a listener's settings but not its endpoint hands them over with
    `adopt`: the socket stays open (no rebinding, so a daemon that dropped root keeps ports
    below 1024 and sockets in root's directories), new connections get the new settings, and
    connections already accepted keep theirs until they close.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        what: str,
        description: str,
        factory: "Factory[Any]",
        bind: str = "",
        drain: "Callable[[], Deferred[None]] | None" = None,
        owner: str | None = None,
        group: str | None = None,
        fatal: bool = True,
        retry_delay: Callable[[int], float] = backoffPolicy(),
        endpoint: IStreamServerEndpoint | None = None,
    ) -> None:
        """`description` as the operator wrote it; `bind`, when given, is what is really bound;
        `drain` is waited for after the listener stops (sessions finishing at shutdown);
        `endpoint`, when given, is listened on instead (a socket another process bound)."""
        self._reactor, self.what, self.description = reactor, what, description
        self._switch = _SettingsSwitch(factory)
        self._drains = [drain] if drain is not None else []
        self._owner, self._group = owner, group
        self._endpoint: IStreamServerEndpoint = endpoint or serverFromString(
            fast_sockets(reactor), with_backlog(bind or description)
        )
        self._port: IListeningPort | None = None
        self.fatal, self._retry_delay, self._failures = fatal, retry_delay, 0
        self._retry: IDelayedCall | None = None
        self._wanted = False  # between privilegedStartService and stopService
        self.bound: Deferred[bool] = Deferred()  # fires True once listening, False at the first failure
        self.setName(f"{what} {description}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._wanted = True
        self._listen()

    def _listen(self) -> None:
        self._retry = None
        listening: Deferred[IListeningPort] = self._endpoint.listen(self._switch)
        listening.addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port: IListeningPort) -> None:
        if not self._wanted:  # stopped while the endpoint was still binding
            port.stopListening()
            return
        self._port = port
        self._give_socket()
        self.log.info("listening for {what} on {endpoint}", what=self.what, endpoint=self.description)
        if not self.bound.called:
            self.bound.callback(True)

    def _cannot_listen(self, failure: Failure) -> None:
        if self.fatal:
            self.log.critical(
                "cannot listen for {what} on {endpoint}: {error}; stopping",
                what=self.what, endpoint=self.description, error=failure.getErrorMessage(),
            )
            self._reactor.callWhenRunning(_stop, self._reactor)
        elif self._wanted:
            delay = self._retry_delay(self._failures)
            self._failures += 1
            self.log.error(
                "cannot listen for {what} on {endpoint}: {error}; trying again in {delay:.1f} s",
                what=self.what, endpoint=self.description, error=failure.getErrorMessage(), delay=delay,
            )
            self._retry = self._reactor.callLater(delay, self._listen)
        if not self.bound.called:
            self.bound.callback(False)

    def adopt(self, other: "Listener") -> None:
        """Serve new connections with the settings `other` was built with (never started itself);
        sessions already open keep theirs, and are still waited for at shutdown."""
        self._switch.serve(other._switch.current)
        self._drains += other._drains
        if (other._owner, other._group) != (self._owner, self._group):
            self._owner, self._group = other._owner, other._group
            self._give_socket()
        self.log.info("new settings for {what} on {endpoint}", what=self.what, endpoint=self.description)

    def _give_socket(self) -> None:
        """chown a unix socket to the account its clients (Postfix, admins) use. After twistd
        dropped root (a listener added or changed by a reload) this may be refused: the socket
        then keeps the daemon's own account, and the log says so."""
        if self._port is None or not (self._owner or self._group):
            return
        try:
            uid = pwd.getpwnam(self._owner).pw_uid if self._owner else -1
            gid = grp.getgrnam(self._group).gr_gid if self._group else -1
            os.chown(self._port.getHost().name, uid, gid)  # type: ignore[attr-defined]
        except (OSError, KeyError) as e:
            self.log.error("cannot give {endpoint} to {owner}:{group}: {error}",
                           endpoint=self.description, owner=self._owner or "", group=self._group or "", error=e)

    def retire(self) -> "Deferred[None]":
        """Stop listening for a reload: sessions already open carry on undisturbed."""
        self._drains = []
        return maybeDeferred(self.disownServiceParent)

    def stopService(self) -> "Deferred[None] | None":
        super().stopService()
        self._wanted = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        port, self._port = self._port, None
        stopped = port.stopListening() if port is not None else None
        if not self._drains:
            return stopped
        drains = self._drains
        return maybeDeferred(lambda: stopped).addCallback(
            lambda _: gatherResults([maybeDeferred(drain) for drain in drains]).addCallback(lambda _: None)
        )


class _SettingsSwitch(Factory):
    """What a port listens with: each new connection goes to the factory of the current
    settings, so that a reload can change them without closing the socket."""

    noisy = False  # the Listener logs the listener itself, with what it is for

    def __init__(self, factory: "Factory[Any]") -> None:
        factory.noisy = False
        self.current = factory

    def serve(self, factory: "Factory[Any]") -> None:
        factory.noisy = False
        old, self.current = self.current, factory
        if self.numPorts:  # listening: the port started the old factory; hand that over too
            factory.doStart()
            old.doStop()

    def startFactory(self) -> None:
        self.current.doStart()

    def stopFactory(self) -> None:
        self.current.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        return self.current.buildProtocol(addr)

    def logPrefix(self) -> str:
        return str(self.current.logPrefix())


def with_backlog(description: str) -> str:
    """`description` with ``backlog=LISTEN_BACKLOG`` unless it names a backlog of its own.

    With Twisted's default of 50, a burst of connections (every mail client coming back after
    an outage) overflows the kernel's accept queue, and the clients dropped after their
    handshake wait a minute for a greeting that never comes: 25 to 80 of 500 concurrent logins
    hung that way in tests/integration/test_load_held.py, none with 1024. The kernel caps the
    value at net.core.somaxconn; ``systemd:`` sockets take theirs from the unit (Backlog=).
    """
    args, kwargs = _parse(description.removeprefix("haproxy:"))
    if args[0] not in _BACKLOG_ENDPOINTS or "backlog" in kwargs:
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


def _stop(reactor: Any) -> None:
    """Stop once, however many listeners failed."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass
