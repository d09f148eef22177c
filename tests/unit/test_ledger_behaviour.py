"""The ledger behaviour suite (tests/ledger_behaviour.py) against the memory and SQLite stores;
tests/integration/test_ledger_redis.py runs the same suite against Redis."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from popbridge.ledger import IRestorableLedger
from popbridge.ledger.memory import MemoryLedger
from popbridge.ledger.sqlite import SqliteLedger

from tests.doubles import direct_call
from tests.ledger_behaviour import TTL, LedgerBehaviour, epoch_clock


@pytest.fixture
def clock() -> Clock:
    return epoch_clock()


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> Iterator[IRestorableLedger]:
    if request.param == "memory":
        yield MemoryLedger(clock, ttl=TTL, ipv6_prefix=64)
        return
    sqlite = SqliteLedger(tmp_path / "ledger.sqlite3", clock, TTL, 64, run_blocking=direct_call)
    sqlite.open()
    yield sqlite
    sqlite.close()


class TestMemoryAndSqliteLedgers(LedgerBehaviour):
    """Every test of the suite, once per store."""
