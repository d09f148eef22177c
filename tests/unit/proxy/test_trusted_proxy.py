from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from popbridge.proxy.trusted_proxy import HEADER_TIMEOUT, TrustedProxyHeaderFactory


class Recorder(Protocol):
    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.received = b""

    def dataReceived(self, data):
        self.received += data


def connect(real_peer: str):
    clock = Clock()
    inner = Factory.forProtocol(Recorder)
    factory = TrustedProxyHeaderFactory(inner, ["10.0.0.0/8"], clock)
    address = IPv4Address("TCP", real_peer, 40000)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport, clock


def test_the_mail_session_starts_after_the_header_with_the_client_as_peer():
    protocol, transport, _ = connect("10.1.2.3")
    assert not hasattr(protocol.wrappedProtocol, "peer")
    protocol.dataReceived(b"PROXY TCP4 192.0.2.7 10.0.0.1 50123 110\r\nCAPA\r\n")
    assert protocol.wrappedProtocol.peer == IPv4Address("TCP", "192.0.2.7", 50123)
    assert protocol.wrappedProtocol.received == b"CAPA\r\n"


def test_an_untrusted_peer_is_dropped_before_reading_anything():
    protocol, transport, _ = connect("192.0.2.99")
    assert transport.disconnecting or getattr(transport, "disconnected", False)
    assert not hasattr(protocol.wrappedProtocol, "peer")


def test_a_bad_header_from_a_trusted_peer_is_dropped():
    protocol, transport, _ = connect("10.1.2.3")
    protocol.dataReceived(b"USER alice\r\n")
    assert transport.disconnecting or getattr(transport, "disconnected", False)
    assert not hasattr(protocol.wrappedProtocol, "peer")


def test_a_missing_header_times_out():
    protocol, transport, clock = connect("10.1.2.3")
    clock.advance(HEADER_TIMEOUT)
    assert transport.disconnecting or getattr(transport, "disconnected", False)
