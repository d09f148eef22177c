"""Mail proxies: a LoginProxy per client connection, with the watcher of the listener's protocol."""

from functools import partial

from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory

from popbridge.config import ProxyConfig
from popbridge.ledger import ILedger
from popbridge.proxy.session import LoginProxy
from popbridge.stats import Counters
from popbridge.wire.login import LoginWatcher
from popbridge.wire.imap4 import Imap4LoginWatcher
from popbridge.wire.pop3 import Pop3LoginWatcher

WATCHERS = {"pop3": Pop3LoginWatcher, "imap4": Imap4LoginWatcher}


def proxy_factory(
    config: ProxyConfig, backend: IStreamClientEndpoint, ledger: ILedger, counters: Counters, clock: IReactorTime
) -> Factory:
    watcher_class = WATCHERS[config.protocol]

    def watcher_for(peer: IAddress) -> LoginWatcher:
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        forward = (host, port) if config.forward_client_address and host and port is not None else None
        return watcher_class(client_address=forward)

    return Factory.forProtocol(
        partial(
            LoginProxy, watcher_for, backend, ledger, counters, clock, config.idle_timeout, config.connect_timeout
        )
    )
