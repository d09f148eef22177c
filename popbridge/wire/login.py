"""What a login watcher (POP3 now, IMAP4 later) tells the proxy glue to do.

A watcher is fed client bytes and backend bytes and returns these actions in the order the
glue must carry them out. The glue never looks inside: it writes, records, and switches to a
plain byte pipe when told. `LoginSucceeded` always comes before the `ToClient` that carries the
backend's success line, so the glue can hold that line until the ledger has stored the login.
"""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ToBackend:
    data: bytes


@dataclass(frozen=True)
class ToClient:
    data: bytes


@dataclass(frozen=True)
class LoginSucceeded:
    """The backend accepted the login command; record it before releasing what follows."""

    user: str  # "" where the mechanism does not reveal it (GSSAPI, EXTERNAL)
    method: str  # "USER", "APOP", "AUTH PLAIN", ...


@dataclass(frozen=True)
class LoginFailed:
    user: str
    method: str


@dataclass(frozen=True)
class BackendNotice:
    """Something the operator should hear about that does not end the session."""

    text: str


@dataclass(frozen=True)
class Authenticated:
    """From here on the session is a plain byte pipe; these are the bytes still in flight."""

    client_data: bytes  # commands the client pipelined behind its login: send to the backend
    backend_data: bytes  # backend bytes after the success line: send to the client


@dataclass(frozen=True)
class StartClientTls:
    """Start TLS towards the client now (after STLS/STARTTLS was accepted).

    Everything written before goes out in the clear; the watcher has already dropped any
    client bytes that followed the command, so nothing sent before the handshake is obeyed.
    """


@dataclass(frozen=True)
class StartBackendTls:
    """Start TLS towards the backend now; its earlier unread bytes were dropped the same way."""


@dataclass(frozen=True)
class RouteLogin:
    """The login names `user` before any secret was sent: choose its backend, then call
    the watcher's `route_decided`. Nothing moves until then."""

    user: str


@dataclass(frozen=True)
class TlsOptions:
    """What a watcher may do about TLS on one session."""

    offer_starttls: bool = False  # popbridge has a certificate: offer STLS / STARTTLS
    active: bool = False  # the client leg is already TLS (implicit TLS listener)
    required: bool = False  # refuse logins until the client leg is TLS
    backend_starttls: bool = False  # popbridge does STARTTLS towards the backend


Action = (
    ToBackend
    | ToClient
    | LoginSucceeded
    | LoginFailed
    | BackendNotice
    | Authenticated
    | StartClientTls
    | StartBackendTls
    | RouteLogin
)


class LoginProtocolError(ValueError):
    """A peer broke the protocol before authentication; the session ends.

    `reply` is what the client is told before both connections close (a POP3 ``-ERR`` line,
    an IMAP ``* BYE``): the same text whichever side misbehaved, since the client cannot
    act on the difference.
    """

    def __init__(self, message: str, reply: bytes) -> None:
        super().__init__(message)
        self.reply = reply


class LoginWatcher(Protocol):
    """What the proxy glue needs from a protocol's watcher (POP3, IMAP4)."""

    protocol: str  # "pop3", "imap4": recorded with each login
    farewell_seen: bool  # the backend already said goodbye to the client (BYE, QUIT's answer)

    def feed_client(self, data: bytes) -> list[Action]: ...

    def feed_backend(self, data: bytes) -> list[Action]: ...

    def goodbye(self, reason: str) -> bytes:
        """The protocol's last words from popbridge before it closes the session."""
        ...

    def route_decided(self, switch: bool) -> list[Action]:
        """After `RouteLogin`: send the held login on (False), or, with `switch`, to a new
        backend whose greeting comes next (the glue has connected it)."""
        ...
