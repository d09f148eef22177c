"""One Twisted protocol for every lookup service: a decoder in, a `respond` callable, bytes out.

Replies go out in request order through one Deferred chain, however long each answer takes.
A client that half-closes after its request (Exim ``${readsocket}``) still gets every answer,
then the connection is closed. A decoder error is the peer's fault: logged at warn and the
connection closed. A `respond` failure is ours: `log.failure` and the connection closed. Either
way no other connection is affected.
"""

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol as Structural, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime, ITransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from popbridge.metrics import Metrics

Request = TypeVar("Request")
Request_co = TypeVar("Request_co", covariant=True)


class Decoder(Structural[Request_co]):
    def feed(self, data: bytes) -> Sequence[Request_co]: ...


@dataclass(frozen=True)
class Codec(Generic[Request]):
    """One wire format as the server sees it: a name for logs, a decoder maker, its one error."""

    name: str
    decoder: Callable[[], Decoder[Request]]
    error: type[Exception]


Respond = Callable[[Request], "bytes | Deferred[bytes]"]  # bytes: answered at once
Answer = tuple[str, bytes]  # what the answer meant (authorised, unknown, tempfail...), the reply


def answered(metrics: Metrics, protocol: str, answer: Answer, started: float) -> bytes:
    """Count an answer by meaning, time it, and return the reply."""
    meaning, reply = answer
    metrics.lookup_answered(protocol, meaning, started)
    return reply


def measured(metrics: Metrics, protocol: str, answering: Coroutine[Any, Any, Answer], started: float) -> "Deferred[bytes]":
    """Run a responder's coroutine (an answer that has to wait for a store or directory)."""
    return Deferred.fromCoroutine(answering).addCallback(lambda answer: answered(metrics, protocol, answer, started))


@implementer(IHalfCloseableProtocol)
class LookupServer(Protocol, TimeoutMixin, Generic[Request]):
    log = Logger()
    transport: ITransport  # set by makeConnection before any data arrives

    def __init__(
        self, codec: Codec[Request], respond: Respond[Request], idle_timeout: float, clock: IReactorTime
    ) -> None:
        self._codec, self._respond, self._idle_timeout = codec, respond, idle_timeout
        self._decoder = codec.decoder()
        self.callLater = clock.callLater  # type: ignore[method-assign,assignment]  # TimeoutMixin's clock
        self._replies: Deferred[None] = succeed(None)  # one chain keeps answers in order
        self._waiting = 0  # answers on that chain not written yet
        self._done = False  # set once the connection is going away: answer nothing more

    def connectionMade(self) -> None:
        self.setTimeout(self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self.resetTimeout()
        try:
            requests = self._decoder.feed(data)
        except self._codec.error as e:
            self.log.warn(
                "{protocol} client {peer} dropped: {error}",
                protocol=self._codec.name, peer=self.transport.getPeer(), error=e,
            )
            self._close()
            return
        for request in requests:
            if self._waiting or self._done:
                self._chain(request)
                continue
            try:
                reply = self._respond(request)
            except Exception:
                self._failed(Failure())
                return
            if isinstance(reply, bytes):  # answered from memory: no Deferred at all
                self._write(reply)
            else:
                self._waiting += 1
                self._replies.addCallback(lambda _, pending: pending, reply).addCallbacks(self._written, self._failed)

    def _chain(self, request: Request) -> None:
        self._waiting += 1
        self._replies.addCallback(self._answer, request)

    def readConnectionLost(self) -> None:
        """The client half-closed: answer everything it asked, then close."""
        self._replies.addCallback(lambda _: self._close())

    def writeConnectionLost(self) -> None:
        self._close()

    def timeoutConnection(self) -> None:
        self.log.debug("{protocol} client {peer} idle, closing", protocol=self._codec.name, peer=self.transport.getPeer())
        self._close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._done = True
        self.setTimeout(None)

    def _answer(self, _: None, request: Request) -> "Deferred[None] | None":
        if self._done:
            return None
        return maybeDeferred(self._respond, request).addCallbacks(self._written, self._failed)

    def _written(self, reply: bytes) -> None:
        self._waiting -= 1
        self._write(reply)

    def _write(self, reply: bytes) -> None:
        if not self._done:
            self.transport.write(reply)
            self.resetTimeout()

    def _failed(self, failure: Failure) -> None:
        self.log.failure(
            "{protocol} answer to {peer} failed", failure, protocol=self._codec.name, peer=self.transport.getPeer()
        )
        self._close()

    def _close(self) -> None:
        self._done = True
        self.setTimeout(None)
        self.transport.loseConnection()


def lookup_server_factory(
    codec: Codec[Request], respond: Respond[Request], idle_timeout: float, clock: IReactorTime
) -> ServerFactory:
    """A factory whose every connection is a LookupServer sharing `respond`."""
    factory = ServerFactory()
    factory.protocol = partial(LookupServer, codec, respond, idle_timeout, clock)
    factory.noisy = False
    return factory
