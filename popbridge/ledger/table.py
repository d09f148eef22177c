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

from collections.abc import Iterable
from dataclasses import replace

from popbridge.ledger import Login

Name = tuple[str, str]  # (user, protocol): one login per pair on an address


class LoginTable:
    """Logins keyed by client address, then by (user, protocol)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._logins: dict[str, dict[Name, Login]] = {}

    def record(self, key: str, user: str, protocol: str, now: float, session: bool, tls: bool) -> Login:
        """A successful login; refreshes `when` and adds one open session if `session`."""
        entries = self._live(key, now)
        old = entries.get((user, protocol))
        opened = (old.open_sessions if old else 0) + (1 if session else 0)
        login = Login(key, user, protocol, now, opened, tls)
        entries[(user, protocol)] = login
        self._logins[key] = entries
        return login

    def end_session(self, key: str, user: str, protocol: str, now: float) -> Login | None:
        """One session of a login closed; returns the changed login, None if there was none."""
        entries = self._logins.get(key, {})
        login = entries.get((user, protocol))
        if login is None or not login.open_sessions:
            return None
        changed = replace(login, when=now, open_sessions=login.open_sessions - 1)
        entries[(user, protocol)] = changed
        return changed

    def put(self, login: Login) -> None:
        """Store `login` as it is (startup load, migration); it replaces one with the same name."""
        self._logins.setdefault(login.client, {})[(login.user, login.protocol)] = login

    def lookup(self, key: str, now: float) -> list[Login]:
        return newest_first(self._live(key, now).values())

    def logins(self, now: float) -> list[Login]:
        return newest_first(login for key in list(self._logins) for login in self._live(key, now).values())

    def revoke(self, key: str) -> int:
        return len(self._logins.pop(key, {}))

    def purge(self, now: float) -> int:
        """Drop expired logins; returns how many addresses were forgotten."""
        before = len(self._logins)
        for key in list(self._logins):
            self._live(key, now)
        return before - len(self._logins)

    def _live(self, key: str, now: float) -> dict[Name, Login]:
        """The unexpired logins of `key`; forgets the address once none is left."""
        entries = {
            name: login
            for name, login in self._logins.get(key, {}).items()
            if (expiry := login.expires(self.ttl)) is None or now < expiry
        }
        if entries:
            self._logins[key] = entries
        else:
            self._logins.pop(key, None)
        return entries


def newest_first(logins: Iterable[Login]) -> list[Login]:
    return sorted(logins, key=lambda login: login.when, reverse=True)
