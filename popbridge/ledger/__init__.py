"""The ledger: which client addresses logged in recently, as whom, over which protocol.

One interface, three stores: memory (`memory.py`), SQLite (`sqlite.py`, the durable default)
and Redis (`redis.py`, shared by several nodes); `popbridge.daemon.stores` builds the configured one. Every
method returns a Deferred so a store may do I/O; the memory store answers at once. Addresses given to a ledger
are raw peer addresses: the ledger normalises them with `popbridge.addresses.client_key`.

Liveness rule (DESIGN.md): a login authorises its address for `ttl` seconds after it was
recorded; while a proxy session that made it is still open it stays live, and the `ttl`
starts again when the last of them ends. A new login for the same (user, protocol) refreshes it.

Open sessions are counted per session, by the `SessionId` the proxy passes to `record` and
again to `end_session`, never by a bare count: after a revoke, a session that was open before
it ending must not end a session opened after it (a count cannot tell the two apart).
"""

import itertools
from collections.abc import Iterable
from typing import NamedTuple, NewType

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class Login(NamedTuple):
    """One live login on a client address (the normalised ledger key).

    Built on every read (the stores keep compact rows of their own), so it is a named tuple:
    a third of the cost of a frozen dataclass per lookup.
    """

    client: str
    user: str
    protocol: str
    when: float  # when the login was recorded, or when its last session closed
    open_sessions: int = 0
    tls: bool = False  # whether the client spoke TLS to popbridge when it logged in

    def expires(self, ttl: float) -> float | None:
        """When this login stops authorising its address; None while a session is open."""
        return None if self.open_sessions else self.when + ttl


SessionId = NewType("SessionId", int)  # one proxy session; a NewType, so a bool is not taken for one
_session_ids = itertools.count(1)


def new_session() -> SessionId:
    """An id for one proxy session, unique within this process (the Redis store adds its node's)."""
    return SessionId(next(_session_ids))


class LedgerUnavailable(Exception):
    """The store could not answer; callers answer a temporary failure, never a yes."""


class LedgerStoreError(Exception):
    """A store cannot be opened at all (locked, corrupt, unwritable, bad URL); the message names
    the file or server, and the daemon stops rather than run without its ledger."""


class ILoginRecorder(Interface):
    """What a proxy needs of a ledger: record logins and end their sessions.

    Every ILedger is one; so is a proxy worker's channel to the main process that owns the
    ledger (`popbridge.daemon.workers.remote.RemoteLedger`).
    """

    def record(
        address: str, user: str, protocol: str, session: "SessionId | None" = None, tls: bool = False
    ) -> "Deferred[Login | None]":
        """Store a successful login; with a `session`, it stays live until `end_session(session)`.

        Fires with the stored Login, or None when `address` is not an IP address.
        """

    def end_session(address: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        """The proxy `session` behind a login closed: once no session of it is open, its `ttl`
        starts now. A session that is not open on the login (revoked since) changes nothing."""


class ILedger(ILoginRecorder):
    """Live logins per client address. Implementations: MemoryLedger, SqliteLedger, RedisLedger."""

    ttl = Attribute("seconds a login authorises its address after it was made or its session ended")

    def lookup(address: str) -> "Deferred[list[Login]]":
        """The live logins on `address`, newest first; [] for unknown or non-IP addresses.

        Stores that keep their logins in memory (memory, SQLite's mirror) also offer
        ``lookup_now(address) -> list[Login]``, the same answer without a Deferred, which
        lookups use to answer a relay without any Deferred machinery.
        """

    def logins() -> "Deferred[list[Login]]":
        """Every live login, for the control socket."""

    def revoke(address: str) -> "Deferred[int]":
        """Forget every login on `address` (open sessions included); fires with how many."""

    def purge() -> "Deferred[int]":
        """Drop expired logins (run periodically); fires with how many addresses were forgotten."""


class IRestorableLedger(ILedger):
    """A ledger that can take logins as they are, with their own times (`popbridge migrate-store`)."""

    def restore(logins: "Iterable[Login]") -> "Deferred[int]":
        """Store each login with its `when` and `tls`; fires with how many were stored.

        Open sessions do not travel between stores: pass them as ended (`open_sessions=0`).
        """
