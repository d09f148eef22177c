"""The daemon with ``[daemon] workers`` >= 1: lookups here, mail sessions in the workers."""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort

from popbridge.daemon.listener import Listener
from popbridge.daemon.service import Daemon, ListenerKey
from popbridge.daemon.workers.fleet import Fleet
from popbridge.daemon.workers.metrics import FleetRegistry
from popbridge.daemon.workers.sockets import SharedSocket
from popbridge.settings import Config, ProxyConfig


class SplitDaemon(Daemon):
    """Everything a single process has, except that each [[proxy]] listener is a socket bound
    here and served by the `Fleet`'s workers. The ledger, the directory, every lookup, the
    control socket and ``/metrics`` stay in this process, whose reactor never runs a mail session."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self._kept: dict[str, IListeningPort] = {}  # sockets a reload's retired listeners leave
        self._shared: list[SharedSocket] = []
        super().__init__(config, reactor)
        self.fleet = Fleet(reactor, config.daemon.workers, self.ledger, self._routing_directory, self._bound, self.counters)
        metrics = self.counters.metrics
        metrics.registry = FleetRegistry(metrics.registry, self.fleet.reports)

    def _proxy_listener(self, key: ListenerKey, spec: ProxyConfig, fatal: bool) -> Listener:
        self.certificates.add(key, spec.tls)  # read here too, so a broken file is refused before workers start
        shared = SharedSocket(self._reactor, spec, self._kept, fatal)
        self._shared.append(shared)
        return shared

    def _bound(self) -> list[SharedSocket]:
        self._shared = [shared for shared in self._shared if shared.parent is not None]  # retired ones are gone
        return self._shared

    def startService(self) -> None:
        super().startService()
        self.fleet.startService()

    def stopService(self) -> "Deferred[None]":
        """The workers drain first, while the ledger still takes their sessions' ends."""
        return self.fleet.stopService().addCallback(lambda _: super(SplitDaemon, self).stopService())

    def apply(self, new: Config) -> "Deferred[object]":
        if new.daemon != self.config.daemon:
            self.log.warn("[daemon] workers changed: it takes effect after a restart")
        return super().apply(new).addCallback(self._new_generation)

    def _new_generation(self, result: object) -> "Deferred[object]":
        for port in self._kept.values():  # sockets of listeners the new file no longer has
            port.stopListening()
        self._kept.clear()
        return self.fleet.replace().addCallback(lambda _: result)
