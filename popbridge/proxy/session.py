"""One proxied mail session: the client connection, its backend leg, and the login in between.

The glue knows no protocol grammar: a `LoginWatcher` turns bytes into actions and this class
carries them out in order. Its one rule of its own is *record before release*: when the watcher
reports a successful login, nothing further reaches either side until the ledger has stored it,
so a client that sends mail right after fetching always finds its record. If the ledger cannot
store it, the client is told so and disconnected; the login is not half-trusted.

Where a session is in its life is one `Phase`, which moves only along `TRANSITIONS`.
"""

import typing
from collections import deque
from collections.abc import Callable
from enum import Enum, auto

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from popbridge.ledger import ILoginRecorder, Login, SessionId, new_session
from popbridge.metrics.counters import Counters
from popbridge.proxy.backend import BackendConnector, BackendLeg
from popbridge.proxy.deadlines import SessionDeadlines
from popbridge.proxy.settings import SessionSettings
from popbridge.proxy.splice import splice
from popbridge.wire.login import (
    Action,
    Authenticated,
    BackendNotice,
    LoginFailed,
    LoginProtocolError,
    LoginSucceeded,
    LoginWatcher,
    RouteLogin,
    StartBackendTls,
    StartClientTls,
    ToBackend,
    ToClient,
)


