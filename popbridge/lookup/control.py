"""The admin control socket: list, query and revoke logins, and report counters.

Replies are JSON lines (`popbridge.wire.control`). A login is reported as
``{"client", "user", "protocol", "when", "expires", "open_sessions", "tls"}``, where ``expires`` is
null while a proxy session is open. A ledger failure is an ``{"ok": false}`` reply; the
connection keeps serving.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from popbridge.ledger import ILedger, Login
from popbridge.lookup.server import Codec, lookup_server_factory
from popbridge.metrics.counters import Counters
from popbridge.wire.control import (
    ControlDecoder,
    ControlEvent,
    ControlMalformed,
    ControlProtocolError,
    ControlRequest,
    error_reply,
    ok_reply,
)

CONTROL = Codec("control", ControlDecoder, ControlProtocolError)
CONTROL_IDLE_TIMEOUT = 300.0


@dataclass(frozen=True)
class ControlResponder:
    ledger: ILedger
    counters: Counters
    clock: IReactorTime
    log: ClassVar[Logger] = Logger()

    def __call__(self, request: ControlEvent) -> "Deferred[bytes]":
        return Deferred.fromCoroutine(self._answer(request))

    async def _answer(self, request: ControlEvent) -> bytes:
        if isinstance(request, ControlMalformed):
            self.log.warn("control request refused: {error}", error=request.error)
            return error_reply(request.error)
        self.counters.count(f"control_{request.command}")
        try:
            return ok_reply(**await self._serve(request))
        except Exception as e:
            self.log.failure("control {command} failed", command=request.command)
            return error_reply(f"{request.command} failed: {type(e).__name__}")

    async def _serve(self, request: ControlRequest) -> dict[str, Any]:
        if request.command == "list":
            return {"logins": [self._login(login) for login in await self.ledger.logins()]}
        address = request.address or ""
        if request.command == "query":
            return {"address": address, "logins": [self._login(login) for login in await self.ledger.lookup(address)]}
        if request.command == "revoke":
            removed = await self.ledger.revoke(address)
            self.log.info("control: revoked {removed} logins on {address}", removed=removed, address=address)
            return {"address": address, "revoked": removed}
        logins = await self.ledger.logins()
        self.counters.metrics.live(len(logins), len({login.client for login in logins}))
        return {
            "events": dict(sorted(self.counters.totals().items())),
            "metrics": dict(self.counters.metrics.samples()),  # the numbers /metrics serves
            "live_logins": len(logins),
            "live_addresses": len({login.client for login in logins}),
            "started": self.counters.started,
            "uptime": self.clock.seconds() - self.counters.started,
        }

    def _login(self, login: Login) -> dict[str, Any]:
        return {
            "client": login.client,
            "user": login.user,
            "protocol": login.protocol,
            "when": login.when,
            "expires": login.expires(self.ledger.ttl),
            "open_sessions": login.open_sessions,
            "tls": login.tls,
        }


def control_server_factory(ledger: ILedger, counters: Counters, clock: IReactorTime) -> ServerFactory:
    return lookup_server_factory(CONTROL, ControlResponder(ledger, counters, clock), CONTROL_IDLE_TIMEOUT, clock)
