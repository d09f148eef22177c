"""``popbridge migrate-store FROM TO``: copy the live logins of one store into another.

For moving from a single SQLite node to a shared Redis (or back) without making every user
fetch mail again. Run it while the daemons using FROM and TO are stopped: a SQLite file is
locked by its daemon anyway, and logins made during the copy would be missed. Each login keeps
its own time, so it expires when it would have; a session that was open in FROM counts as
ended now. ``memory`` is refused: it lives only inside one running daemon.
"""

from typing import Any

from twisted.internet.defer import Deferred

from popbridge.daemon.stores import Store, open_store
from popbridge.ledger import LedgerStoreError, Login
from popbridge.ledger.spec import parse_store
from popbridge.ledger.sqlite import SqliteLedger
from popbridge.settings import LedgerConfig


def migrate_store(source: str, target: str, ttl: float, reactor: Any) -> "Deferred[int]":
    """Copy every login live under `ttl` from `source` to `target`; fires with how many."""
    return Deferred.fromCoroutine(_migrate(source, target, ttl, reactor))


async def _migrate(source: str, target: str, ttl: float, reactor: Any) -> int:
    stores: list[Store] = []
    try:
        for text in (source, target):
            stores.append(_opened(text, ttl, reactor))
        logins = await stores[0].ledger.logins()
        now = reactor.seconds()
        return await stores[1].ledger.restore([_ended(login, now) for login in logins])
    finally:
        for store in stores:
            store.service.stopService()  # every call has answered: this joins idle threads


def _opened(text: str, ttl: float, reactor: Any) -> Store:
    try:
        kind = parse_store(text).kind
    except ValueError as e:
        raise LedgerStoreError(str(e)) from None
    if kind == "memory":
        raise LedgerStoreError('"memory" cannot be migrated: it lives only inside a running daemon')
    store = open_store(LedgerConfig(ttl=ttl, store=text), reactor)
    if isinstance(store.ledger, SqliteLedger):
        store.ledger.open()  # here, so that a locked or corrupt file is an error, not a log line
    store.service.startService()
    return store


def _ended(login: Login, now: float) -> Login:
    if login.open_sessions:
        return login._replace(when=max(login.when, now), open_sessions=0)
    return login
