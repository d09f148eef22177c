"""The proxy glue driven with StringTransport, a spy backend endpoint and task.Clock."""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

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


def test_client_is_not_read_until_the_backend_connects():
    h = Harness()
    assert h.client.producerState == "paused"
    h.connect_backend()
    assert h.client.producerState == "producing"
    assert h.client.value() == b"+OK ready <1.2@host>\r\n"


def test_unreachable_backend_gives_an_error_and_records_nothing():
    h = Harness()
    h.backend.attempts[-1][1].errback(ConnectionRefusedError())
    assert h.client.value().startswith(b"-ERR [SYS/TEMP]")
    assert h.client.disconnecting
    assert h.users() == []


def test_backend_connect_times_out():
    h = Harness(connect_timeout=10)
    h.clock.advance(10)
    assert h.client.value().startswith(b"-ERR [SYS/TEMP]") and h.client.disconnecting


def test_success_line_is_held_until_the_ledger_has_recorded():
    class SlowLedger(MemoryLedger):
        def record(self, *args, **kwargs):
            self.pending = Deferred()
            return self.pending.addCallback(lambda _: MemoryLedger.record(self, *args, **kwargs))

    h = Harness(ledger=SlowLedger(Clock(), ttl=1800))
    h.connect_backend()
    h.client.clear()
    h.proxy.dataReceived(b"USER alice\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    h.proxy.dataReceived(b"PASS secret\r\nSTAT\r\n")
    h.leg.dataReceived(b"+OK Logged in.\r\n")
    assert h.client.value() == b"+OK\r\n"
    assert h.server.value() == b"USER alice\r\nPASS secret\r\n"
    h.ledger.pending.callback(None)
    assert h.client.value() == b"+OK\r\n+OK Logged in.\r\n"
    assert h.server.value().endswith(b"STAT\r\n")
    assert h.users() == ["alice"]


def test_wrong_password_records_nothing():
    h = Harness()
    h.connect_backend()
    h.proxy.dataReceived(b"USER alice\r\nPASS wrong\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    h.leg.dataReceived(b"-ERR [AUTH] Authentication failed.\r\n")
    assert h.users() == []
    assert not h.client.disconnecting


def test_ledger_failure_tells_the_client_and_closes():
    class BrokenLedger(MemoryLedger):
        def record(self, *args, **kwargs):
            return fail(RuntimeError("store down"))

    h = Harness(ledger=BrokenLedger(Clock(), ttl=1800))
    h.connect_backend()
    h.client.clear()
    h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    with capturedLogs() as events:
        h.leg.dataReceived(b"+OK\r\n")
    assert h.client.value().startswith(b"-ERR [SYS/TEMP]")
    assert h.client.disconnecting and h.server.disconnecting
    assert [e["log_failure"].value.args for e in events if "log_failure" in e] == [("store down",)]


def test_after_login_bytes_flow_both_ways_with_producers_registered():
    h = Harness()
    h.connect_backend()
    h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    h.client.clear()
    h.server.clear()
    h.proxy.dataReceived(b"RETR 1\r\n")
    h.leg.dataReceived(b"+OK\r\nbody\r\n.\r\n")
    assert h.server.value() == b"RETR 1\r\n"
    assert h.client.value() == b"+OK\r\nbody\r\n.\r\n"
    assert h.client.producer is h.server and h.server.producer is h.client


def test_idle_client_before_login_is_disconnected():
    h = Harness(idle_timeout=60)
    h.connect_backend()
    h.clock.advance(59)
    assert not h.client.disconnecting
    h.clock.advance(1)
    assert h.client.disconnecting and h.server.disconnecting


def test_protocol_error_closes_both_with_an_error_line():
    h = Harness()
    h.connect_backend()
    h.proxy.dataReceived(b"USER " + b"x" * 70_000)
    assert h.client.value().endswith(b"\r\n") and b"-ERR" in h.client.value()
    assert h.client.disconnecting and h.server.disconnecting


def test_session_end_starts_the_ttl():
    h = Harness()
    h.connect_backend()
    h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    h.ledger._clock.advance(7200)
    assert h.users() == ["alice"]
    h.proxy.connectionLost()
    h.ledger._clock.advance(1799)
    assert h.users() == ["alice"]
    h.ledger._clock.advance(1)
    assert h.users() == []


def test_backend_closing_closes_the_client():
    h = Harness()
    h.connect_backend()
    h.leg.connectionLost()
    assert h.client.disconnecting


def test_forward_client_address_sends_xclient_with_the_peer():
    h = Harness(forward_client_address=True)
    h.connect_backend()
    h.leg.dataReceived(b"+OK\r\nXCLIENT\r\n.\r\n")
    assert h.server.value() == b"CAPA\r\nXCLIENT ADDR=127.0.0.5 PORT=40000\r\n"


def test_logs_name_the_login_but_never_the_password():
    from twisted.logger import formatEvent

    h = Harness()
    h.connect_backend()
    with capturedLogs() as events:
        h.proxy.dataReceived(b"USER alice\r\n")
        h.leg.dataReceived(b"+OK\r\n")
        h.proxy.dataReceived(b"PASS hunter2\r\n")
        h.leg.dataReceived(b"-ERR [AUTH] failed\r\n")
        h.proxy.dataReceived(b"AUTH PLAIN AGFsaWNlAGh1bnRlcjI=\r\n")
        h.leg.dataReceived(b"+ \r\n+OK\r\n")
    text = "\n".join(formatEvent(e) for e in events)
    assert "login failed: user 'alice' from 127.0.0.5 via pop3 USER" in text
    assert "login succeeded: user 'alice' from 127.0.0.5 via pop3 AUTH PLAIN" in text
    assert "hunter2" not in text and "AGFsaWNl" not in text


def test_sessions_past_the_per_client_limit_are_refused_before_any_backend_connection():
    first = Harness(max_sessions_per_client=1)
    factory_backend = first.backend
    second_proxy = first.proxy.factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 40001))
    second = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 40001))
    second_proxy.makeConnection(second)
    assert second.value().startswith(b"-ERR [SYS/TEMP] popbridge: too many connections")
    assert second.disconnecting and len(factory_backend.attempts) == 1


