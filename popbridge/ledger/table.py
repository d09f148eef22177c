"""The live-login table in memory: the whole state of the memory store, and SQLite's mirror.

It is synchronous and takes `now` from its caller, so the memory store can wrap it in fired
Deferreds and the SQLite store can answer every lookup from it without waiting on disk while
it writes each change behind. Keys are normalised client addresses (the caller normalises).

It is deliberately a plain dict, not a `cachetools` cache: the mirror must hold *every* live
login, since a lookup never falls through to disk; a cache that evicted a live entry to stay
under a size bound would silently withdraw an authorisation. Memory stays bounded by the
addresses seen within one `ttl` because expired entries are dropped when their address is
touched and by `purge`.
"""

import sys
from collections.abc import Iterable
from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from popbridge.addresses import client_key
from popbridge.ledger import Login

Entries = tuple[Login, ...]  # the live logins of one address, newest first (usually just one)


class LoginTable:
    """Logins keyed by client address; one per (user, protocol) on an address.

    Each address holds a tuple, newest first, rather than a dict: most addresses have one
    login, and a one-item tuple costs a quarter of a small dict (bench/ledger_size.py).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._logins: dict[str, Entries] = {}

    def record(self, key: str, user: str, protocol: str, now: float, session: bool, tls: bool) -> Login:
        """A successful login; refreshes `when` and adds one open session if `session`."""
        entries = self._live(key, now)
        old = _named(entries, user, protocol)
        opened = (old.open_sessions if old else 0) + (1 if session else 0)
        login = Login(key, sys.intern(user), protocol, now, opened, tls)
        self._logins[key] = (login, *(entry for entry in entries if entry is not old))
        return login

    def end_session(self, key: str, user: str, protocol: str, now: float) -> Login | None:
        """One session of a login closed; returns the changed login, None if there was none."""
        entries = self._logins.get(key, ())
        login = _named(entries, user, protocol)
        if login is None or not login.open_sessions:
            return None
        changed = replace(login, when=now, open_sessions=login.open_sessions - 1)
        self._logins[key] = _newest_first_tuple(changed if entry is login else entry for entry in entries)
        return changed

    def put(self, login: Login) -> None:
        """Store `login` as it is (startup load, migration); it replaces one with the same name."""
        entries = self._logins.get(login.client, ())
        old = _named(entries, login.user, login.protocol)
        self._logins[login.client] = _newest_first_tuple((login, *(e for e in entries if e is not old)))

    def lookup(self, key: str, now: float) -> list[Login]:
        return list(self._live(key, now))

    def logins(self, now: float) -> list[Login]:
        return newest_first(login for key in list(self._logins) for login in self._live(key, now))

    def revoke(self, key: str) -> int:
        return len(self._logins.pop(key, ()))

    def purge(self, now: float) -> int:
        """Drop expired logins; returns how many addresses were forgotten."""
        before = len(self._logins)
        for key in list(self._logins):
            self._live(key, now)
        return before - len(self._logins)

    def _live(self, key: str, now: float) -> Entries:
        """The unexpired logins of `key`; forgets the address once none is left."""
        entries = self._logins.get(key, ())
        if any(not self._alive(login, now) for login in entries):
            entries = tuple(login for login in entries if self._alive(login, now))
            if entries:
                self._logins[key] = entries
            else:
                del self._logins[key]
        return entries

    def _alive(self, login: Login, now: float) -> bool:
        expiry = login.expires(self.ttl)
        return expiry is None or now < expiry


class TableReads:
    """The reads of a store that keeps every live login in a LoginTable (memory, SQLite's
    mirror): they never wait, so `lookup_now` lets lookups skip Deferreds altogether."""

    _table: LoginTable
    _clock: IReactorTime
    _ipv6_prefix: int

    def lookup(self, address: str) -> "Deferred[list[Login]]":
        return succeed(self._current(address))

    def lookup_now(self, address: str) -> list[Login]:
        """`lookup` without a Deferred (see Verdicts.instant)."""
        return self._current(address)

    def logins(self) -> "Deferred[list[Login]]":
        return succeed(self._table.logins(self._clock.seconds()))

    def _current(self, address: str) -> list[Login]:
        key = client_key(address, self._ipv6_prefix)
        return self._table.lookup(key, self._clock.seconds()) if key else []


def _named(entries: Entries, user: str, protocol: str) -> Login | None:
    return next((entry for entry in entries if entry.user == user and entry.protocol == protocol), None)


def _newest_first_tuple(logins: Iterable[Login]) -> Entries:
    return tuple(newest_first(logins))


def newest_first(logins: Iterable[Login]) -> list[Login]:
    return sorted(logins, key=lambda login: login.when, reverse=True)
