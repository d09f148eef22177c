"""The generic lookup server: ordering, half-close, timeouts and failures, with a toy codec."""

from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from popbridge.lookup.server import Codec, LookupServer, lookup_server_factory
from tests.doubles import connected


class ToyError(ValueError):
    pass


@dataclass
class LineDecoder:
    """One request per ``\\n``-ended line; a line starting with ``!`` is a protocol error."""

    _buffer: bytes = field(default=b"")

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if any(line.startswith(b"!") for line in lines):
            raise ToyError("bang")
        return [line.decode() for line in lines]


TOY = Codec("toy", LineDecoder, ToyError)


def echo(request: str) -> "Deferred[bytes]":
    return succeed(f"<{request}>\n".encode())


def connect(factory: ServerFactory) -> tuple[LookupServer[str], StringTransport]:
    return connected(factory, IPv4Address("TCP", "192.0.2.99", 4321))


def test_answers_every_request_and_keeps_the_connection() -> None:
    server, transport = connect(lookup_server_factory(TOY, echo, 60, Clock()))
    server.dataReceived(b"a\nb\n")
    server.dataReceived(b"c\n")
    assert transport.value() == b"<a>\n<b>\n<c>\n"
    assert not transport.disconnecting


def test_replies_keep_request_order_when_the_first_answer_is_slow() -> None:
    pending: dict[str, Deferred[bytes]] = {}

    def slow(request: str) -> "Deferred[bytes]":
        pending[request] = Deferred()
        return pending[request]

    server, transport = connect(lookup_server_factory(TOY, slow, 60, Clock()))
    server.dataReceived(b"first\nsecond\n")
    assert list(pending) == ["first"]  # the second waits its turn
    pending["first"].callback(b"1\n")
    pending["second"].callback(b"2\n")
    assert transport.value() == b"1\n2\n"


def test_later_answer_ready_first_still_goes_out_second() -> None:
    first: Deferred[bytes] = Deferred()
    answers = {"first": first, "second": succeed(b"2\n")}
    server, transport = connect(lookup_server_factory(TOY, answers.__getitem__, 60, Clock()))
    server.dataReceived(b"first\nsecond\n")
    assert transport.value() == b""
    first.callback(b"1\n")
    assert transport.value() == b"1\n2\n"


def test_is_half_closeable() -> None:
    assert IHalfCloseableProtocol.providedBy(LookupServer(TOY, echo, 60, Clock()))


def test_half_closed_client_gets_every_answer_then_eof() -> None:
    pending: Deferred[bytes] = Deferred()
    server, transport = connect(lookup_server_factory(TOY, lambda request: pending, 60, Clock()))
    server.dataReceived(b"question\n")
    server.readConnectionLost()
    assert not transport.disconnecting
    pending.callback(b"answer\n")
    assert transport.value() == b"answer\n"
    assert transport.disconnecting


def test_half_closed_client_with_nothing_pending_is_closed() -> None:
    server, transport = connect(lookup_server_factory(TOY, echo, 60, Clock()))
    server.readConnectionLost()
    assert transport.disconnecting


def test_protocol_error_closes_with_a_warning_and_other_connections_are_served() -> None:
    factory = lookup_server_factory(TOY, echo, 60, Clock())
    bad, bad_transport = connect(factory)
    good, good_transport = connect(factory)
    with capturedLogs() as events:
        bad.dataReceived(b"!oops\n")
    assert bad_transport.disconnecting and bad_transport.value() == b""
    [event] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert event["protocol"] == "toy" and event["peer"].host == "192.0.2.99"
    bad.dataReceived(b"ignored\n")
    assert bad_transport.value() == b""
    good.dataReceived(b"fine\n")
    assert good_transport.value() == b"<fine>\n"


def test_respond_failure_is_logged_and_closes_only_that_connection() -> None:
    def broken(request: str) -> "Deferred[bytes]":
        return fail(RuntimeError("bug")) if request == "boom" else echo(request)

    factory = lookup_server_factory(TOY, broken, 60, Clock())
    bad, bad_transport = connect(factory)
    good, good_transport = connect(factory)
    with capturedLogs() as events:
        bad.dataReceived(b"boom\nafter\n")
    assert bad_transport.disconnecting and bad_transport.value() == b""
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError]
    good.dataReceived(b"fine\n")
    assert good_transport.value() == b"<fine>\n" and not good_transport.disconnecting


def test_respond_raising_synchronously_is_handled_too() -> None:
    def raising(request: str) -> "Deferred[bytes]":
        raise RuntimeError("bug")

    server, transport = connect(lookup_server_factory(TOY, raising, 60, Clock()))
    with capturedLogs():
        server.dataReceived(b"x\n")
    assert transport.disconnecting


def test_idle_client_is_closed_after_the_timeout() -> None:
    clock = Clock()
    server, transport = connect(lookup_server_factory(TOY, echo, 60, clock))
    clock.advance(59)
    server.dataReceived(b"still here\n")
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_timeout_is_cancelled_when_the_connection_is_lost() -> None:
    clock = Clock()
    server, transport = connect(lookup_server_factory(TOY, echo, 60, clock))
    server.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_nothing_is_written_after_the_connection_is_lost() -> None:
    pending: Deferred[bytes] = Deferred()
    server, transport = connect(lookup_server_factory(TOY, lambda request: pending, 60, Clock()))
    server.dataReceived(b"question\n")
    server.connectionLost(None)
    pending.callback(b"late\n")
    assert transport.value() == b""
