"""A ledger that times every call of the store behind it and counts the ones that fail.

A decorator rather than code in each store: memory, SQLite and Redis are measured the same way,
and the stores stay about storage. The result of each call passes through unchanged, failures
included, so callers still answer their temporary failure. It provides `IImmediateLedger` when
its store does, and times `lookup_now` as a ``lookup`` like any other. A store that answered at
once (the memory store always does) is measured on the spot: adding a callback to a fired
Deferred only to run it there was two of the memory ledger's Deferred passes per POP3 session
(bench/profile.py).
"""

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from popbridge.ledger import IImmediateLedger, ILedger, Login, SessionId
from popbridge.metrics import Metrics


@implementer(ILedger)
class MeasuredLedger:
    def __init__(self, store: ILedger, metrics: Metrics) -> None:
        self._store, self._metrics = store, metrics
        if IImmediateLedger.providedBy(store):
            alsoProvides(self, IImmediateLedger)

    @property
    def ttl(self) -> float:
        return self._store.ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        self._store.ttl = value

    def record(
        self, address: str, user: str, protocol: str, session: SessionId | None = None, tls: bool = False
    ) -> "Deferred[Login | None]":
        return self._measure("record", self._store.record, address, user, protocol, session, tls=tls)

    def end_session(self, address: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        return self._measure("end_session", self._store.end_session, address, user, protocol, session)

    def lookup(self, address: str) -> "Deferred[list[Login]]":
        return self._measure("lookup", self._store.lookup, address)

    def lookup_now(self, address: str) -> list[Login]:
        """Only called when the store is an IImmediateLedger (and so, then, is this)."""
        started = self._metrics.now()
        try:
            logins: list[Login] = self._store.lookup_now(address)  # type: ignore[attr-defined]
        except Exception:
            self._metrics.store_call("lookup", started, failed=True)
            raise
        self._metrics.store_call("lookup", started, failed=False)
        return logins

    def logins(self) -> "Deferred[list[Login]]":
        return self._measure("logins", self._store.logins)

    def revoke(self, address: str) -> "Deferred[int]":
        return self._measure("revoke", self._store.revoke, address)

    def purge(self) -> "Deferred[int]":
        return self._measure("purge", self._store.purge)

    def _measure(self, operation: str, call: Any, *args: Any, **kwargs: Any) -> "Deferred[Any]":
        started = self._metrics.now()
        try:
            result: Deferred[Any] = call(*args, **kwargs)
        except Exception:
            result = fail()
        if result.called and not result.paused:  # fired, and no callback of its own still waiting
            self._done(result.result, operation, started)
            return result
        return result.addBoth(self._done, operation, started)

    def _done(self, result: object, operation: str, started: float) -> object:
        self._metrics.store_call(operation, started, failed=isinstance(result, Failure))
        return result

    def __getattr__(self, name: str) -> Any:
        """Anything else (`restore`, a store's own `path`) is the store's."""
        return getattr(self._store, name)
