"""Socketmap lookups (Postfix ``socketmap:``, Sendmail ``K ... socket``).

Maps:

- ``access``: ``OK <authorised_action>`` for a live address, ``NOTFOUND `` otherwise.
- ``user``: ``OK <login name>`` of the newest live login on the address, ``NOTFOUND ``
  otherwise. When that login has no name (GSSAPI, EXTERNAL) the answer is ``NOTFOUND ``
  too: the map has no value to give, and inventing a placeholder could collide with a real
  account in per-user rules downstream. Use ``access`` to ask whether an address is allowed.
- ``exempt``: ``OK yes`` while every live login on the address is an exempt user (``[ldap]``
  ``exempt_filter``), ``NOTFOUND `` otherwise, also when the directory cannot answer.

A key that is not an IP address (Postfix asks for the client hostname first, or ``unknown``)
is ``NOTFOUND `` without asking the ledger, so it is never TEMP or PERM. Any other map name
is ``PERM unknown map``; a ledger failure is ``TEMP``, never OK.
"""

from dataclasses import dataclass
from typing import ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from popbridge.addresses import client_key
from popbridge.log import debugging
from popbridge.lookup.server import Answer, Codec, answered, lookup_server_factory, measured
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdict, Verdicts
from popbridge.wire.socketmap import (
    SocketmapDecoder,
    SocketmapProtocolError,
    SocketmapRequest,
    encode_notfound,
    encode_ok,
    encode_perm,
    encode_temp,
)

SOCKETMAP = Codec("socketmap", SocketmapDecoder, SocketmapProtocolError)
MAPS = ("access", "user", "exempt")


@dataclass(frozen=True)
class SocketmapResponder:
    config: LookupConfig
    verdicts: Verdicts
    counters: Counters
    log: ClassVar[Logger] = Logger()

    def __call__(self, request: SocketmapRequest) -> "bytes | Deferred[bytes]":
        metrics, started = self.counters.metrics, self.counters.metrics.now()
        self.counters.count("lookup_socketmap")
        if request.map_name not in MAPS:
            self.log.warn("socketmap query for unknown map {map!r}", map=request.map_name)
            return answered(metrics, "socketmap", ("refused", encode_perm("unknown map")), started)
        if client_key(request.key) is None:
            if debugging():
                self.log.debug("socketmap {map} {key!r}: not an address", map=request.map_name, key=request.key)
            return answered(metrics, "socketmap", ("unknown", encode_notfound()), started)
        try:
            verdict = self.verdicts.instant(request.key, exempt=request.map_name == "exempt")
        except Exception:  # the waiting path below logs it and answers TEMP
            verdict = None
        if verdict is not None:
            return answered(metrics, "socketmap", self._decide(request, verdict), started)
        return measured(metrics, "socketmap", self._answer(request), started)

    async def _answer(self, request: SocketmapRequest) -> Answer:
        try:
            verdict = await self.verdicts.for_address(request.key, exempt=request.map_name == "exempt")
        except Exception:
            self.log.failure("socketmap lookup for {key} failed, answering TEMP", key=request.key)
            return "tempfail", encode_temp("popbridge cannot check logins right now")
        return self._decide(request, verdict)

    def _decide(self, request: SocketmapRequest, verdict: Verdict) -> Answer:
        value = self._value(request.map_name, verdict)
        if debugging():
            self.log.debug("socketmap {map} {key}: {value!r}", map=request.map_name, key=request.key, value=value)
        if not value:
            return "unknown", encode_notfound()
        return ("exempt" if request.map_name == "exempt" else "authorised"), encode_ok(value)

    def _value(self, map_name: str, verdict: Verdict) -> str:
        """The OK value, or "" for NOTFOUND."""
        if not verdict.authorised:
            return ""
        if map_name == "exempt":
            return "yes" if verdict.exempt else ""
        return self.config.authorised_action if map_name == "access" else verdict.user


def socketmap_factory(
    config: LookupConfig, verdicts: Verdicts, counters: Counters, clock: IReactorTime
) -> ServerFactory:
    return lookup_server_factory(
        SOCKETMAP, SocketmapResponder(config, verdicts, counters), config.idle_timeout, clock
    )
