"""One proxied mail session: the client connection, its backend leg, and the login in between.

The glue knows no protocol grammar: a `LoginWatcher` turns bytes into actions and this class
carries them out in order. Its one rule of its own is *record before release*: when the watcher
reports a successful login, nothing further reaches either side until the ledger has stored it,
so a client that sends mail right after fetching always finds its record. If the ledger cannot
store it, the client is told so and disconnected; the login is not half-trusted.
"""

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from popbridge.ledger import ILoginRecorder, SessionId, new_session
from popbridge.proxy.backend import BackendConnector, BackendLeg
from popbridge.proxy.deadlines import SessionDeadlines
from popbridge.proxy.splice import splice
from popbridge.metrics.counters import Counters
from popbridge.proxy.settings import SessionSettings
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
        self._tls_settings, self._tls = settings.tls, False
        self._admitted = False
        self._backend: BackendLeg | None = None
        self._actions: deque[Action] = deque()
        self._recording = False
        self._spliced = False
        self._splice_ended = False
        self._routing = False  # a login waits while its backend is chosen
        self._paused_for_record = False
        self._deadlines: SessionDeadlines | None = None  # idle and login limits, once admitted
        self._target: str | None = None  # the backend in use: None is the listener's default
        self._session: tuple[str, str, SessionId] | None = None  # (client host, user, its id) once recorded
        self._closed = False
        self._to_backend = self._to_client = 0  # bytes moved after the login

    def connectionMade(self) -> None:
        self._peer = self.transport.getPeer()
        self._client = getattr(self._peer, "host", "")
        self._watcher = self._watcher_for(self._peer)
        self._counters.count(f"{self._watcher.protocol}_connections")
        if self._tls_settings.implicit:
            self._start_client_tls()
        self._admitted = self._settings.sessions.admit(self._client, self)
        if not self._admitted:
            self.log.warn("{protocol} client {client} refused: too many sessions", protocol=self._watcher.protocol, client=self._client)
            self._hang_up(self._watcher.goodbye("too many connections, try again later"))
            return
        self._counters.metrics.session_opened(self._watcher.protocol)
        self.transport.pauseProducing()  # nothing is read until the backend answers
        self._deadlines = SessionDeadlines(
            self._clock, self._settings.idle_timeout, self._settings.login_timeout, self._idle_too_long, self._too_slow_to_log_in
        )
        self._connecting_since = self._counters.metrics.now()
        self._backend_connector.connect(self)

    def backend_connected(self, leg: BackendLeg) -> None:
        if self._closed:
            leg.transport.loseConnection()
            return
        metrics = self._counters.metrics
        metrics.backend_connected(self._watcher.protocol, metrics.now() - self._connecting_since)
        self._backend = leg
        self.transport.resumeProducing()

    def backend_unreachable(self, failure: Failure) -> None:
        if self._closed:
            return
        self._counters.metrics.backend_unreachable(self._watcher.protocol)
        self.log.error(
            "{protocol} backend unreachable for {client}: {error}",
            protocol=self._watcher.protocol, client=self._client, error=failure.getErrorMessage(),
        )
        self._hang_up(self._watcher.goodbye("mail server unavailable, try again later"))

    # -- data from either side ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._spliced:
            self._backend.transport.write(data)  # type: ignore[union-attr]
            self._to_backend += len(data)  # published once, at the end (popbridge.metrics)
            self._deadlines.active()  # type: ignore[union-attr]
            return
        if self._deadlines is not None:
            self._deadlines.active()
        self._feed(self._watcher.feed_client, data)

    def backendDataReceived(self, data: bytes) -> None:
        if self._spliced:
            self.transport.write(data)
            self._to_client += len(data)
            return
        self._feed(self._watcher.feed_backend, data)

    def _feed(self, feed: Callable[[bytes], list[Action]], data: bytes) -> None:
        if self._closed:  # hung up: what still arrives is read, never obeyed
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
        while self._actions and not self._recording and not self._routing and not self._closed:
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
        self._recording = True
        session = new_session()
        recorded: Deferred[object] = self._ledger.record(
            self._client, login.user, self._watcher.protocol, session, tls=self._tls
        )
        recorded.addCallbacks(self._recorded, self._not_recorded, callbackArgs=(login, session))
        if self._recording and not self._closed:  # a store that writes to disk or network: hold both sides
            self._paused_for_record = True
            self._pause_both()

    def _recorded(self, _: object, login: LoginSucceeded, session: SessionId) -> None:
        self._session = (self._client, login.user, session)
        self._log_login("succeeded", login.user, login.method)
        self._recording = False
        if self._closed:  # the client left while the store was writing: its ttl starts now
            self._end_session()
            return
        if self._paused_for_record:
            self._paused_for_record = False
            self._resume_both()
        self._carry_out()

    def _not_recorded(self, failure: Failure) -> None:
        self.log.failure("could not record a login from {client}", failure, client=self._client)
        self._recording = False
        self._hang_up(self._watcher.goodbye("login could not be recorded, try again later"))

    # -- routing ------------------------------------------------------------------------

    def _route(self, user: str) -> None:
        router = self._settings.router
        assert router is not None
        self._routing = True
        router.route_for(user).addCallback(self._routed, user).addErrback(
            lambda failure: self.log.failure("routing {user} failed", failure, user=user)
        )

    def _routed(self, route: "tuple[str, BackendConnector] | None", user: str) -> None:
        if self._closed:
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
        self._routing = False
        self._actions.extendleft(reversed(self._watcher.route_decided(switch)))
        self._carry_out()

    def _log_login(self, outcome: str, user: str, method: str) -> None:
        self._counters.count(f"login_{outcome}")
        self._counters.metrics.login(self._watcher.protocol, method, outcome)
        self.log.info(
            "login {outcome}: user {user!r} from {client} via {protocol} {method}",
            outcome=outcome, user=user, client=self._client, protocol=self._watcher.protocol, method=method,
        )

    def _splice(self, leftovers: Authenticated) -> None:
        assert self._backend is not None
        self._spliced = True
        self._deadlines.logged_in(self._settings.idle_after_login)  # type: ignore[union-attr]
        self._backend.transport.write(leftovers.client_data)
        self.transport.write(leftovers.backend_data)
        splice(self.transport, self._backend.transport)

    def _end_splice(self) -> None:
        """Close both halves of the pipe, once.

        A TLS transport postpones its close while a producer is registered with it, and the
        splice registers each side on the other: unregister first, or a TLS peer never hears EOF.
        """
        if self._splice_ended:
            return
        self._splice_ended = True
        for transport in (self.transport, self._backend.transport):  # type: ignore[union-attr]
            transport.unregisterProducer()  # type: ignore[attr-defined]
            transport.loseConnection()

    def _start_client_tls(self) -> None:
        assert self._tls_settings.certificate is not None
        self.transport.startTLS(self._tls_settings.certificate.options())  # type: ignore[attr-defined]
        self._tls = True

    def _pause_both(self) -> None:
        self.transport.pauseProducing()
        self._backend.transport.pauseProducing()  # type: ignore[union-attr]

    def _resume_both(self) -> None:
        self.transport.resumeProducing()
        self._backend.transport.resumeProducing()  # type: ignore[union-attr]

    # -- endings ------------------------------------------------------------------------

    def _idle_too_long(self) -> None:
        when = "after" if self._spliced else "before"
        self.log.warn("{protocol} client {client} idle {when} login: closed", protocol=self._watcher.protocol, client=self._client, when=when)
        if self._spliced:  # mid-session the protocol's state is unknown: just close both
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

    @property
    def logged_in(self) -> bool:
        return self._spliced

    def shut_down(self) -> None:
        """The daemon is stopping: a goodbye before the login, a plain close after it."""
        if self._spliced:
            self._end_splice()
        else:
            self._hang_up(self._watcher.goodbye("server shutting down, try again later"))

    def _hang_up(self, last_words: bytes) -> None:
        self._closed = True
        self._stop_deadlines()
        self.transport.write(last_words)
        self.transport.loseConnection()
        if self._backend is not None:
            self._backend.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._closed = True
        self._stop_deadlines()
        if self._admitted:
            self._admitted = False
            self._settings.sessions.release(self._client, self)
            self._counters.metrics.session_closed(self._watcher.protocol, self._to_backend, self._to_client)
        if self._spliced:
            self._end_splice()
        elif self._backend is not None:
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
        if self._spliced:
            self._end_splice()
            return
        if self._closed or self._watcher.farewell_seen:
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
