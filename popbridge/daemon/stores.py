"""Builds the configured store with what it runs on: its thread pool and its start/stop service.

The service belongs at the front of the daemon's service tree: it is started before anything
that records or looks up logins, and stopped after them, when its thread pool has finished the
queued writes. A SQLite file that cannot be opened is logged (naming the file) and stops the
daemon, as a listener that cannot bind does: running without the durable ledger an operator
configured would quietly lose every login at the next restart.
"""

from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.error import ReactorNotRunning
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from popbridge.ledger import IRestorableLedger, LedgerStoreError
from popbridge.ledger.memory import MemoryLedger
from popbridge.ledger.redis import RedisLedger, redis_client
from popbridge.ledger.spec import parse_store
from popbridge.ledger.sqlite import SqliteLedger
from popbridge.metrics.counters import Counters
from popbridge.settings import LedgerConfig

REDIS_THREADS = 10  # concurrent Redis calls; lookups beyond this wait (within their deadline)
NOT_STORED = "ledger_not_stored"  # counter: logins kept in memory only after a failed write


@dataclass(frozen=True)
class Store:
    ledger: IRestorableLedger
    service: IService


def open_store(config: LedgerConfig, reactor: Any, counters: Counters | None = None) -> Store:
    """The store `config.store` names; nothing is opened or connected until the service starts."""
    spec = parse_store(config.store)
    if spec.kind == "sqlite":
        assert spec.path is not None
        pool = ThreadPool(1, 1, name="popbridge-ledger-sqlite")
        sqlite = SqliteLedger(
            spec.path, reactor, config.ttl, config.ipv6_prefix,
            run_blocking=partial(deferToThreadPool, reactor, pool),
            not_stored=partial(_count, counters),
        )
        return Store(sqlite, SqliteStoreService(sqlite, pool, reactor))
    if spec.kind == "redis":
        pool = ThreadPool(1, REDIS_THREADS, name="popbridge-ledger-redis")
        client = redis_client(spec.url, config.redis_password, config.redis_timeout)
        redis = RedisLedger(
            client, reactor, config.ttl, config.ipv6_prefix,
            run_blocking=partial(deferToThreadPool, reactor, pool), timeout=config.redis_timeout,
        )
        return Store(redis, RedisStoreService(redis, pool, spec.describe()))
    service = Service()
    service.setName("ledger memory")
    return Store(MemoryLedger(reactor, config.ttl, config.ipv6_prefix), service)


def _count(counters: Counters | None, logins: int) -> None:
    if counters is not None:
        counters.events[NOT_STORED] += logins
        counters.metrics.not_stored(logins)


class SqliteStoreService(Service):
    log = Logger()

    def __init__(self, ledger: SqliteLedger, pool: ThreadPool, reactor: Any) -> None:
        self._ledger, self._pool, self._reactor = ledger, pool, reactor
        self.setName(f"ledger sqlite:{ledger.path}")

    def startService(self) -> None:
        """Opens the file after twistd has dropped privileges, so the daemon's user owns it."""
        super().startService()
        self._pool.start()
        try:
            self._ledger.open()
        except LedgerStoreError as e:
            self.log.critical("cannot open the ledger: {error}; stopping", error=str(e))
            self._reactor.callWhenRunning(_stop, self._reactor)

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()  # waits for queued writes: what was recorded is committed
        self._ledger.close()


class RedisStoreService(Service):
    log = Logger()

    def __init__(self, ledger: RedisLedger, pool: ThreadPool, where: str) -> None:
        self._ledger, self._pool, self._where = ledger, pool, where
        self.setName(f"ledger {where}")

    def startService(self) -> None:
        """Redis being down at start is not fatal: lookups tempfail until it answers."""
        super().startService()
        self._pool.start()
        self._ledger.start_refreshing()
        self._ledger.lookup("127.0.0.1").addCallbacks(
            lambda _: self.log.info("ledger {where}: connected", where=self._where),
            lambda f: self.log.error(
                "ledger {where}: not answering yet ({error}); lookups answer tempfail until it does",
                where=self._where, error=f.getErrorMessage(),
            ),
        )

    def stopService(self) -> None:
        super().stopService()
        self._ledger.stop_refreshing()
        self._pool.stop()


def _stop(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass
