"""Per-listener settings of the proxy glue: timeouts, TLS material and the session limits."""

from collections import Counter
from dataclasses import dataclass, field

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from popbridge.tls import ServerCertificate


@dataclass(frozen=True)
class SessionTls:
    """TLS for one listener: the certificate clients see, and how the backend leg is checked."""

    certificate: ServerCertificate | None = None
    implicit: bool = False  # TLS from the first byte (an ssl: listener)
    backend: IOpenSSLClientConnectionCreator | None = None  # for backend_starttls


@dataclass
class OpenSessions:
    """Open sessions of one listener, in total and per client address.

    A flood from one address (or one NAT) must not take every slot: past either limit a new
    connection gets the protocol's goodbye before any backend connection is made.
    """

    max_total: int = 5_000
    max_per_client: int = 50
    total: int = 0
    per_client: Counter[str] = field(default_factory=Counter)

    def admit(self, client: str) -> bool:
        if self.total >= self.max_total or self.per_client[client] >= self.max_per_client:
            return False
        self.total += 1
        self.per_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        self.per_client[client] -= 1
        if not self.per_client[client]:
            del self.per_client[client]


@dataclass(frozen=True)
class SessionSettings:
    idle_timeout: float = 60.0  # before the login
    idle_after_login: float = 600.0
    connect_timeout: float = 10.0
    tls: SessionTls = SessionTls()
    sessions: OpenSessions = field(default_factory=OpenSessions)  # shared by the listener's sessions
