"""``haproxy:`` listeners: the PROXY header, accepted only from `trusted_proxies`.

Twisted's own ``haproxy:`` wrapper connects the wrapped protocol before the header has been
read, so a server-speaks-first protocol (POP3, IMAP4) would see the balancer's address and
greet before knowing the client. This wrapper holds the mail session back until the header
is in, and drops connections whose real peer is not a trusted proxy: a header from anyone
else would let a client choose the address its login authorises.
"""

import ipaddress
from collections.abc import Sequence
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime, ITCPTransport, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from popbridge.wire.proxy_header import ProxyHeaderDecoder, ProxyHeaderError

HEADER_TIMEOUT = 10.0  # seconds a trusted proxy has to send the header


class TrustedProxyHeaderProtocol(ProtocolWrapper):
    log = Logger()
    factory: "TrustedProxyHeaderFactory"
    transport: ITCPTransport  # the listening port's connection (it has abortConnection)

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper would connect the wrapped protocol now; that waits for the header.
        self.connected, self.transport = True, cast(ITCPTransport, transport)
        self.factory.registerProtocol(self)
        self._decoder: ProxyHeaderDecoder | None = ProxyHeaderDecoder()
        self._peer: IAddress | None = None
        peer = self.transport.getPeer()
        if not self.factory.trusts(peer):
            self.log.warn("PROXY header refused: {peer} is not in trusted_proxies", peer=peer)
            self.transport.abortConnection()
            return
        self._timeout = self.factory.clock.callLater(HEADER_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self.log.warn("no PROXY header from {peer} in time", peer=self.transport.getPeer())
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._decoder is None:
            self.wrappedProtocol.dataReceived(data)
            return
        try:
            header = self._decoder.feed(data)
        except ProxyHeaderError as e:
            self.log.warn("bad PROXY header from {peer}: {error}", peer=self.transport.getPeer(), error=e)
            self.transport.abortConnection()
            return
        if header is None:
            return
        self._timeout.cancel()
        rest, self._decoder = self._decoder.rest, None
        if header.source is not None:
            host, port = header.source
            self._peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        self.wrappedProtocol.makeConnection(cast(ITransport, self))  # ProtocolWrapper provides what its transport does
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self) -> IAddress:
        return self._peer or self.transport.getPeer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if getattr(self, "_decoder", None) is not None:  # the mail session never started
            if getattr(self, "_timeout", None) is not None and self._timeout.active():
                self._timeout.cancel()
            self.factory.unregisterProtocol(self)
            return
        super().connectionLost(reason)


class TrustedProxyHeaderFactory(WrappingFactory):
    protocol = TrustedProxyHeaderProtocol

    def __init__(self, wrapped: IProtocolFactory, trusted: Sequence[str], clock: IReactorTime) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self._trusted = [ipaddress.ip_network(network) for network in trusted]

    def trusts(self, peer: IAddress) -> bool:
        host = getattr(peer, "host", None)
        if host is None:
            return False
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._trusted)
