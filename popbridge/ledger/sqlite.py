"""The SQLite store: the default, durable and embedded, for one popbridge node.

Why it is built this way:

- **Lookups never wait on disk.** Every live login is mirrored in a `LoginTable` in memory,
  loaded at startup; lookups, lists and queries read only the mirror. Each change updates
  the mirror at once and is then written behind, in order, by one writer thread.
- **Record before release.** `record` fires only after the login's row is committed, so the
  proxy releases the backend's success line to the client only once the login survives a
  crash. The database is in WAL mode with ``synchronous = FULL``: each commit fsyncs the WAL,
  so a committed login survives a power cut too, not only a killed process.
- **Group commit.** Changes that arrive while a commit is under way are committed together in
  the next transaction, so one fsync serves many logins under load, and order is kept.
- **Blocking calls go through `run_blocking`** (`deferToThreadPool` on a one-thread pool in
  production, a direct call in unit tests). One thread means one connection and no locking
  between writers.
- **A write that fails (disk full, I/O error) does not lock the user out.** The login stays
  in the mirror, so it authorises its address until popbridge restarts; the failure is logged
  at error level with the file name and counted (`ledger_not_stored` in `popbridge stats`),
  and `record` still fires. The user has just proved their password to the mail server; a
  full disk on the bridge is no reason to refuse them their mail.
- **One process per file.** The file is `flock`ed at startup: a second popbridge on the same
  file is a startup error naming it, since two mirrors of one table would disagree. Readers
  such as ``sqlite3 FILE .backup`` are not blocked by it.
- **Open sessions** are kept per session id in the mirror (see `popbridge.ledger`); the file
  keeps only their number, since an id means nothing after a restart, when every one has ended.
- **Restarts.** Sessions that were open when popbridge stopped or crashed cannot be open any
  more: at startup they are treated as ended *at startup time*, so their address stays
  authorised for `ttl` from then. Expired rows are deleted at startup and by `purge`.
"""

import fcntl
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popbridge.ledger import IImmediateLedger, IRestorableLedger, LedgerStoreError, Login, SessionId
from popbridge.ledger.table import LoginTable, TableReads

RunBlocking = Callable[..., "Deferred[Any]"]  # run_blocking(f, *args) runs f(*args) off the reactor
BUSY_TIMEOUT = 1.0  # seconds to wait for another process's lock on the file before giving up

SCHEMA = """
CREATE TABLE IF NOT EXISTS logins (
    client TEXT NOT NULL,
    user TEXT NOT NULL,
    protocol TEXT NOT NULL,
    recorded REAL NOT NULL,            -- Login.when: login time, or when its last session ended
    open_sessions INTEGER NOT NULL DEFAULT 0,
    tls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client, user, protocol)
) WITHOUT ROWID
"""
UPSERT = "INSERT OR REPLACE INTO logins VALUES (?, ?, ?, ?, ?, ?)"


@dataclass
class _Change:
    """One statement waiting for the writer, and who waits for its commit."""

    sql: str
    params: tuple[Any, ...]
    login: Login | None = None  # set when this change stores a login (counted if it fails)
    done: "Deferred[None]" = field(default_factory=Deferred)


