"""Building the configured store: which class, no I/O until start, a clear stop on a bad file."""

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from popbridge.config import parse_config
from popbridge.daemon.service import build_service
from popbridge.daemon.stores import open_store
from popbridge.ledger.memory import MemoryLedger
from popbridge.ledger.redis import RedisLedger
from popbridge.ledger.sqlite import SqliteLedger
from popbridge.settings import LedgerConfig


def test_each_store_string_builds_its_store_without_touching_anything(tmp_path: Path):
    reactor = MemoryReactorClock()
    path = tmp_path / "state" / "ledger.sqlite3"
    assert isinstance(open_store(LedgerConfig(store="memory"), reactor).ledger, MemoryLedger)
    assert isinstance(open_store(LedgerConfig(store=f"sqlite:{path}"), reactor).ledger, SqliteLedger)
    assert isinstance(open_store(LedgerConfig(store="redis://127.0.0.1:1/0"), reactor).ledger, RedisLedger)
    assert isinstance(open_store(LedgerConfig(store="redis+sentinel://127.0.0.1:1/popbridge/0"), reactor).ledger, RedisLedger)
    assert not path.parent.exists()


def test_a_sqlite_file_that_cannot_be_opened_is_named_and_stops_the_daemon(tmp_path: Path):
    (tmp_path / "state").write_text("a file, not a directory")
    path = tmp_path / "state" / "ledger.sqlite3"
    reactor = MemoryReactorClock()
    store = open_store(LedgerConfig(store=f"sqlite:{path}"), reactor)
    with capturedLogs() as events:
        store.service.startService()
    store.service.stopService()
    assert any(f"cannot open the ledger: ledger file {path}" in formatEvent(e) for e in events)
    reactor.run()
    assert reactor.hasStopped


def test_the_store_is_started_first_and_stopped_last(tmp_path: Path):
    document = {
        "ledger": {"store": f"sqlite:{tmp_path / 'ledger.sqlite3'}"},
        "lookup": [{"protocol": "policy", "listen": f"unix:address={tmp_path / 'p.sock'}:mode=666"}],
    }
    top = build_service(parse_config(document, "t.toml"), MemoryReactorClock())
    assert [service.name for service in top][0] == f"ledger sqlite:{tmp_path / 'ledger.sqlite3'}"
