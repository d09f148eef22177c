"""A worker's ledger and directory: the main process's, asked over the channel.

The proxy code is the same in a worker as in the single process: it gets an `ILoginRecorder`
and, when users are routed, an `IDirectory`. Here they are calls to the main process.

Failing closed: a `record` that cannot reach the main process (the channel is gone, or the
main process's store failed) fails, and the proxy answers its client the protocol's temporary
error (`-ERR [SYS/TEMP]`, `* BYE`); the client never sees a success that was not stored. There
is no timeout of our own: a store that is slow in the main process is as slow as it would be in
a single process, and the session's own login deadline still applies.
"""

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from popbridge.daemon.workers.channel import EndSession, Facts, Record
from popbridge.directory import FALLBACK, IDirectory, UserFacts, _FromFacts
from popbridge.ledger import ILoginRecorder, Login, SessionId


@implementer(ILoginRecorder)
class RemoteLedger:
    def __init__(self, channel: amp.AMP) -> None:
        self._channel = channel

    def record(
        self, address: str, user: str, protocol: str, session: SessionId | None = None, tls: bool = False
    ) -> "Deferred[Login | None]":
        asked = self._channel.callRemote(Record, address=address, user=user, protocol=protocol, session=session, tls=tls)
        return asked.addCallback(_login, user, protocol, tls)

    def end_session(self, address: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        """Sent, not answered: the main process ends the session, or logs why it could not. If
        the channel is gone, the main process has ended all of this worker's sessions itself."""
        self._channel.callRemote(EndSession, address=address, user=user, protocol=protocol, session=session)
        return succeed(None)


def _login(answer: dict[str, Any], user: str, protocol: str, tls: bool) -> Login | None:
    if not answer["stored"]:
        return None
    return Login(answer["client"], user, protocol, answer["when"], answer["open_sessions"], tls)


@implementer(IDirectory)
class RemoteDirectory(_FromFacts):
    """Never fails, like every directory: FALLBACK (the default backend) when the main process
    cannot answer."""

    log = Logger()

    def __init__(self, channel: amp.AMP) -> None:
        self._channel = channel

    def facts(self, user: str) -> "Deferred[UserFacts]":
        asked = self._channel.callRemote(Facts, user=user)
        return asked.addCallbacks(lambda answer: UserFacts(answer["exempt"], answer["backend"]), self._fallback)

    def _fallback(self, failure: Failure) -> UserFacts:
        self.log.failure("the main process did not answer a directory look-up", failure)
        return FALLBACK
