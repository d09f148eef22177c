"""Policy delegation glue: StringTransport + task.Clock + MemoryLedger, no reactor."""

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from popbridge.ledger import LedgerUnavailable, Login, new_session
from popbridge.ledger.memory import MemoryLedger
from popbridge.lookup import lookup_factory
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdicts
from tests.doubles import TCP_PEER, UnavailableLedger, connected

CONFIG = LookupConfig("policy", "unix:address=/tmp/policy")
REQUEST = b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=%s\nclient_name=unknown\n\n"


class SlowLedger(MemoryLedger):
    """Each lookup waits until the test fires its gate."""

    lookup_now = None  # a store that has to wait (Redis), not one answering from memory

    gates: list[Deferred[None]]

    def lookup(self, address: str) -> "Deferred[list[Login]]":
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        return gate.addCallback(lambda _: super(SlowLedger, self).lookup(address))


def build(ledger: MemoryLedger, clock: Clock, config: LookupConfig = CONFIG) -> tuple[ServerFactory, Counters]:
    counters = Counters(started=clock.seconds())
    return lookup_factory(config, Verdicts(ledger), ledger, counters, clock), counters


def test_login_authorises_its_address_until_the_ttl_passes() -> None:
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=300)  # under the 600 s idle timeout, so one connection sees it
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(build(ledger, clock)[0], TCP_PEER)
    server.dataReceived(REQUEST % b"192.0.2.7")
    assert transport.value() == b"action=OK\n\n"
    transport.clear()
    clock.advance(299)
    server.dataReceived(REQUEST % b"192.0.2.7")
    assert transport.value() == b"action=OK\n\n"
    transport.clear()
    clock.advance(1)
    server.dataReceived(REQUEST % b"192.0.2.7")
    assert transport.value() == b"action=DUNNO\n\n"


def test_idle_policy_connection_is_closed_after_the_idle_timeout() -> None:
    clock = Clock()
    server, transport = connected(build(MemoryLedger(clock, ttl=1800), clock)[0], TCP_PEER)
    server.dataReceived(REQUEST % b"192.0.2.7")
    clock.advance(CONFIG.idle_timeout)
    assert transport.disconnecting


def test_connection_stays_open_for_the_next_request() -> None:
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(build(ledger, clock)[0], TCP_PEER)
    server.dataReceived(REQUEST % b"192.0.2.8" + REQUEST % b"192.0.2.7")
    assert transport.value() == b"action=DUNNO\n\naction=OK\n\n"
    assert not transport.disconnecting


def test_configured_actions_are_answered() -> None:
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    ledger.record("::ffff:192.0.2.7", "alice", "pop3", new_session())
    config = LookupConfig("policy", "unix:address=/tmp/p", authorised_action="PERMIT_AUTH_DESTINATION",
                          unknown_action="REJECT relay denied")
    server, transport = connected(build(ledger, clock, config)[0], TCP_PEER)
    server.dataReceived(REQUEST % b"192.0.2.7" + REQUEST % b"192.0.2.9")
    assert transport.value() == b"action=PERMIT_AUTH_DESTINATION\n\naction=REJECT relay denied\n\n"


def test_request_without_client_address_gets_the_unknown_action() -> None:
    clock = Clock()
    server, transport = connected(build(MemoryLedger(clock, ttl=1800), clock)[0], TCP_PEER)
    server.dataReceived(b"request=smtpd_access_policy\n\n")
    assert transport.value() == b"action=DUNNO\n\n"


def test_ledger_failure_answers_tempfail_never_yes() -> None:
    clock = Clock()
    ledger = UnavailableLedger(clock, ttl=1800)
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(build(ledger, clock)[0], TCP_PEER)
    with capturedLogs() as events:
        server.dataReceived(REQUEST % b"192.0.2.7")
    assert transport.value() == b"action=DEFER 4.3.0 Service temporarily unavailable\n\n"
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [LedgerUnavailable]
    assert not transport.disconnecting


def test_megabyte_attribute_line_closes_and_other_connections_are_served() -> None:
    clock = Clock()
    factory = build(MemoryLedger(clock, ttl=1800), clock)[0]
    bad, bad_transport = connected(factory, TCP_PEER)
    good, good_transport = connected(factory, TCP_PEER)
    with capturedLogs():
        bad.dataReceived(b"client_name=" + b"x" * 1_000_000)
    assert bad_transport.disconnecting and bad_transport.value() == b""
    good.dataReceived(REQUEST % b"192.0.2.7")
    assert good_transport.value() == b"action=DUNNO\n\n"


def test_replies_keep_request_order_when_the_first_lookup_is_slow() -> None:
    clock = Clock()
    ledger = SlowLedger(clock, ttl=1800)
    ledger.gates = []
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(build(ledger, clock)[0], TCP_PEER)
    server.dataReceived(REQUEST % b"192.0.2.7" + REQUEST % b"192.0.2.8")
    assert transport.value() == b"" and len(ledger.gates) == 1
    ledger.gates[0].callback(None)
    ledger.gates[1].callback(None)
    assert transport.value() == b"action=OK\n\naction=DUNNO\n\n"


def test_each_lookup_is_counted() -> None:
    clock = Clock()
    factory, counters = build(MemoryLedger(clock, ttl=1800), clock)
    server, _ = connected(factory, TCP_PEER)
    server.dataReceived(REQUEST % b"192.0.2.7" * 3)
    assert counters.events["lookup_policy"] == 3
