"""Everything the config file describes, built into one Twisted service tree, and re-read on SIGHUP.

A reload applies what can change under running sessions: listeners added, removed or changed
(a changed one is re-bound with its new settings; connections it already accepted keep the old
ones until they close), the ledger's ttl, and every certificate. The store and the directory
are built once: changing them needs a restart, and the log says so. A file that does not
load leaves the running configuration untouched.
"""

import signal
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import Logger

from popbridge.config import Config, ConfigError, ProxyConfig, load_config
from popbridge.demo_backend import demo_backend_factory
from popbridge.directory import IDirectory, ldap_directory
from popbridge.ledger import ILedger
from popbridge.ledger.measured import MeasuredLedger
from popbridge.ledger.stores import open_store
from popbridge import sd_notify
from popbridge.listener import Listener
from popbridge.lookup import control_factory, lookup_factory
from popbridge.metrics_http import metrics_site
from popbridge.proxy.listening import proxy_listener
from popbridge.stats import Counters
from popbridge.tls_reload import CertificateReloader
from popbridge.verdict import Verdicts

PURGE_INTERVAL = 60.0  # seconds between sweeps of expired logins

ListenerKey = tuple[str, str]  # (kind, listen endpoint as written)


class Daemon(MultiService):
    """The whole daemon: shared parts built once, listeners rebuilt as the config says."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config, self._reactor = config, reactor
        self.counters = Counters(started=reactor.seconds())
        store = open_store(config.ledger, reactor, self.counters)
        store.service.setServiceParent(self)  # first child: started before and stopped after its users
        self.ledger: ILedger = MeasuredLedger(store.ledger, self.counters.metrics)
        directory: IDirectory | None = None
        if config.ldap is not None:
            directory, ldap_threads = ldap_directory(config.ldap, reactor, self.counters.metrics)
            ldap_threads.setServiceParent(self)
        self._routing_directory = directory if config.ldap is not None and config.ldap.backend_attribute else None
        self.verdicts = Verdicts(self.ledger, directory)
        purging = TimerService(PURGE_INTERVAL, _purge, self.ledger)
        purging.clock = reactor
        purging.setServiceParent(self)
        self.certificates = CertificateReloader(reactor)
        self._specs: dict[ListenerKey, object] = {}
        self._listeners: dict[ListenerKey, Listener] = {}
        for key, spec in _listener_specs(config).items():
            self._add_listener(key, spec)
        self._previous_sighup: Any = None

    # -- listeners ----------------------------------------------------------------------

    def _add_listener(self, key: ListenerKey, spec: Any) -> Listener:
        kind, _ = key
        reactor = self._reactor
        if kind == "proxy":
            listener = self._proxy_listener(spec)
        elif kind == "lookup":
            factory = lookup_factory(spec, self.verdicts, self.ledger, self.counters, reactor)
            listener = Listener(reactor, f"{spec.protocol} lookups", spec.listen, factory, owner=spec.owner, group=spec.group)
        elif kind == "control":
            factory = control_factory(self.ledger, self.counters, reactor)
            listener = Listener(reactor, "control requests", spec.listen, factory, owner=spec.owner, group=spec.group)
        elif kind == "metrics":
            listener = Listener(reactor, "metrics scrapes", spec.listen, metrics_site(self.counters.metrics, self.ledger))
        else:
            listener = Listener(reactor, "demo POP3 backend", spec.listen, demo_backend_factory(spec))
        listener.setServiceParent(self)
        self._specs[key], self._listeners[key] = spec, listener
        return listener

    def _proxy_listener(self, spec: ProxyConfig) -> Listener:
        """Sessions served here; a split daemon (popbridge.workers) binds a socket for its workers instead."""
        return proxy_listener(spec, self._reactor, self.ledger, self.counters, self.certificates, self._routing_directory)

    # -- SIGHUP -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        bound = gatherResults([listener.bound for listener in self._listeners.values()])
        bound.addCallback(lambda results: all(results) and self._reactor.callWhenRunning(self._ready))

    def _ready(self) -> None:
        """Every listener is bound and the store is open: tell systemd (Type=notify)."""
        sd_notify.ready(f"{len(self._listeners)} listeners up")

    def stopService(self) -> "Deferred[None]":
        sd_notify.stopping()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        return super().stopService()

    def _on_sighup(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> "Deferred[object]":
        """Re-read the config file and apply it; a broken file changes nothing."""
        self.log.info("SIGHUP: reloading {path}", path=self.config.source)
        sd_notify.reloading()
        try:
            new = load_config(self.config.source)
        except ConfigError as e:
            self.log.error("configuration not reloaded, the running one stays: {error}", error=e)
            self.certificates.reload()
            sd_notify.ready("configuration not reloaded: see the log")
            return DeferredList([])
        return self.apply(new).addCallback(_reloaded)

    def apply(self, new: Config) -> "Deferred[object]":
        if new.ledger.ttl != self.config.ledger.ttl:
            self.ledger.ttl = new.ledger.ttl
            self.log.info("ledger ttl now {ttl} s", ttl=new.ledger.ttl)
        for name in ("store", "ipv6_prefix"):
            if getattr(new.ledger, name) != getattr(self.config.ledger, name):
                self.log.warn("[ledger] {name} changed: it takes effect after a restart", name=name)
        if new.ldap != self.config.ldap:
            self.log.warn("[ldap] changed: it takes effect after a restart")
        specs = _listener_specs(new)
        changes = []
        for key, listener in list(self._listeners.items()):
            if specs.get(key) != self._specs[key]:
                del self._listeners[key], self._specs[key]
                changes.append(listener.retire())
        self.config = new
        self.certificates.reload()
        return DeferredList(changes).addCallback(lambda _: self._add_new(specs))

    def _add_new(self, specs: dict[ListenerKey, object]) -> None:
        for key, spec in specs.items():
            if key not in self._listeners:
                self._add_listener(key, spec).fatal = False


def _listener_specs(config: Config) -> dict[ListenerKey, object]:
    specs: dict[ListenerKey, object] = {("proxy", p.listen): p for p in config.proxies}
    specs.update({("lookup", lookup.listen): lookup for lookup in config.lookups})
    if config.control is not None:
        specs[("control", config.control.listen)] = config.control
    if config.demo is not None:
        specs[("demo", config.demo.listen)] = config.demo
    if config.metrics is not None:
        specs[("metrics", config.metrics.listen)] = config.metrics
    return specs


def _reloaded(result: object) -> object:
    sd_notify.ready("configuration reloaded")
    return result


def _purge(ledger: ILedger) -> "Deferred[int]":
    """One purge round; a failure is logged and the next round runs as planned."""
    return ledger.purge().addErrback(lambda failure: Daemon.log.failure("ledger purge failed", failure))


def build_service(config: Config, reactor: Any) -> IService:
    """The service tree for `config`; nothing listens or connects until it is started."""
    if config.daemon.workers:
        from popbridge.workers.daemon import SplitDaemon  # it builds on Daemon

        return SplitDaemon(config, reactor)
    return Daemon(config, reactor)