def test_a_closed_session_frees_its_slot():
    h = Harness(max_sessions_per_client=1)
    h.proxy.connectionLost()
    again = h.proxy.factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 40002))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 40002))
    again.makeConnection(transport)
    assert not transport.disconnecting and len(h.backend.attempts) == 2


def test_idle_session_after_login_is_closed_after_its_own_timeout():
    h = Harness(idle_timeout=60, session_idle_timeout=600)
    h.connect_backend()
    h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    h.clock.advance(599)
    h.proxy.dataReceived(b"NOOP\r\n")
    h.clock.advance(599)
    assert not h.client.disconnecting
    h.clock.advance(1)
    assert h.client.disconnecting and h.server.disconnecting


def test_too_many_failed_logins_close_the_session():
    h = Harness(max_bad_commands=2)
    h.connect_backend()
    for _ in range(3):
        h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
        h.leg.dataReceived(b"-ERR [AUTH] failed\r\n")
    assert h.client.disconnecting and h.server.disconnecting
    assert h.client.value().endswith(b"-ERR [SYS/PERM] popbridge: too many bad commands\r\n")


def test_shutdown_closes_sessions_still_logging_in_at_once():
    h = Harness()
    h.connect_backend()
    h.client.clear()
    h.proxy.factory.sessions.drain(30, h.clock)
    assert h.client.value() == b"-ERR [SYS/TEMP] popbridge: server shutting down, try again later\r\n"
    assert h.client.disconnecting


def test_shutdown_lets_logged_in_sessions_finish_within_the_grace_period():
    h = Harness()
    h.connect_backend()
    h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    drained = h.proxy.factory.sessions.drain(30, h.clock)
    h.clock.advance(29)
    assert not h.client.disconnecting and not drained.called
    h.proxy.connectionLost()
    assert drained.called


