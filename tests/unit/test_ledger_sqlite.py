"""What only the SQLite store does: survive a restart, refuse bad files, keep serving on a full disk."""

import sqlite3
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from popbridge.ledger import LedgerStoreError, new_session
from popbridge.ledger.sqlite import SqliteLedger

from tests.doubles import direct_call, result
from tests.ledger_behaviour import TTL, epoch_clock, users


@pytest.fixture
def clock() -> Clock:
    return epoch_clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite3"


def opened(path: Path, clock: Clock, run_blocking=direct_call, **options) -> SqliteLedger:
    ledger = SqliteLedger(path, clock, TTL, 128, run_blocking=run_blocking, **options)
    ledger.open()
    return ledger


def test_logins_survive_a_restart_with_their_user_and_expiry(path, clock):
    first = opened(path, clock)
    result(first.record("192.0.2.7", "alice", "pop3", tls=True))
    before = result(first.lookup("192.0.2.7"))
    first.close()
    clock.advance(60)
    second = opened(path, clock)
    assert result(second.lookup("192.0.2.7")) == before
    second.close()


def test_a_login_is_committed_before_record_fires(path, clock):
    ledger = opened(path, clock)
    result(ledger.record("192.0.2.7", "alice", "pop3", new_session()))
    with sqlite3.connect(path) as other:  # another connection sees the committed row
        assert other.execute("SELECT user, open_sessions FROM logins").fetchall() == [("alice", 1)]
    ledger.close()


def test_record_waits_for_the_writer(path, clock):
    pending: list[Deferred[object]] = []

    def later(function, *args):
        d: Deferred[object] = Deferred()
        pending.append(d)
        d.addCallback(lambda _: function(*args))
        return d

    ledger = opened(path, clock, run_blocking=later)
    recording = ledger.record("192.0.2.7", "alice", "pop3")
    assert not recording.called
    assert users(ledger, "192.0.2.7") == ["alice"]  # lookups never wait for the disk
    pending.pop().callback(None)
    assert result(recording).user == "alice"
    ledger.close()


def test_changes_queued_during_a_commit_share_the_next_one(path, clock):
    batches: list[Deferred[object]] = []

    def later(function, *args):
        d: Deferred[object] = Deferred()
        batches.append(d)
        d.addCallback(lambda _: function(*args))
        return d

    ledger = opened(path, clock, run_blocking=later)
    first = ledger.record("192.0.2.1", "alice", "pop3")
    others = [ledger.record(f"192.0.2.{n}", "bob", "pop3") for n in range(2, 12)]
    assert len(batches) == 1
    batches.pop().callback(None)
    assert first.called and len(batches) == 1  # the ten others: one transaction
    batches.pop().callback(None)
    assert all(d.called for d in others)
    ledger.close()


def test_sessions_open_at_a_crash_count_as_ended_at_startup(path, clock):
    first = opened(path, clock)
    result(first.record("192.0.2.7", "alice", "imap4", new_session()))
    first._release()  # a crash: nothing more is written
    clock.advance(10_000)
    second = opened(path, clock)
    [login] = result(second.lookup("192.0.2.7"))
    assert (login.open_sessions, login.expires(TTL)) == (0, clock.seconds() + TTL)
    clock.advance(TTL)
    assert users(second, "192.0.2.7") == []
    second.close()


def test_logins_that_expired_while_stopped_are_dropped_at_startup(path, clock):
    first = opened(path, clock)
    result(first.record("192.0.2.7", "alice", "pop3"))
    first.close()
    clock.advance(TTL)
    second = opened(path, clock)
    assert result(second.logins()) == []
    assert sqlite3.connect(path).execute("SELECT count(*) FROM logins").fetchone() == (0,)
    second.close()


def test_purge_deletes_expired_rows(path, clock):
    ledger = opened(path, clock)
    result(ledger.record("192.0.2.7", "alice", "pop3"))
    clock.advance(TTL)
    result(ledger.purge())
    assert sqlite3.connect(path).execute("SELECT count(*) FROM logins").fetchone() == (0,)
    ledger.close()


def test_a_file_in_use_by_another_popbridge_is_a_startup_error(path, clock):
    first = opened(path, clock)
    with pytest.raises(LedgerStoreError, match=f"{path}: locked by another process"):
        opened(path, clock)
    first.close()
    opened(path, clock).close()  # free again once the first has closed it


def test_a_corrupt_file_is_a_startup_error_naming_it(path, clock):
    path.parent.mkdir()
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerStoreError, match=f"ledger file {path}: corrupt or not a SQLite database"):
        opened(path, clock)


def test_an_unusable_directory_is_a_startup_error_naming_the_file(tmp_path, clock):
    (tmp_path / "state").write_text("a file where the directory should be")
    path = tmp_path / "state" / "ledger.sqlite3"
    with pytest.raises(LedgerStoreError, match=f"ledger file {path}: cannot create or open it"):
        opened(path, clock)


def test_a_full_disk_keeps_the_login_in_memory_logs_and_counts_it(path, clock):
    not_stored: list[int] = []
    ledger = opened(path, clock, not_stored=not_stored.append)
    assert ledger._db is not None
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: SQLITE_FULL
    with capturedLogs() as events:
        login = result(ledger.record("192.0.2.7", "x" * 5000, "pop3"))
    assert login.user == "x" * 5000  # record still fires: the client gets its mail
    assert users(ledger, "192.0.2.7") == ["x" * 5000]  # and the address is authorised
    assert not_stored == [1]
    [event] = [e for e in events if e["log_level"].name == "error"]
    assert "NOT stored" in event["log_format"] and "full" in event["error"]
    ledger.close()


def test_a_closed_store_keeps_later_changes_in_memory(path, clock):
    ledger = opened(path, clock)
    ledger.close()
    assert result(ledger.record("192.0.2.7", "alice", "pop3")).user == "alice"
    assert users(ledger, "192.0.2.7") == ["alice"]


def test_the_database_is_in_wal_mode(path, clock):
    opened(path, clock).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_run_blocking_is_the_only_way_to_the_disk_after_open(path, clock):
    calls: list[str] = []

    def counting(function, *args):
        calls.append(function.__name__)
        return succeed(function(*args))

    ledger = opened(path, clock, run_blocking=counting)
    result(ledger.record("192.0.2.7", "alice", "pop3"))
    result(ledger.lookup("192.0.2.7"))
    assert calls == ["_commit"]
    ledger.close()
