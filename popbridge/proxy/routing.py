"""Which backend serves a user: the directory's `backend_attribute`, else the listener's default.

Design (docs/ldap.md, "Routing"): a session starts on the default backend. When the client's login
names its user before any secret is sent (POP3 USER, AUTH with an initial response or a
first SASL response for PLAIN/LOGIN/XOAUTH2/OAUTHBEARER; IMAP LOGIN on one line,
AUTHENTICATE likewise), the watcher holds it, and if the user lives elsewhere the session
moves: the default backend is dropped, the user's backend greets popbridge (not the client),
gets popbridge's STARTTLS/XCLIENT/ID as configured, and receives the held login. Logins that
answer a backend's own challenge (APOP, CRAM-MD5) or send the user in a synchronising literal
stay on the default backend, where their challenge came from.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from popbridge.directory import IDirectory
from popbridge.proxy.backend import BackendConnector, EndpointConnector, TcpConnector

DEFAULT_PORTS = {("pop3", False): 110, ("imap4", False): 143, ("pop3", True): 995, ("imap4", True): 993}

Route = tuple[str, BackendConnector] | None  # (host:port, connector); None: the default backend


class UserRouter:
    log = Logger()

    def __init__(self, directory: IDirectory, reactor: Any, protocol: str, default_backend: str, timeout: float) -> None:
        self._directory, self._reactor, self._timeout = directory, reactor, timeout
        self._tls = default_backend.startswith("tls:")
        self._default_port = DEFAULT_PORTS[(protocol, self._tls)]

    def route_for(self, user: str) -> "Deferred[Route]":
        """The user's backend; the default one when the directory names none or cannot answer."""
        return self._directory.backend_for(user).addCallbacks(self._connector, self._no_answer, errbackArgs=(user,))

    def _no_answer(self, failure: Failure, user: str) -> Route:
        self.log.failure("no backend for {user} from the directory: using the default", failure, user=user)
        return None

    def _connector(self, where: str | None) -> Route:
        if not where:
            return None
        host, port = _host_port(where, self._default_port)
        if self._tls:
            endpoint = clientFromString(self._reactor, f"tls:host={host}:port={port}")
            return f"{host}:{port}", EndpointConnector(endpoint, self._reactor, self._timeout)
        return f"{host}:{port}", TcpConnector(self._reactor, host, port, self._timeout)


def _host_port(where: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    if where.startswith("["):
        host, _, rest = where[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if where.count(":") == 1:
        host, port = where.split(":")
        return host, int(port)
    return where, default_port
