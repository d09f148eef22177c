"""A POP3 proxy session wired to a spy backend endpoint, a memory ledger and task.Clock.

Shared by the proxy tests and the worker channel tests, which drive the same session through a
remote ledger.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from popbridge.ledger.memory import MemoryLedger
from popbridge.metrics.counters import Counters
from popbridge.proxy import proxy_factory
from popbridge.proxy.backend import EndpointConnector
from popbridge.settings import ProxyConfig

from tests.doubles import SpyEndpoint


class Harness:
    def __init__(self, ledger=None, router=None, **config):
        self.clock = Clock()
        self.ledger = ledger or MemoryLedger(self.clock, ttl=1800)
        self.backend = SpyEndpoint()
        settings = ProxyConfig("pop3", "tcp:1110", "tcp:host=127.0.0.1:port=110", **config)
        connector = EndpointConnector(self.backend, self.clock, settings.connect_timeout)
        factory = proxy_factory(settings, connector, self.ledger, Counters(0.0), self.clock, router=router)
        self.proxy = factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 40000))
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 40000))
        self.proxy.makeConnection(self.client)

    def connect_backend(self, greeting=b"+OK ready <1.2@host>\r\n"):
        self.leg, self.server = self.backend.complete()
        self.leg.dataReceived(greeting)

    def users(self, address="127.0.0.5"):
        box = []
        self.ledger.lookup(address).addCallback(box.append)
        return [login.user for login in box[0]]
