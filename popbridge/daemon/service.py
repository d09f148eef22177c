"""Everything the config file describes, built into one Twisted service tree, and re-read on SIGHUP.

A reload applies what can change under running sessions: listeners added, removed or changed
(a changed one keeps its socket and gives new connections its new settings; connections it
already accepted keep the old ones until they close), the ledger's ttl, the [senders]
map file and domains, and every certificate. The store and the directory are built once: changing them needs a restart, and
the log says so. A file that does not load leaves the running configuration untouched.

A reload never takes the service down. A listener it adds that cannot bind (a port still
taken, a socket directory it may not write) is logged and retried with back-off while
everything else serves (see `Listener`); a changed one is never re-bound, so it cannot fail
that way. A changed listener that cannot be built (its certificate or key vanished after the
file was read) keeps running with its old settings, and a new one that cannot be built is
left out; both are logged, and the next reload tries again.
"""

import signal
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import Logger

from popbridge.config import ConfigError, load_config
from popbridge.daemon import sd_notify
from popbridge.daemon.listener import Listener
from popbridge.daemon.proxy_listener import proxy_listener
from popbridge.daemon.stores import open_store
from popbridge.directory import IDirectory, ldap_directory
from popbridge.feed import feed_site
from popbridge.ledger import ILedger
from popbridge.lookup import control_factory, lookup_factory
from popbridge.metrics.counters import Counters
from popbridge.metrics.http import metrics_site
from popbridge.metrics.ledger import MeasuredLedger
from popbridge.senders.map import SenderRules
from popbridge.senders.owners import SenderOwners
from popbridge.settings import Config, ProxyConfig, SendersConfig
from popbridge.tls import TlsFileError
from popbridge.tls.reload import CertificateReloader
from popbridge.verdict import Verdicts

