"""Everything the config file describes, built into one Twisted service tree."""

import grp
import os
import pwd
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from popbridge.config import Config
from popbridge.demo_backend import demo_backend_factory
from popbridge.directory import IDirectory, ldap_directory
from popbridge.ledger import ILedger
from popbridge.ledger.stores import open_store
from popbridge.lookup import control_factory, lookup_factory
from popbridge.proxy import proxy_factory
from popbridge.proxy.trusted_proxy import TrustedProxyHeaderFactory
from popbridge.stats import Counters
from popbridge.tls_reload import CertificateReloader
from popbridge.verdict import Verdicts

PURGE_INTERVAL = 60.0  # seconds between sweeps of expired logins


class Listener(Service):
    """One listening endpoint. Binds in privilegedStartService (before twistd drops root).

    A listener that cannot bind stops the daemon: an operator would rather see it fail at
    start than run without, say, its policy socket and have Postfix answer 451 all day.
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
    ) -> None:
        """`description` as the operator wrote it; `bind`, when given, is what is really bound;
        `drain` is waited for after the listener stops (sessions finishing at shutdown)."""
        self._reactor, self.what, self.description, self._factory = reactor, what, description, factory
        self._drain, self._owner, self._group = drain, owner, group
        factory.noisy = False  # this class logs the listener itself, with what it is for
        self._endpoint: IStreamServerEndpoint = serverFromString(reactor, bind or description)
        self._port: IListeningPort | None = None
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

    def _cannot_listen(self, failure: Failure) -> None:
        self.log.critical(
            "cannot listen for {what} on {endpoint}: {error}; stopping",
            what=self.what, endpoint=self.description, error=failure.getErrorMessage(),
        )
        self._reactor.callWhenRunning(_stop, self._reactor)

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


def _purge(ledger: ILedger) -> "Deferred[int]":
    """One purge round; a failure is logged and the next round runs as planned."""
    return ledger.purge().addErrback(lambda failure: Listener.log.failure("ledger purge failed", failure))


def build_service(config: Config, reactor: Any) -> IService:
    """The service tree for `config`; nothing listens or connects until it is started."""
    top = MultiService()
    counters = Counters(started=reactor.seconds())
    store = open_store(config.ledger, reactor, counters)
    store.service.setServiceParent(top)  # first child: started before and stopped after its users
    ledger = store.ledger
    directory: IDirectory | None = None
    if config.ldap is not None:
        directory, ldap_threads = ldap_directory(config.ldap, reactor)
        ldap_threads.setServiceParent(top)
    verdicts = Verdicts(ledger, directory)
    purging = TimerService(PURGE_INTERVAL, _purge, ledger)
    purging.clock = reactor
    purging.setServiceParent(top)
    certificates = CertificateReloader(reactor)
    certificates.setServiceParent(top)
    for proxy in config.proxies:
        backend = clientFromString(reactor, proxy.backend)
        certificate = certificates.add(proxy.tls)
        factory = proxy_factory(proxy, backend, ledger, counters, reactor, certificate)
        drain = partial(factory.sessions.drain, proxy.shutdown_grace, reactor)
        if proxy.proxy_header:
            factory = TrustedProxyHeaderFactory(factory, proxy.trusted_proxies, reactor)
        Listener(reactor, f"{proxy.protocol} clients", proxy.listen, factory, proxy.listen_endpoint, drain).setServiceParent(top)
    for lookup in config.lookups:
        factory = lookup_factory(lookup, verdicts, ledger, counters, reactor)
        Listener(
            reactor, f"{lookup.protocol} lookups", lookup.listen, factory, owner=lookup.owner, group=lookup.group
        ).setServiceParent(top)
    if config.control is not None:
        factory = control_factory(ledger, counters, reactor)
        Listener(
            reactor, "control requests", config.control.listen, factory, owner=config.control.owner, group=config.control.group
        ).setServiceParent(top)
    if config.demo is not None:
        Listener(reactor, "demo POP3 backend", config.demo.listen, demo_backend_factory(config.demo)).setServiceParent(top)
    return top
