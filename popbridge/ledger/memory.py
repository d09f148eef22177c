"""The in-memory ledger store: fast, lost on restart, private to one process."""

from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from popbridge.ledger import IImmediateLedger, IRestorableLedger, Login, SessionId
from popbridge.ledger.table import LoginTable, TableReads


@implementer(IRestorableLedger, IImmediateLedger)
class MemoryLedger(TableReads):
    """A `LoginTable` behind the ILedger interface; every Deferred has already fired.

    Expired entries are dropped when their address is next touched and by `purge`, which the
    service runs every minute, so memory stays bounded by the addresses seen within one `ttl`.
    """

    def __init__(self, clock: IReactorTime, ttl: float, ipv6_prefix: int = 128) -> None:
        self._clock, self._ipv6_prefix = clock, ipv6_prefix
        self._table = LoginTable(ttl)

    def _record(
        self, key: str, user: str, protocol: str, session: SessionId | None, tls: bool
    ) -> "Deferred[Login | None]":
        return succeed(self._table.record(key, user, protocol, self._clock.seconds(), session, tls))

    def _end_session(self, key: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        self._table.end_session(key, user, protocol, session, self._clock.seconds())
        return succeed(None)

    def _revoke(self, key: str) -> "Deferred[int]":
        return succeed(self._table.revoke(key))

    def purge(self) -> "Deferred[int]":
        return succeed(self._table.purge(self._clock.seconds()))

    def restore(self, logins: Iterable[Login]) -> "Deferred[int]":
        restored = 0
        for login in logins:
            self._table.put(login)
            restored += 1
        return succeed(restored)