PURGE_INTERVAL = 60.0  # seconds between sweeps of expired logins
NO_SENDERS = SendersConfig(rules=SenderRules())  # no [senders] table: nobody owns any sender

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
        senders = config.senders or NO_SENDERS
        if config.ldap is not None:
            directory, ldap_threads = ldap_directory(config.ldap, reactor, self.counters.metrics, senders.ldap_attributes)
            ldap_threads.setServiceParent(self)
        self._routing_directory = directory if config.ldap is not None and config.ldap.backend_attribute else None
        self.senders = SenderOwners(senders.rules, directory if senders.ldap_attributes else None)
        self.verdicts = Verdicts(self.ledger, directory, self.senders)
        purging = TimerService(PURGE_INTERVAL, _purge, self.ledger)
        purging.clock = reactor
        purging.setServiceParent(self)
        self.certificates = CertificateReloader(reactor)
        self._specs: dict[ListenerKey, object] = {}
        self._listeners: dict[ListenerKey, Listener] = {}
        for key, spec in _listener_specs(config).items():
            self._start_listener(key, spec, self._build_listener(key, spec, fatal=True))
        self._previous_sighup: Any = None

    # -- listeners ----------------------------------------------------------------------

    def _start_listener(self, key: ListenerKey, spec: object, listener: Listener) -> None:
        listener.setServiceParent(self)
        self._specs[key], self._listeners[key] = spec, listener

    def _build_listener(self, key: ListenerKey, spec: Any, fatal: bool) -> Listener:
        """The listener for one table, not yet started; raises TlsFileError if its files are unusable."""
        kind, _ = key
        reactor = self._reactor
        if kind == "proxy":
            return self._proxy_listener(key, spec, fatal)
        if kind == "lookup":
            factory = lookup_factory(spec, self.verdicts, self.ledger, self.counters, reactor)
            return Listener(reactor, f"{spec.protocol} lookups", spec.listen, factory, owner=spec.owner, group=spec.group, fatal=fatal)
        if kind == "control":
            factory = control_factory(self.ledger, self.counters, reactor)
            return Listener(reactor, "control requests", spec.listen, factory, owner=spec.owner, group=spec.group, fatal=fatal)
        if kind == "feed":
            return Listener(reactor, "Dovecot auth-policy requests", spec.listen,
                            feed_site(spec, self.ledger, self.counters, reactor), fatal=fatal)
        if kind == "metrics":
            return Listener(reactor, "metrics scrapes", spec.listen, metrics_site(self.counters.metrics, self.ledger), fatal=fatal)
        # only with a [demo] table: twisted.mail and twisted.cred stay out of production daemons
        from popbridge.demo.backend import demo_backend_factory

        return Listener(reactor, "demo POP3 backend", spec.listen, demo_backend_factory(spec), fatal=fatal)

    def _proxy_listener(self, key: ListenerKey, spec: ProxyConfig, fatal: bool) -> Listener:
        """Sessions served here; a split daemon (popbridge.daemon.workers) binds a socket for its workers instead."""
        certificate = self.certificates.add(key, spec.tls)
        return proxy_listener(spec, self._reactor, self.ledger, self.counters, certificate, self._routing_directory, fatal=fatal)

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

    def reload(self) -> "Deferred[Any]":
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

    def apply(self, new: Config) -> "Deferred[Any]":
        if new.ledger.ttl != self.config.ledger.ttl:
            self.ledger.ttl = new.ledger.ttl
            self.log.info("ledger ttl now {ttl} s", ttl=new.ledger.ttl)
        for name in ("store", "ipv6_prefix"):
            if getattr(new.ledger, name) != getattr(self.config.ledger, name):
                self.log.warn("[ledger] {name} changed: it takes effect after a restart", name=name)
        if new.ldap != self.config.ldap:
            self.log.warn("[ldap] changed: it takes effect after a restart")
        self._apply_senders(self.config.senders or NO_SENDERS, new.senders or NO_SENDERS)
        specs = _listener_specs(new)
        built = self._build_changed(specs)
        retiring = []
        for key, listener in list(self._listeners.items()):
            if key not in specs:
                del self._listeners[key], self._specs[key]
                self.certificates.discard(key)
                retiring.append(listener.retire())
            elif key in built:
                listener.adopt(built.pop(key))
                self._specs[key] = specs[key]
        self.config = new
        self.certificates.reload()
        return DeferredList(retiring).addCallback(lambda _: self._start_built(specs, built))

    def _apply_senders(self, old: SendersConfig, new: SendersConfig) -> None:
        """A new map file (or domains) applies at once; the directory's attributes at a restart."""
        if new.rules != old.rules:
            self.senders.rules = new.rules
            self.log.info("[senders] now {entries} map entries (from {path}) and {domains} domains",
                          entries=len(new.rules.map.owners), path=new.map or "no file", domains=len(new.rules.domains))
        if new.ldap_attributes != old.ldap_attributes:
            self.log.warn("[senders] ldap_attributes changed: it takes effect after a restart")

    def _build_changed(self, specs: dict[ListenerKey, object]) -> dict[ListenerKey, Listener]:
        """Listeners for the tables that are new or changed; one that cannot be built is logged
        and skipped, so the running listener for that table (if any) stays."""
        built = {}
        for key, spec in specs.items():
            if self._specs.get(key) == spec:
                continue
            try:
                built[key] = self._build_listener(key, spec, fatal=False)
            except TlsFileError as e:
                kind, listen = key
                self.log.error(
                    "[[{kind}]] {listen} not {done}: {error}",
                    kind=kind, listen=listen, error=e,
                    done="changed, it keeps its running settings" if key in self._listeners else "started",
                )
        return built

    def _start_built(self, specs: dict[ListenerKey, object], built: dict[ListenerKey, Listener]) -> None:
        for key, listener in built.items():
            self._start_listener(key, specs[key], listener)


def _listener_specs(config: Config) -> dict[ListenerKey, object]:
    specs: dict[ListenerKey, object] = {("proxy", p.listen): p for p in config.proxies}
    specs.update({("lookup", lookup.listen): lookup for lookup in config.lookups})
    specs.update({("feed", feed.listen): feed for feed in config.feeds})
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


def _purge(ledger: ILedger) -> "Deferred[int | None]":
    """One purge round; a failure is logged and the next round runs as planned."""
    return ledger.purge().addErrback(lambda failure: Daemon.log.failure("ledger purge failed", failure))


def build_service(config: Config, reactor: Any) -> IService:
    """The service tree for `config`; nothing listens or connects until it is started."""
    if config.daemon.workers:
        from popbridge.daemon.workers.daemon import SplitDaemon  # it builds on Daemon

        return SplitDaemon(config, reactor)
    return Daemon(config, reactor)
