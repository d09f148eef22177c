"""Mail proxies: a LoginProxy per client connection, with the watcher of the listener's protocol."""

from collections.abc import Callable
from functools import partial
from pathlib import Path

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory

from popbridge.ledger import ILoginRecorder
from popbridge.metrics.counters import Counters
from popbridge.proxy.backend import BackendConnector
from popbridge.proxy.session import LoginProxy
from popbridge.proxy.settings import OpenSessions, Router, SessionSettings, SessionTls
from popbridge.settings import ProxyConfig
from popbridge.tls import ServerCertificate, backend_hostname, backend_tls_options
from popbridge.wire.imap4 import Imap4LoginWatcher
from popbridge.wire.login import LoginWatcher, TlsOptions
from popbridge.wire.pop3 import Pop3LoginWatcher

WATCHERS = {"pop3": Pop3LoginWatcher, "imap4": Imap4LoginWatcher}


def proxy_factory(
    config: ProxyConfig,
    backend: BackendConnector,
    ledger: ILoginRecorder,
    counters: Counters,
    clock: IReactorTime,
    certificate: ServerCertificate | None = None,
    router: Router | None = None,
) -> "ProxyFactory":
    """The factory for one [[proxy]] listener; `certificate` is shared with the SIGHUP reloader."""
    watcher_class = WATCHERS[config.protocol]
    tls = config.tls
    options = TlsOptions(
        offer_starttls=certificate is not None and not tls.implicit,
        active=tls.implicit,
        required=tls.require,
        backend_starttls=tls.backend_starttls,
    )
    session_tls = SessionTls(
        certificate=certificate,
        implicit=tls.implicit,
        backend=backend_tls_options(
            backend_hostname(tls, config.backend), Path(tls.backend_ca) if tls.backend_ca else None, tls.backend_verify
        )
        if tls.backend_starttls
        else None,
    )

    limits = {"max_line": config.max_line, "max_bad_commands": config.max_bad_commands}
    if config.protocol == "imap4":
        limits["max_literal"] = config.max_literal

    def watcher_for(peer: IAddress) -> LoginWatcher:
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        forward = (host, port) if config.forward_client_address and host and port is not None else None
        return watcher_class(client_address=forward, tls=options, route_logins=router is not None, **limits)

    settings = SessionSettings(
        idle_timeout=config.idle_timeout,
        login_timeout=config.login_timeout,
        idle_after_login=config.idle_after_login,
        connect_timeout=config.connect_timeout,
        tls=session_tls,
        sessions=OpenSessions(config.max_sessions, config.max_sessions_per_client),
        router=router,
    )
    return ProxyFactory(partial(LoginProxy, watcher_for, backend, ledger, counters, clock, settings), settings.sessions)


class ProxyFactory(Factory[LoginProxy]):
    """A LoginProxy per client; `sessions` are the open ones, for the drain at shutdown."""

    def __init__(self, session: Callable[[], LoginProxy], sessions: OpenSessions) -> None:
        self.protocol = session
        self.sessions = sessions
