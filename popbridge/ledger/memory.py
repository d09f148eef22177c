"""The in-memory ledger store: fast, lost on restart, private to one process."""

from collections.abc import Iterable
from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from popbridge.addresses import client_key
from popbridge.ledger import ILedger, Login


@implementer(ILedger)
class MemoryLedger:
    """Logins in a dict keyed by normalised address, then by (user, protocol).

    Expired entries are dropped when their address is next touched and by `purge`, which the
    service runs every minute, so memory stays bounded by the addresses seen within one `ttl`.
    """

    def __init__(self, clock: IReactorTime, ttl: float, ipv6_prefix: int = 128) -> None:
        self._clock, self.ttl, self._ipv6_prefix = clock, ttl, ipv6_prefix
        self._logins: dict[str, dict[tuple[str, str], Login]] = {}

    def record(
        self, address: str, user: str, protocol: str, session: bool, tls: bool = False
    ) -> "Deferred[Login | None]":
        key = client_key(address, self._ipv6_prefix)
        if key is None:
            return succeed(None)
        entries = self._live(key)
        old = entries.get((user, protocol))
        opened = (old.open_sessions if old else 0) + (1 if session else 0)
        login = Login(key, user, protocol, self._clock.seconds(), opened, tls)
        entries[(user, protocol)] = login
        self._logins[key] = entries
        return succeed(login)

    def end_session(self, address: str, user: str, protocol: str) -> "Deferred[None]":
        key = client_key(address, self._ipv6_prefix)
        entries = self._logins.get(key or "", {})
        login = entries.get((user, protocol))
        if login is not None and login.open_sessions:
            entries[(user, protocol)] = replace(
                login, when=self._clock.seconds(), open_sessions=login.open_sessions - 1
            )
        return succeed(None)

    def lookup(self, address: str) -> "Deferred[list[Login]]":
        key = client_key(address, self._ipv6_prefix)
        return succeed(_newest_first(self._live(key).values()) if key else [])

    def logins(self) -> "Deferred[list[Login]]":
        return succeed(_newest_first(login for key in list(self._logins) for login in self._live(key).values()))

    def revoke(self, address: str) -> "Deferred[int]":
        key = client_key(address, self._ipv6_prefix)
        return succeed(len(self._logins.pop(key, {})) if key else 0)

    def purge(self) -> "Deferred[int]":
        before = len(self._logins)
        for key in list(self._logins):
            self._live(key)
        return succeed(before - len(self._logins))

    def _live(self, key: str) -> dict[tuple[str, str], Login]:
        """The unexpired logins of `key`; forgets the address once none is left."""
        now = self._clock.seconds()
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


def _newest_first(logins: Iterable[Login]) -> list[Login]:
    return sorted(logins, key=lambda login: login.when, reverse=True)