def test_shutdown_closes_logged_in_sessions_after_the_grace_period():
    h = Harness()
    h.connect_backend()
    h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    h.proxy.factory.sessions.drain(30, h.clock)
    h.clock.advance(30)
    assert h.client.disconnecting and h.server.disconnecting


def test_backend_lost_before_login_tells_the_client_why():
    h = Harness()
    h.connect_backend()
    h.client.clear()
    h.leg.connectionLost()
    assert h.client.value() == b"-ERR [SYS/TEMP] popbridge: connection to the mail server lost\r\n"


def test_backend_closing_after_quit_adds_no_goodbye():
    h = Harness()
    h.connect_backend()
    h.proxy.dataReceived(b"QUIT\r\n")
    h.leg.dataReceived(b"+OK Logging out.\r\n")
    h.client.clear()
    h.leg.connectionLost()
    assert h.client.value() == b"" and h.client.disconnecting


class SpyRouter:
    """Routes the users it knows to their own spy backend."""

    def __init__(self, clock, homes):
        self.backends = {user: SpyEndpoint() for user in homes}
        self._clock, self._homes = clock, homes

    def route_for(self, user):
        if user not in self._homes:
            return succeed(None)
        return succeed((self._homes[user], EndpointConnector(self.backends[user], self._clock, 10)))


def test_a_routed_user_is_logged_in_on_its_own_backend():
    clock = Clock()
    router = SpyRouter(clock, {"carol": "127.0.0.9:110"})
    h = Harness(router=router)
    h.connect_backend()
    h.proxy.dataReceived(b"USER carol\r\nPASS pw\r\n")
    assert h.server.value() == b"" and h.server.disconnecting  # the default backend is dropped
    leg, server = router.backends["carol"].complete()
    leg.dataReceived(b"+OK carol's server\r\n")
    assert server.value() == b"USER carol\r\n"
    leg.dataReceived(b"+OK\r\n")
    leg.dataReceived(b"+OK Logged in\r\n")
    assert server.value() == b"USER carol\r\nPASS pw\r\n"
    assert h.client.value() == b"+OK ready <1.2@host>\r\n+OK\r\n+OK Logged in\r\n"
    assert h.users() == ["carol"]


def test_a_user_without_a_home_stays_on_the_default_backend():
    h = Harness(router=SpyRouter(Clock(), {}))
    h.connect_backend()
    h.proxy.dataReceived(b"USER alice\r\n")
    assert h.server.value() == b"USER alice\r\n" and not h.server.disconnecting


def test_a_client_gone_while_its_login_was_being_stored_does_not_stay_open_forever():
    class SlowLedger(MemoryLedger):
        def record(self, *args, **kwargs):
            self.pending = Deferred()
            return self.pending.addCallback(lambda _: MemoryLedger.record(self, *args, **kwargs))

    clock = Clock()
    h = Harness(ledger=SlowLedger(clock, ttl=1800))
    h.connect_backend()
    h.proxy.dataReceived(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    h.proxy.connectionLost()
    h.ledger.pending.callback(None)
    clock.advance(1800)
    assert h.users() == []


def test_a_client_trickling_bytes_is_closed_at_the_login_timeout():
    h = Harness(idle_timeout=60, login_timeout=300)
    h.connect_backend()
    for _ in range(299):
        h.clock.advance(1)
        h.proxy.dataReceived(b"N")
    assert not h.client.disconnecting
    h.clock.advance(1)
    assert h.client.value().endswith(b"-ERR [SYS/TEMP] popbridge: took too long to log in\r\n")
    assert h.client.disconnecting and h.server.disconnecting


def test_nothing_the_client_sends_after_the_hang_up_reaches_the_backend():
    h = Harness()
    h.connect_backend()
    h.leg.dataReceived(b"+OK surprise\r\n")  # out of turn: the session ends
    h.server.clear()
    h.proxy.dataReceived(b"USER alice\r\n")
    assert h.server.value() == b""