class Phase(Enum):
    """Where a session is in its life; `TRANSITIONS` lists the moves allowed from each phase."""

    STARTING = auto()  # the client connection is not made yet
    REFUSED = auto()  # over the per-client session limit: told so and closed, never admitted
    WATCHING = auto()  # before the login: the watcher reads both sides and its actions are carried out
    RECORDING = auto()  # the ledger is storing a login: no action is carried out
    AWAITING_STORE = auto()  # the same, with a store that writes to disk or network: both sides paused
    ROUTING = auto()  # a login waits while its backend is chosen: no action is carried out
    SPLICED = auto()  # after the login: a plain byte pipe
    UNSPLICED = auto()  # both halves of the pipe are closing; bytes still in flight pass on
    HUNG_UP = auto()  # popbridge ended the session before the login: input is read, never obeyed
    CLOSED = auto()  # the client connection is gone


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.WATCHING, Phase.REFUSED}),
    Phase.REFUSED: frozenset({Phase.CLOSED}),
    Phase.WATCHING: frozenset({Phase.RECORDING, Phase.ROUTING, Phase.SPLICED, Phase.HUNG_UP, Phase.CLOSED}),
    Phase.RECORDING: frozenset({Phase.AWAITING_STORE, Phase.WATCHING, Phase.HUNG_UP, Phase.CLOSED}),
    Phase.AWAITING_STORE: frozenset({Phase.WATCHING, Phase.HUNG_UP, Phase.CLOSED}),
    Phase.ROUTING: frozenset({Phase.WATCHING, Phase.HUNG_UP, Phase.CLOSED}),
    Phase.SPLICED: frozenset({Phase.UNSPLICED, Phase.CLOSED}),
    Phase.UNSPLICED: frozenset({Phase.CLOSED}),
    Phase.HUNG_UP: frozenset({Phase.HUNG_UP, Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}
ENDED = frozenset({Phase.REFUSED, Phase.HUNG_UP, Phase.CLOSED})  # what still arrives is not obeyed
# Read for every proxied chunk: a module global costs what the old flag did (~3 ns more, where
# `Phase.SPLICED` costs 60 ns or more: an attribute of the Enum class).
_SPLICED, _UNSPLICED = Phase.SPLICED, Phase.UNSPLICED


class LoginProxy(Protocol):
    """Faces the mail client; owns the backend leg and the watcher until the pipe is spliced."""

    log = Logger()
    transport: ITransport

    def __init__(
        self,
        watcher_for: Callable[[IAddress], LoginWatcher],
        backend: BackendConnector,
        ledger: ILoginRecorder,
        counters: Counters,
        clock: IReactorTime,
        settings: SessionSettings | None = None,
    ) -> None:
        self._watcher_for, self._backend_connector = watcher_for, backend
        self._ledger, self._counters, self._clock = ledger, counters, clock
        self._settings = settings = settings or SessionSettings()  # each gets its own OpenSessions
        self._tls_settings = settings.tls
        self._tls = False  # the client leg is TLS (recorded with the login)
        self._phase = Phase.STARTING
        self._backend: BackendLeg | None = None
        self._actions: deque[Action] = deque()
        self._deadlines: SessionDeadlines | None = None  # idle and login limits, once admitted
        self._target: str | None = None  # the backend in use: None is the listener's default
        self._session: tuple[str, str, SessionId] | None = None  # (client host, user, its id) once recorded
        self._to_backend = self._to_client = 0  # bytes moved after the login

    def connectionMade(self) -> None:
        self._peer = self.transport.getPeer()
        self._client = getattr(self._peer, "host", "")
        self._watcher = self._watcher_for(self._peer)
        self._counters.metrics.connection(self._watcher.protocol)
        if self._tls_settings.implicit:
            self._start_client_tls()
        if not self._settings.sessions.admit(self._client, self):
            self.log.warn("{protocol} client {client} refused: too many sessions", protocol=self._watcher.protocol, client=self._client)
            self._enter(Phase.REFUSED)
            self._say_goodbye(self._watcher.goodbye("too many connections, try again later"))
            return
        self._enter(Phase.WATCHING)
        self._counters.metrics.session_opened(self._watcher.protocol)
        _flow(self.transport).pauseProducing()  # nothing is read until the backend answers
        self._deadlines = SessionDeadlines(
            self._clock, self._settings.idle_timeout, self._settings.login_timeout, self._idle_too_long, self._too_slow_to_log_in
        )
        self._connecting_since = self._counters.metrics.now()
        self._backend_connector.connect(self)

    def _enter(self, phase: Phase) -> None:
        """Move to `phase`; a move `TRANSITIONS` does not allow is popbridge's bug, never a peer's."""
        if phase not in TRANSITIONS[self._phase]:
            raise RuntimeError(f"session cannot go from {self._phase.name} to {phase.name}")
        self._phase = phase

    @property
    def logged_in(self) -> bool:
        return self._phase is Phase.SPLICED or self._phase is Phase.UNSPLICED

    def backend_connected(self, leg: BackendLeg) -> None:
        if self._phase in ENDED:
            leg.transport.loseConnection()
            return
        metrics = self._counters.metrics
        metrics.backend_connected(self._watcher.protocol, metrics.now() - self._connecting_since)
        self._backend = leg
        _flow(self.transport).resumeProducing()

    def backend_unreachable(self, failure: Failure) -> None:
        if self._phase in ENDED:
            return
        self._counters.metrics.backend_unreachable(self._watcher.protocol)
        self.log.error(
            "{protocol} backend unreachable for {client}: {error}",
            protocol=self._watcher.protocol, client=self._client, error=failure.getErrorMessage(),
        )
        self._hang_up(self._watcher.goodbye("mail server unavailable, try again later"))

    # -- data from either side ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._phase is _SPLICED or self._phase is _UNSPLICED:
            self._backend.transport.write(data)  # type: ignore[union-attr]
            self._to_backend += len(data)  # published once, at the end (popbridge.metrics)
            self._deadlines.active()  # type: ignore[union-attr]
            return
        if self._deadlines is not None:
            self._deadlines.active()
        self._feed(self._watcher.feed_client, data)

    def backendDataReceived(self, data: bytes) -> None:
        if self._phase is _SPLICED or self._phase is _UNSPLICED:
            self.transport.write(data)
            self._to_client += len(data)
            return
        self._feed(self._watcher.feed_backend, data)

    def _feed(self, feed: Callable[[bytes], list[Action]], data: bytes) -> None:
        if self._phase in ENDED:  # hung up: what still arrives is read, never obeyed
            return
        try:
            actions = feed(data)
        except LoginProtocolError as e:
            self.log.warn("{protocol} session from {client} ended: {error}", protocol=self._watcher.protocol, client=self._client, error=e)
            self._hang_up(e.reply)
            return
        self._actions.extend(actions)
        self._carry_out()

    def _carry_out(self) -> None:
        while self._actions and self._phase is Phase.WATCHING:
            action = self._actions.popleft()
            if isinstance(action, ToBackend):
                self._backend.transport.write(action.data)  # type: ignore[union-attr]
            elif isinstance(action, ToClient):
                self.transport.write(action.data)
            elif isinstance(action, LoginSucceeded):
                self._record(action)
            elif isinstance(action, LoginFailed):
                self._log_login("failed", action.user, action.method)
            elif isinstance(action, BackendNotice):
                self.log.warn("{protocol} backend for {client}: {notice}", protocol=self._watcher.protocol, client=self._client, notice=action.text)
            elif isinstance(action, Authenticated):
                self._splice(action)
            elif isinstance(action, StartClientTls):
                self._start_client_tls()
            elif isinstance(action, RouteLogin):
                self._route(action.user)
            elif isinstance(action, StartBackendTls):
                self._backend.transport.startTLS(self._tls_settings.backend)  # type: ignore[union-attr]

    # -- the login ----------------------------------------------------------------------

    def _record(self, login: LoginSucceeded) -> None:
        self._enter(Phase.RECORDING)
        session = new_session()
        recorded: Deferred[Login | None] = self._ledger.record(
            self._client, login.user, self._watcher.protocol, session, tls=self._tls
        )
        recorded.addCallbacks(self._recorded, self._not_recorded, callbackArgs=(login, session))
        if self._phase is Phase.RECORDING:  # a store that writes to disk or network: hold both sides
            self._enter(Phase.AWAITING_STORE)
            self._pause_both()

    def _recorded(self, _: object, login: LoginSucceeded, session: SessionId) -> None:
        self._session = (self._client, login.user, session)
        self._log_login("succeeded", login.user, login.method)
        if self._phase in ENDED:  # the client left while the store was writing: its ttl starts now
            self._end_session()
            return
        paused = self._phase is Phase.AWAITING_STORE
        self._enter(Phase.WATCHING)
        if paused:
            self._resume_both()
        self._carry_out()

    def _not_recorded(self, failure: Failure) -> None:
        self.log.failure("could not record a login from {client}", failure, client=self._client)
        self._hang_up(self._watcher.goodbye("login could not be recorded, try again later"))

    # -- routing ------------------------------------------------------------------------

    def _route(self, user: str) -> None:
        router = self._settings.router
        assert router is not None
        self._enter(Phase.ROUTING)
        router.route_for(user).addCallback(self._routed, user).addErrback(
            lambda failure: self.log.failure("routing {user} failed", failure, user=user)
        )

    def _routed(self, route: "tuple[str, BackendConnector] | None", user: str) -> None:
        if self._phase in ENDED:
            return
        target = route[0] if route else None
        switch = target != self._target
        if switch:
            self.log.info("{protocol} login of {user!r} from {client} goes to {target}", protocol=self._watcher.protocol,
                          user=user, client=self._client, target=target or "the default backend")
            old, self._backend, self._target = self._backend, None, target
            if old is not None:
                old.detach()
                old.transport.loseConnection()
            (route[1] if route else self._backend_connector).connect(self)
        if self._phase is Phase.ROUTING:  # not hung up by a new backend that failed at once
            self._enter(Phase.WATCHING)
        self._actions.extendleft(reversed(self._watcher.route_decided(switch)))
        self._carry_out()

    def _log_login(self, outcome: str, user: str, method: str) -> None:
        self._counters.metrics.login(self._watcher.protocol, method, outcome)
        self.log.info(
            "login {outcome}: user {user!r} from {client} via {protocol} {method}",
            outcome=outcome, user=user, client=self._client, protocol=self._watcher.protocol, method=method,
        )

    def _splice(self, leftovers: Authenticated) -> None:
        assert self._backend is not None
        self._enter(Phase.SPLICED)
        self._deadlines.logged_in(self._settings.idle_after_login)  # type: ignore[union-attr]
        self._backend.transport.write(leftovers.client_data)
        self.transport.write(leftovers.backend_data)
        splice(self.transport, self._backend.transport)

    def _end_splice(self) -> None:
        """Close both halves of the pipe, once.

        A TLS transport postpones its close while a producer is registered with it, and the
        splice registers each side on the other: unregister first, or a TLS peer never hears EOF.
        """
        if self._phase is not Phase.SPLICED:
            return
        self._enter(Phase.UNSPLICED)
        self._close_pipe()

    def _close_pipe(self) -> None:
        for transport in (self.transport, self._backend.transport):  # type: ignore[union-attr]
            _flow(transport).unregisterProducer()
            transport.loseConnection()

    def _start_client_tls(self) -> None:
        assert self._tls_settings.certificate is not None
        self.transport.startTLS(self._tls_settings.certificate.options())  # type: ignore[attr-defined]
        self._tls = True

    def _pause_both(self) -> None:
        _flow(self.transport).pauseProducing()
        _flow(self._backend.transport).pauseProducing()  # type: ignore[union-attr]

    def _resume_both(self) -> None:
        _flow(self.transport).resumeProducing()
        _flow(self._backend.transport).resumeProducing()  # type: ignore[union-attr]

    # -- endings ------------------------------------------------------------------------

    def _idle_too_long(self) -> None:
        when = "after" if self.logged_in else "before"
        self.log.warn("{protocol} client {client} idle {when} login: closed", protocol=self._watcher.protocol, client=self._client, when=when)
        if self.logged_in:  # mid-session the protocol's state is unknown: just close both
            self._end_splice()
        else:
            self._hang_up(self._watcher.goodbye("idle for too long"))

    def _too_slow_to_log_in(self) -> None:
        """A client that trickles bytes resets the idle timeout forever; this bounds the whole
        time a session may hold a backend connection without a login."""
        self.log.warn("{protocol} client {client} did not log in within {seconds} s: closed",
                      protocol=self._watcher.protocol, client=self._client, seconds=self._settings.login_timeout)
        self._hang_up(self._watcher.goodbye("took too long to log in"))

    def _stop_deadlines(self) -> None:
        if self._deadlines is not None:
            self._deadlines.stop()

    def shut_down(self) -> None:
        """The daemon is stopping: a goodbye before the login, a plain close after it."""
        if self.logged_in:
            self._end_splice()
        else:
            self._hang_up(self._watcher.goodbye("server shutting down, try again later"))

    def _hang_up(self, last_words: bytes) -> None:
        if self._phase is not Phase.CLOSED and self._phase is not Phase.REFUSED:
            self._enter(Phase.HUNG_UP)
        self._say_goodbye(last_words)

    def _say_goodbye(self, last_words: bytes) -> None:
        self._stop_deadlines()
        self.transport.write(last_words)
        self.transport.loseConnection()
        if self._backend is not None:
            self._backend.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        phase = self._phase
        self._enter(Phase.CLOSED)
        self._stop_deadlines()
        if phase is not Phase.REFUSED:
            self._settings.sessions.release(self._client, self)
            self._counters.metrics.session_closed(self._watcher.protocol, self._to_backend, self._to_client)
        if phase is Phase.SPLICED:
            self._close_pipe()
        elif phase is not Phase.UNSPLICED and self._backend is not None:
            self._backend.transport.loseConnection()
        self._end_session()

    def _end_session(self) -> None:
        """The recorded login's session is over: from now its address has `ttl` left."""
        if self._session is None:
            return
        (host, user, session), self._session = self._session, None
        ended = self._ledger.end_session(host, user, self._watcher.protocol, session)
        ended.addErrback(lambda f: self.log.failure("could not end the session of {client}", f, client=host))

    def backendConnectionLost(self, reason: Failure) -> None:
        if self.logged_in:
            self._end_splice()
            return
        if self._phase in ENDED or self._watcher.farewell_seen:
            self.transport.loseConnection()
            return
        # before the login: say why, to the operator and in the protocol's words to the client
        self.log.warn(
            "{protocol} backend connection for {client} lost before the login: {error}",
            protocol=self._watcher.protocol, client=self._client, error=_reason(reason),
        )
        self._hang_up(self._watcher.goodbye("connection to the mail server lost"))


def _reason(reason: Failure) -> str:
    """A connection's end, readable: for TLS errors, OpenSSL's own words (bad certificate...)."""
    value = reason.value
    errors = getattr(value, "args", ())
    return str(errors[0]) if errors and isinstance(errors[0], list) else reason.getErrorMessage()


class _FlowControl(typing.Protocol):
    """What the session asks of both legs' transports beyond ITransport: every TCP, Unix and
    TLS transport Twisted gives a protocol is also a push producer and a consumer."""

    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def unregisterProducer(self) -> None: ...


def _flow(transport: object) -> _FlowControl:
    return typing.cast(_FlowControl, transport)
