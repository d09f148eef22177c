"""The ILedger entry every store shares: client addresses become ledger keys here, once.

A store keeps its logins by key (`popbridge.addresses.client_key`: v4-mapped IPv6 folded to
IPv4, IPv6 grouped by `ipv6_prefix`) and implements `_record`, `_end_session`, `_lookup` and
`_revoke` on keys only. This class turns the raw peer address each ILedger call names into
that key, and answers at once, without troubling the store, when the address is not an IP
address (nothing recorded, no login, nothing revoked).
"""

from twisted.internet.defer import Deferred, succeed

from popbridge.addresses import client_key
from popbridge.ledger import Login, SessionId


class KeyedStore:
    """The address methods of `ILedger`, for a store that works on normalised keys."""

    _ipv6_prefix: int  # set by the store's constructor

    def key(self, address: str) -> str | None:
        """The ledger key of `address`; None when it is not an IP address."""
        return client_key(address, self._ipv6_prefix)

    def record(
        self, address: str, user: str, protocol: str, session: SessionId | None = None, tls: bool = False
    ) -> "Deferred[Login | None]":
        key = self.key(address)
        return succeed(None) if key is None else self._record(key, user, protocol, session, tls)

    def end_session(self, address: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        key = self.key(address)
        return succeed(None) if key is None else self._end_session(key, user, protocol, session)

    def lookup(self, address: str) -> "Deferred[list[Login]]":
        key = self.key(address)
        return succeed([]) if key is None else self._lookup(key)

    def revoke(self, address: str) -> "Deferred[int]":
        key = self.key(address)
        return succeed(0) if key is None else self._revoke(key)

    # -- what each store implements, on keys --------------------------------------------

    def _record(
        self, key: str, user: str, protocol: str, session: SessionId | None, tls: bool
    ) -> "Deferred[Login | None]":
        raise NotImplementedError

    def _end_session(self, key: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        raise NotImplementedError

    def _lookup(self, key: str) -> "Deferred[list[Login]]":
        raise NotImplementedError

    def _revoke(self, key: str) -> "Deferred[int]":
        raise NotImplementedError
