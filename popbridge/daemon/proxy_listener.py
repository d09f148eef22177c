"""One [[proxy]] listener, built the same way by the single process and by each proxy worker."""

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory

from popbridge.daemon.listener import Listener
from popbridge.directory import IDirectory
from popbridge.ledger import ILoginRecorder
from popbridge.metrics.counters import Counters
from popbridge.proxy import proxy_factory
from popbridge.proxy.backend import backend_connector
from popbridge.proxy.routing import UserRouter
from popbridge.proxy.trusted_proxy import TrustedProxyHeaderFactory
from popbridge.settings import ProxyConfig
from popbridge.tls import ServerCertificate


def proxy_listener(
    spec: ProxyConfig,
    reactor: Any,
    ledger: ILoginRecorder,
    counters: Counters,
    certificate: ServerCertificate | None,
    routing_directory: IDirectory | None,
    endpoint: IStreamServerEndpoint | None = None,
    fatal: bool = True,
) -> Listener:
    """The listener for `spec`; `certificate` when it offers TLS; `routing_directory` when users
    are routed by the directory; `endpoint` when the socket is already bound (a worker's, passed
    by the main process); `fatal` False for one a reload adds (see `Listener`)."""
    backend = backend_connector(reactor, spec.backend, spec.connect_timeout)
    router = (
        UserRouter(routing_directory, reactor, spec.protocol, spec.backend, spec.connect_timeout)
        if routing_directory is not None
        else None
    )
    factory = proxy_factory(spec, backend, ledger, counters, reactor, certificate, router)
    drain = lambda sessions=factory.sessions, grace=spec.shutdown_grace: sessions.drain(grace, reactor)  # noqa: E731
    listened: Factory[Any] = TrustedProxyHeaderFactory(factory, spec.trusted_proxies, reactor) if spec.proxy_header else factory
    what = f"{spec.protocol} clients"
    return Listener(reactor, what, spec.listen, listened, spec.listen_endpoint, drain, fatal=fatal, endpoint=endpoint)
