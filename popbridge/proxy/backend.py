"""How a session reaches its backend, and the protocol on that leg.

Any Twisted client endpoint works (`EndpointConnector`). A plain ``tcp:host=H:port=P`` backend
skips the endpoint layers and calls ``reactor.connectTCP`` itself (`TcpConnector`): the
endpoint, its wrapping factory and ``addTimeout`` were a fifth of popbridge's CPU per POP3
login in bench/profile.py.
"""

from typing import Any, Protocol as Structural

from twisted.internet.endpoints import _parse, clientFromString  # _parse: Twisted's endpoint tokenizer
from twisted.internet.interfaces import IConnector, IReactorTime, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from popbridge.fast.transports import fast_sockets


class BackendUser(Structural):
    """What a leg reports to: the session that owns it."""

    def backend_connected(self, leg: "BackendLeg") -> None: ...

    def backend_unreachable(self, failure: Failure) -> None: ...

    def backendDataReceived(self, data: bytes) -> None: ...

    def backendConnectionLost(self, reason: Failure) -> None: ...


class BackendLeg(Protocol):
    """The connection to the real mail server; everything it hears goes to its session."""

    transport: ITransport

    def __init__(self, session: BackendUser) -> None:
        self._session = session

    def connectionMade(self) -> None:
        self._session.backend_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._session.backendDataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._session.backendConnectionLost(reason)

    def detach(self) -> None:
        """The session moved to another backend: this leg's last words go nowhere."""
        self._session = _NOBODY


class _Nobody:
    def backend_connected(self, leg: BackendLeg) -> None:
        leg.transport.loseConnection()

    def backend_unreachable(self, failure: Failure) -> None:
        pass

    def backendDataReceived(self, data: bytes) -> None:
        pass

    def backendConnectionLost(self, reason: Failure) -> None:
        pass


_NOBODY = _Nobody()


class BackendConnector(Structural):
    def connect(self, session: BackendUser) -> None:
        """Start connecting; the session hears `backend_connected` or `backend_unreachable`."""


class EndpointConnector:
    def __init__(self, endpoint: IStreamClientEndpoint, clock: IReactorTime, timeout: float) -> None:
        self._endpoint, self._clock, self._timeout = endpoint, clock, timeout

    def connect(self, session: BackendUser) -> None:
        factory = Factory.forProtocol(lambda: BackendLeg(session))
        factory.noisy = False
        connecting = self._endpoint.connect(factory)
        connecting.addTimeout(self._timeout, self._clock)
        connecting.addErrback(session.backend_unreachable)


class TcpConnector:
    def __init__(self, reactor: Any, host: str, port: int, timeout: float) -> None:
        self._reactor, self._host, self._port, self._timeout = fast_sockets(reactor), host, port, timeout

    def connect(self, session: BackendUser) -> None:
        self._reactor.connectTCP(self._host, self._port, _LegFactory(session), timeout=self._timeout)


class _LegFactory(ClientFactory):
    noisy = False

    def __init__(self, session: BackendUser) -> None:
        self._session = session

    def buildProtocol(self, addr: object) -> BackendLeg:
        leg = BackendLeg(self._session)
        leg.factory = self
        return leg

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._session.backend_unreachable(reason)


def backend_connector(reactor: Any, description: str, timeout: float) -> BackendConnector:
    """The fastest connector that honours `description` (a Twisted client endpoint string)."""
    args, kwargs = _parse(description)
    if args == ["tcp"] and set(kwargs) <= {"host", "port"} and "host" in kwargs and "port" in kwargs:
        return TcpConnector(reactor, kwargs["host"], int(kwargs["port"]), timeout)
    return EndpointConnector(clientFromString(reactor, description), reactor, timeout)
