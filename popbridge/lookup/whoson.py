"""WHOSON lookups: ``QUERY`` answers ``+<user>`` or ``-``; LOGIN/LOGOUT only when enabled.

LOGIN and LOGOUT would let any client of the socket create or end an authorisation, so they
are refused with ``*`` unless the lookup has ``allow_updates = true``. Then LOGIN records a
login for the given user with protocol ``whoson`` (no session), LOGOUT revokes every login on
the address, and both answer ``+``. A malformed request gets ``*<reason>``; a ledger failure
gets ``*`` too, never ``+``.
"""

from dataclasses import dataclass
from typing import ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from popbridge.ledger import ILedger
from popbridge.log import debugging
from popbridge.lookup.server import Answer, Codec, answered, lookup_server_factory, measured
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdict, Verdicts
from popbridge.wire.whoson import (
    Command,
    WhosonDecoder,
    WhosonEvent,
    WhosonMalformed,
    WhosonProtocolError,
    WhosonRequest,
    encode_error,
    encode_no,
    encode_yes,
)

WHOSON = Codec("whoson", WhosonDecoder, WhosonProtocolError)


@dataclass(frozen=True)
class WhosonResponder:
    config: LookupConfig
    verdicts: Verdicts
    ledger: ILedger
    counters: Counters
    log: ClassVar[Logger] = Logger()

    def __call__(self, request: WhosonEvent) -> "bytes | Deferred[bytes]":
        metrics, started = self.counters.metrics, self.counters.metrics.now()
        if isinstance(request, WhosonRequest) and request.command is Command.QUERY:
            try:
                verdict = self.verdicts.instant(request.address)
            except Exception:  # the waiting path below logs it and answers *
                verdict = None
            if verdict is not None:
                self.counters.count("lookup_whoson")
                return answered(metrics, "whoson", self._query_answer(request, verdict), started)
        return measured(metrics, "whoson", self._answer(request), started)

    async def _answer(self, request: WhosonEvent) -> Answer:
        self.counters.count("lookup_whoson")
        if isinstance(request, WhosonMalformed):
            self.log.warn("whoson request refused: {reason}", reason=request.reason)
            return "refused", encode_error(request.reason)
        if request.command is not Command.QUERY and not self.config.allow_updates:
            self.log.warn("whoson {command} {address} refused: updates are disabled",
                          command=request.command.value, address=request.address)
            return "refused", encode_error("updates are disabled")
        try:
            return await self._serve(request)
        except Exception:
            self.log.failure("whoson {command} {address} failed", command=request.command.value, address=request.address)
            return "tempfail", encode_error("popbridge cannot check logins right now")

    async def _serve(self, request: WhosonRequest) -> Answer:
        if request.command is Command.LOGIN:
            await self.ledger.record(request.address, request.extra, "whoson")
            self.log.info("whoson LOGIN {user} from {client}", user=request.extra, client=request.address)
            return "updated", encode_yes()
        if request.command is Command.LOGOUT:
            removed = await self.ledger.revoke(request.address)
            self.log.info("whoson LOGOUT {client}: {removed} logins revoked", client=request.address, removed=removed)
            return "updated", encode_yes()
        return self._query_answer(request, await self.verdicts.for_address(request.address))

    def _query_answer(self, request: WhosonRequest, verdict: Verdict) -> Answer:
        if debugging():
            self.log.debug("whoson QUERY {client}: {user!r}", client=request.address,
                           user=verdict.user if verdict.authorised else None)
        return ("authorised", encode_yes(verdict.user)) if verdict.authorised else ("unknown", encode_no())


def whoson_factory(
    config: LookupConfig, verdicts: Verdicts, ledger: ILedger, counters: Counters, clock: IReactorTime
) -> ServerFactory:
    return lookup_server_factory(
        WHOSON, WhosonResponder(config, verdicts, ledger, counters), config.idle_timeout, clock
    )
