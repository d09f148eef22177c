"""Postfix policy delegation: ``client_address`` in, one ``action=`` line out."""

from dataclasses import dataclass
from typing import ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from popbridge.log import debugging
from popbridge.lookup.server import Answer, Codec, answered, lookup_server_factory, measured
from popbridge.metrics.counters import Counters
from popbridge.senders.owners import SendersUnavailable
from popbridge.settings import LookupConfig
from popbridge.verdict import Status, Verdict, Verdicts
from popbridge.wire.policy import PolicyDecoder, PolicyProtocolError, PolicyRequest, encode_action

POLICY = Codec("policy", PolicyDecoder, PolicyProtocolError)


@dataclass(frozen=True)
class PolicyResponder:
    """Answers the authorised action for a live address, the unknown action otherwise.

    With `exempt_action` set, an address whose every live login is an exempt user gets that
    instead (say ``FILTER smtp:[127.0.0.1]:10025``, so its mail skips the content filter).
    With `sender_binding`, a request whose ``sender`` no user logged in on the address owns
    gets `sender_mismatch_action` instead of either (`Verdicts.for_sender`); a request without a
    ``sender`` line is answered as without binding.
    A request without ``client_address`` gets the unknown action; a ledger failure, or a sender
    only the unreachable directory could vouch for, gets the tempfail action, never the
    authorised one; a directory failure otherwise gets the authorised one.
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
        sender = request.attribute("sender") if self.config.sender_binding else None
        try:
            verdict = self.verdicts.instant(client, exempt)
        except Exception:  # the waiting path below logs it and answers tempfail
            verdict = None
        if verdict is not None and sender is not None:
            bound = self.verdicts.for_sender(verdict, sender)
            if isinstance(bound, Deferred):  # the directory has to say whose address this is
                return measured(metrics, "policy", self._answer(client, exempt, sender, bound), started)
            verdict = bound
        if verdict is not None:
            return answered(metrics, "policy", self._decide(client, verdict, sender), started)
        return measured(metrics, "policy", self._answer(client, exempt, sender), started)

    async def _answer(
        self, client: str, exempt: bool, sender: str | None, bound: "Deferred[Verdict] | None" = None
    ) -> Answer:
        try:
            if bound is not None:
                verdict = await bound
            else:
                verdict = await self.verdicts.for_address(client, exempt)
                if sender is not None:
                    judged = self.verdicts.for_sender(verdict, sender)
                    verdict = await judged if isinstance(judged, Deferred) else judged
        except SendersUnavailable as e:
            self.log.info("policy {client}: sender {sender} deferred: {reason}", client=client, sender=sender, reason=e)
            return "tempfail", encode_action(self.config.tempfail_action)
        except Exception:
            self.log.failure("policy lookup for {client} failed, answering tempfail", client=client)
            return "tempfail", encode_action(self.config.tempfail_action)
        return self._decide(client, verdict, sender)

    def _decide(self, client: str, verdict: Verdict, sender: str | None) -> Answer:
        if verdict.status is Status.MISMATCH:
            self.log.warn(
                "policy {client}: sender {sender} refused: not an address of {users}",
                client=client, sender=sender, users=", ".join(verdict.users) or "a login without a name",
            )
            return "mismatch", encode_action(self.config.sender_mismatch_action)
        meaning, action = ("authorised", self.config.authorised_action) if verdict.authorised else ("unknown", self.config.unknown_action)
        if verdict.exempt and self.config.exempt_action:
            meaning, action = "exempt", self.config.exempt_action
        if debugging():
            self.log.debug("policy {client} ({user}): {action}", client=client, user=verdict.user, action=action)
        return meaning, encode_action(action)


def policy_factory(config: LookupConfig, verdicts: Verdicts, counters: Counters, clock: IReactorTime) -> ServerFactory:
    return lookup_server_factory(POLICY, PolicyResponder(config, verdicts, counters), config.idle_timeout, clock)
