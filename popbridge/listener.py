"""One listening endpoint of the daemon, with the log line, ownership and drain that go with it."""

import grp
import os
import pwd
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from popbridge.fast_transports import fast_sockets


class Listener(Service):
    """One listening endpoint. Binds in privilegedStartService (before twistd drops root).

    A listener that cannot bind at start stops the daemon: an operator would rather see it
    fail than run without, say, its policy socket and have Postfix answer 451 all day. One
    added by a reload (`fatal` False) only logs: the running daemon keeps serving.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        what: str,
        description: str,
        factory: Factory,
        bind: str = "",
        drain: "Callable[[], Deferred[None]] | None" = None,
        owner: str | None = None,
        group: str | None = None,
        endpoint: IStreamServerEndpoint | None = None,
    ) -> None:
        """`description` as the operator wrote it; `bind`, when given, is what is really bound;
        `drain` is waited for after the listener stops (sessions finishing at shutdown);
        `endpoint`, when given, is listened on instead (a socket another process bound)."""
        self._reactor, self.what, self.description, self._factory = reactor, what, description, factory
        self._drain, self._owner, self._group = drain, owner, group
        factory.noisy = False  # this class logs the listener itself, with what it is for
        self._endpoint: IStreamServerEndpoint = endpoint or serverFromString(fast_sockets(reactor), bind or description)
        self._port: IListeningPort | None = None
        self.fatal = True
        self.bound: Deferred[bool] = Deferred()  # fires True once listening, False if it cannot
        self.setName(f"{what} {description}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        listening: Deferred[IListeningPort] = self._endpoint.listen(self._factory)
        listening.addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        if self._owner or self._group:
            _give_socket(port, self._owner, self._group)
        self.log.info("listening for {what} on {endpoint}", what=self.what, endpoint=self.description)
        self.bound.callback(True)

    def _cannot_listen(self, failure: Failure) -> None:
        self.log.critical(
            "cannot listen for {what} on {endpoint}: {error}{stopping}",
            what=self.what, endpoint=self.description, error=failure.getErrorMessage(),
            stopping="; stopping" if self.fatal else "",
        )
        if self.fatal:
            self._reactor.callWhenRunning(_stop, self._reactor)
        self.bound.callback(False)

    def retire(self) -> "Deferred[None]":
        """Stop listening for a reload: sessions already open carry on undisturbed."""
        self._drain = None
        return maybeDeferred(self.disownServiceParent)

    def stopService(self) -> "Deferred[None] | None":
        super().stopService()
        port, self._port = self._port, None
        stopped = port.stopListening() if port is not None else None
        if self._drain is None:
            return stopped
        return maybeDeferred(lambda: stopped).addCallback(lambda _: self._drain())  # type: ignore[misc]


def _give_socket(port: IListeningPort, owner: str | None, group: str | None) -> None:
    """chown a unix socket bound as root to the account its clients (Postfix, admins) use."""
    uid = pwd.getpwnam(owner).pw_uid if owner else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    os.chown(port.getHost().name, uid, gid)  # type: ignore[attr-defined]


def _stop(reactor: Any) -> None:
    """Stop once, however many listeners failed."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass
