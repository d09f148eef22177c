"""Postfix policy delegation: ``client_address`` in, one ``action=`` line out."""

from dataclasses import dataclass
from typing import ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from popbridge.config import LookupConfig
from popbridge.log import debugging
from popbridge.lookup.server import Answer, Codec, answered, lookup_server_factory, measured
from popbridge.stats import Counters
from popbridge.verdict import Verdict, Verdicts
from popbridge.wire.policy import PolicyDecoder, PolicyProtocolError, PolicyRequest, encode_action

POLICY = Codec("policy", PolicyDecoder, PolicyProtocolError)


@dataclass(frozen=True)
class PolicyResponder:
    """Answers the authorised action for a live address, the unknown action otherwise.

    With `exempt_action` set, an address whose every live login is an exempt user gets that
    instead (say ``FILTER smtp:[127.0.0.1]:10025``, so its mail skips the content filter).
    A request without ``client_address`` gets the unknown action; a ledger failure gets the
    tempfail action, never the authorised one; a directory failure gets the authorised one.
    """

    config: LookupConfig
    verdicts: Verdicts
    counters: Counters
    log: ClassVar[Logger] = Logger()

    def __call__(self, request: PolicyRequest) -> "bytes | Deferred[bytes]":
        metrics, started = self.counters.metrics, self.counters.metrics.now()
        self.counters.count("lookup_policy")
        client = request.get("client_address")
        if not client:
            if debugging():
                self.log.debug("policy request without client_address: {action}", action=self.config.unknown_action)
            return answered(metrics, "policy", ("unknown", encode_action(self.config.unknown_action)), started)
        exempt = bool(self.config.exempt_action)
        try:
            verdict = self.verdicts.instant(client, exempt)
        except Exception:  # the waiting path below logs it and answers tempfail
            verdict = None
        if verdict is not None:
            return answered(metrics, "policy", self._decide(client, verdict), started)
        return measured(metrics, "policy", self._answer(client, exempt), started)

    async def _answer(self, client: str, exempt: bool) -> Answer:
        try:
            verdict = await self.verdicts.for_address(client, exempt)
        except Exception:
            self.log.failure("policy lookup for {client} failed, answering tempfail", client=client)
            return "tempfail", encode_action(self.config.tempfail_action)
        return self._decide(client, verdict)

    def _decide(self, client: str, verdict: Verdict) -> Answer:
        meaning, action = ("authorised", self.config.authorised_action) if verdict.authorised else ("unknown", self.config.unknown_action)
        if verdict.exempt and self.config.exempt_action:
            meaning, action = "exempt", self.config.exempt_action
        if debugging():
            self.log.debug("policy {client} ({user}): {action}", client=client, user=verdict.user, action=action)
        return meaning, encode_action(action)


def policy_factory(config: LookupConfig, verdicts: Verdicts, counters: Counters, clock: IReactorTime) -> ServerFactory:
    return lookup_server_factory(POLICY, PolicyResponder(config, verdicts, counters), config.idle_timeout, clock)