@implementer(IRestorableLedger, IImmediateLedger)
class SqliteLedger(TableReads):
    log = Logger()

    def __init__(
        self,
        path: str | Path,
        clock: IReactorTime,
        ttl: float,
        ipv6_prefix: int,
        run_blocking: RunBlocking,
        not_stored: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.path, self._clock, self._ipv6_prefix = Path(path), clock, ipv6_prefix
        self._run_blocking, self._not_stored = run_blocking, not_stored
        self._table = LoginTable(ttl)  # the in-memory mirror every lookup is answered from
        self._db: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None
        self._queue: list[_Change] = []
        self._writing = False

    # -- opening and closing (blocking: startup and shutdown only) -------------------------

    def open(self) -> None:
        """Open, check and load the file; raises LedgerStoreError naming it."""
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._lock = open(self.path, "ab")
        except OSError as e:
            raise LedgerStoreError(f"ledger file {self.path}: cannot create or open it: {e.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._release()
            raise LedgerStoreError(f"ledger file {self.path}: locked by another process (another popbridge?)") from None
        try:
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            restored, ended = self._load(self._db)
        except sqlite3.Error as e:
            self._release()
            raise LedgerStoreError(f"ledger file {self.path}: {_explain(e)}") from None
        self.log.info(
            "ledger {path}: {restored} live logins restored, {ended} sessions open at the last stop ended now",
            path=str(self.path), restored=restored, ended=ended,
        )

    def _load(self, db: sqlite3.Connection) -> tuple[int, int]:
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise sqlite3.OperationalError("cannot switch to WAL mode")
        db.execute("PRAGMA synchronous = FULL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({check})")
        now = self._clock.seconds()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(SCHEMA)
            ended = db.execute("UPDATE logins SET recorded = ?, open_sessions = 0 WHERE open_sessions > 0", (now,)).rowcount
            db.execute("DELETE FROM logins WHERE recorded <= ?", (now - self.ttl,))
            rows = db.execute("SELECT client, user, protocol, recorded, open_sessions, tls FROM logins").fetchall()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        for client, user, protocol, when, opened, tls in rows:
            self._table.put(Login(client, user, protocol, when, opened, bool(tls)))
        return len(rows), ended

    def close(self) -> None:
        """Close the file after the writer thread has stopped; later changes stay in memory."""
        self._release()

    def _release(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None

    # -- ILedger ---------------------------------------------------------------------------

    def _record(
        self, key: str, user: str, protocol: str, session: SessionId | None, tls: bool
    ) -> "Deferred[Login | None]":
        login = self._table.record(key, user, protocol, self._clock.seconds(), session, tls)
        written = self._write(UPSERT, _row(login), login)
        return written.addCallback(lambda _: login)

    def _end_session(self, key: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        changed = self._table.end_session(key, user, protocol, session, self._clock.seconds())
        return self._write(UPSERT, _row(changed)) if changed else succeed(None)

    def _revoke(self, key: str) -> "Deferred[int]":
        removed = self._table.revoke(key)
        return self._write("DELETE FROM logins WHERE client = ?", (key,)).addCallback(lambda _: removed)

    def purge(self) -> "Deferred[int]":
        now = self._clock.seconds()
        forgotten = self._table.purge(now)
        deleting = self._write("DELETE FROM logins WHERE open_sessions = 0 AND recorded <= ?", (now - self.ttl,))
        return deleting.addCallback(lambda _: forgotten)

    def restore(self, logins: Iterable[Login]) -> "Deferred[int]":
        writes = []
        for login in logins:
            self._table.put(login)
            writes.append(self._write(UPSERT, _row(login), login))
        return writes[-1].addCallback(lambda _: len(writes)) if writes else succeed(0)

    # -- the writer ------------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[Any, ...], login: Login | None = None) -> "Deferred[None]":
        change = _Change(sql, params, login)
        self._queue.append(change)
        if not self._writing:
            self._flush()
        return change.done

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._writing = True
        if self._db is None:
            committed: Deferred[None] = succeed(None)
            self.log.info("ledger {path} is closed: {count} changes kept in memory only", path=str(self.path), count=len(batch))
        else:
            committed = self._run_blocking(self._commit, [(change.sql, change.params) for change in batch])
        committed.addBoth(self._flushed, batch)

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """In the writer thread: one transaction for the whole batch."""
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _flushed(self, result: object, batch: list[_Change]) -> None:
        self._writing = False
        if isinstance(result, Failure):
            logins = [change.login for change in batch if change.login is not None]
            self.log.error(
                "ledger {path}: could not write {count} changes: {error}; {logins} logins NOT stored "
                "(they authorise their addresses only until popbridge restarts): {who}",
                path=str(self.path), count=len(batch), error=result.getErrorMessage(), logins=len(logins),
                who=", ".join(f"{login.user or '-'}@{login.client}" for login in logins),
            )
            if logins:
                self._not_stored(len(logins))
        for change in batch:
            change.done.callback(None)
        if self._queue and not self._writing:
            self._flush()


def _row(login: Login) -> tuple[Any, ...]:
    return (login.client, login.user, login.protocol, login.when, login.open_sessions, int(login.tls))


def _explain(error: sqlite3.Error) -> str:
    """SQLite's message, with what an operator should make of it."""
    text = str(error)
    if "locked" in text or "busy" in text:
        return f"locked by another process ({text})"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return f"corrupt or not a SQLite database ({text}); move it aside or restore a backup"
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return f"not writable ({text})"
    return text
