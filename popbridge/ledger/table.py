"""The live-login table in memory: the whole state of the memory store, and SQLite's mirror.

It is synchronous and takes `now` from its caller, so the memory store can wrap it in fired
Deferreds and the SQLite store can answer every lookup from it without waiting on disk while
it writes each change behind. Keys are normalised client addresses (`popbridge.ledger.keyed`).

It is deliberately a plain dict, not a `cachetools` cache: the mirror must hold *every* live
login, since a lookup never falls through to disk; a cache that evicted a live entry to stay
under a size bound would silently withdraw an authorisation. Memory stays bounded by the
addresses seen within one `ttl` because expired entries are dropped when their address is
touched and by `purge`.
"""

import sys
from collections.abc import Iterable
from typing import Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from popbridge.ledger import Login, SessionId
from popbridge.ledger.keyed import KeyedStore

# One login as the table keeps it: user, protocol, when, the ids of its open sessions, tls. A
# plain tuple of strings and numbers, not a Login: the garbage collector stops tracking such
# tuples, and a million tracked Logins made every full collection stall the daemon for a quarter
# of a second (20 ms with rows; bench/ledger_size.py). Logins are built when read.
Row = tuple[str, str, float, tuple[SessionId, ...], bool]
Rows = tuple[Row, ...]  # the live logins of one address, newest first (usually just one)
USER: Final = 0  # the fields of a Row (Final: literal indexes, so each field keeps its type)
PROTOCOL: Final = 1
WHEN: Final = 2
OPEN: Final = 3
TLS: Final = 4


class LoginTable:
    """Logins keyed by client address; one per (user, protocol) on an address.

    Each address holds a tuple, newest first, rather than a dict: most addresses have one
    login, and a one-item tuple costs a quarter of a small dict (bench/ledger_size.py).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._rows: dict[str, Rows] = {}

    def record(
        self, key: str, user: str, protocol: str, now: float, session: SessionId | None, tls: bool
    ) -> Login:
        """A successful login; refreshes `when` and adds `session` to its open sessions."""
        rows = self._live(key, now)
        old = _named(rows, user, protocol) if rows else None
        opened = (old[OPEN] if old else ()) + (() if session is None else (session,))
        row = (sys.intern(user), protocol, now, opened, tls)
        if not rows or (old is not None and len(rows) == 1):  # the usual address: one login
            self._rows[key] = (row,)
        else:
            self._rows[key] = (row, *(r for r in rows if r is not old))
        return _login(key, row)

    def end_session(self, key: str, user: str, protocol: str, session: SessionId, now: float) -> Login | None:
        """`session` of a login closed; returns the changed login, None if that session was not
        open on it (revoked since: then the login there now belongs to later sessions)."""
        rows = self._rows.get(key, ())
        row = _named(rows, user, protocol)
        if row is None or session not in row[OPEN]:
            return None
        still_open = tuple(s for s in row[OPEN] if s != session)
        changed = (row[USER], row[PROTOCOL], now, still_open, row[TLS])
        if len(rows) == 1:
            self._rows[key] = (changed,)
        elif now > rows[0][WHEN]:  # it is the newest now: to the front, as `record` puts a login
            self._rows[key] = (changed, *(r for r in rows if r is not row))
        else:  # the clock went back
            self._rows[key] = _newest_first_rows(changed if r is row else r for r in rows)
        return _login(key, changed)

    def put(self, login: Login) -> None:
        """Store `login` as it is (startup load, migration); it replaces one with the same name.

        Its sessions, if any, are not this process's: it is stored with none open (callers pass
        logins whose sessions ended, see IRestorableLedger.restore)."""
        rows = self._rows.get(login.client, ())
        old = _named(rows, login.user, login.protocol)
        row = (sys.intern(login.user), login.protocol, login.when, (), login.tls)
        self._rows[login.client] = _newest_first_rows((row, *(r for r in rows if r is not old)))

    def lookup(self, key: str, now: float) -> list[Login]:
        return [_login(key, row) for row in self._live(key, now)]

    def logins(self, now: float) -> list[Login]:
        return newest_first(_login(key, row) for key in list(self._rows) for row in self._live(key, now))

    def revoke(self, key: str) -> int:
        return len(self._rows.pop(key, ()))

    def purge(self, now: float) -> int:
        """Drop expired logins; returns how many addresses were forgotten."""
        before = len(self._rows)
        for key in list(self._rows):
            self._live(key, now)
        return before - len(self._rows)

    def _live(self, key: str, now: float) -> Rows:
        """The unexpired logins of `key`; forgets the address once none is left."""
        rows = self._rows.get(key, ())
        ttl = self.ttl
        for row in rows:  # `_alive` inline: this runs for every login and lookup
            if not row[OPEN] and now >= row[WHEN] + ttl:
                break
        else:
            return rows
        rows = tuple(row for row in rows if self._alive(row, now))
        if rows:
            self._rows[key] = rows
        else:
            del self._rows[key]
        return rows

    def _alive(self, row: Row, now: float) -> bool:
        """Live while a session is open, else for `ttl` after `when` (Login.expires)."""
        return bool(row[OPEN]) or now < row[WHEN] + self.ttl


class TableReads(KeyedStore):
    """The reads (and the ttl) of a store that keeps every live login in a LoginTable (memory,
    SQLite's mirror): they never wait, so such a store is an `IImmediateLedger`."""

    _table: LoginTable
    _clock: IReactorTime
    _ipv6_prefix: int

    @property
    def ttl(self) -> float:
        return self._table.ttl

    @ttl.setter
    def ttl(self, seconds: float) -> None:
        """A new ttl (SIGHUP) applies at once to every login, old ones too: expiry is computed."""
        self._table.ttl = seconds

    def _lookup(self, key: str) -> "Deferred[list[Login]]":
        return succeed(self._table.lookup(key, self._clock.seconds()))

    def lookup_now(self, address: str) -> list[Login]:
        """`lookup` without a Deferred (IImmediateLedger, see Verdicts.instant)."""
        key = self.key(address)
        return self._table.lookup(key, self._clock.seconds()) if key is not None else []

    def logins(self) -> "Deferred[list[Login]]":
        return succeed(self._table.logins(self._clock.seconds()))


def _login(key: str, row: Row) -> Login:
    user, protocol, when, sessions, tls = row
    return Login(key, user, protocol, when, len(sessions), tls)


def _named(rows: Rows, user: str, protocol: str) -> Row | None:
    return next((row for row in rows if row[USER] == user and row[PROTOCOL] == protocol), None)


def _newest_first_rows(rows: Iterable[Row]) -> Rows:
    return tuple(sorted(rows, key=lambda row: row[WHEN], reverse=True))


def newest_first(logins: Iterable[Login]) -> list[Login]:
    return sorted(logins, key=lambda login: login.when, reverse=True)
