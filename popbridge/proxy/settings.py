"""Per-listener settings of the proxy glue: timeouts, TLS material and the session limits."""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime

from popbridge.tls import ServerCertificate


@dataclass(frozen=True)
class SessionTls:
    """TLS for one listener: the certificate clients see, and how the backend leg is checked."""

    certificate: ServerCertificate | None = None
    implicit: bool = False  # TLS from the first byte (an ssl: listener)
    backend: IOpenSSLClientConnectionCreator | None = None  # for backend_starttls


class Router(Protocol):
    def route_for(self, user: str) -> "Deferred[tuple[str, Any] | None]":
        """(host:port, BackendConnector) for `user`, or None for the listener's default backend."""


class Session(Protocol):
    @property
    def logged_in(self) -> bool:
        """Past the login: a shutdown lets it finish within the grace time."""

    def shut_down(self) -> None:
        """Close now: with the protocol's goodbye before the login, plainly after it."""


@dataclass
class OpenSessions:
    """Open sessions of one listener, in total and per client address.

    A flood from one address (or one NAT) must not take every slot: past either limit a new
    connection gets the protocol's goodbye before any backend connection is made. At shutdown
    `drain` lets logged-in sessions finish for a grace period.
    """

    max_total: int = 5_000
    max_per_client: int = 50
    per_client: Counter[str] = field(default_factory=Counter)
    open: set[Session] = field(default_factory=set)
    _drained: list["Deferred[None]"] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.open)

    def admit(self, client: str, session: Session) -> bool:
        if self.total >= self.max_total or self.per_client[client] >= self.max_per_client:
            return False
        self.open.add(session)
        self.per_client[client] += 1
        return True

    def release(self, client: str, session: Session) -> None:
        self.open.discard(session)
        self.per_client[client] -= 1
        if not self.per_client[client]:
            del self.per_client[client]
        if not self.open:
            waiting, self._drained = self._drained, []
            for drained in waiting:
                drained.callback(None)

    def drain(self, grace: float, clock: IReactorTime) -> "Deferred[None]":
        """Close sessions still logging in now, the others when they end or after `grace`."""
        for session in [s for s in self.open if not s.logged_in]:
            session.shut_down()
        if not self.open:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drained.append(drained)
        deadline = clock.callLater(grace, self._close_all)

        def in_time(result: None) -> None:
            if deadline.active():
                deadline.cancel()
            return result

        return drained.addBoth(in_time)

    def _close_all(self) -> None:
        for session in list(self.open):
            session.shut_down()


@dataclass(frozen=True)
class SessionSettings:
    idle_timeout: float = 60.0  # before the login
    login_timeout: float = 300.0  # from connect to login, however active the client is
    idle_after_login: float = 600.0
    connect_timeout: float = 10.0
    tls: SessionTls = SessionTls()
    sessions: OpenSessions = field(default_factory=OpenSessions)  # shared by the listener's sessions
    router: "Router | None" = None  # per-user backends (LDAP backend_attribute)
