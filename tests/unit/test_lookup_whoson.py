"""WHOSON glue: StringTransport + task.Clock + MemoryLedger, no reactor."""

from dataclasses import replace

from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from popbridge.ledger.memory import MemoryLedger
from popbridge.lookup import lookup_factory
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdicts
from tests.doubles import TCP_PEER, UnavailableLedger, connected

CONFIG = LookupConfig("whoson", "unix:address=/tmp/whoson")


def setup(config: LookupConfig = CONFIG, ledger_type: type[MemoryLedger] = MemoryLedger) -> tuple[ServerFactory, MemoryLedger]:
    clock = Clock()
    ledger = ledger_type(clock, ttl=1800)
    return lookup_factory(config, Verdicts(ledger), ledger, Counters(started=0.0), clock), ledger


def test_query_answers_the_user_of_a_live_address() -> None:
    factory, ledger = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory, TCP_PEER)
    server.dataReceived(b"QUERY 192.0.2.7\r\n\r\n")
    assert transport.value() == b"+alice\r\n\r\n"


def test_query_for_an_unknown_address_answers_no() -> None:
    factory, _ = setup()
    server, transport = connected(factory, TCP_PEER)
    server.dataReceived(b"QUERY 192.0.2.8\n\n")
    assert transport.value() == b"-\r\n\r\n"


def test_query_without_an_address_answers_error_and_keeps_serving() -> None:
    factory, ledger = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory, TCP_PEER)
    with capturedLogs():
        server.dataReceived(b"QUERY\r\n\r\n")
    assert transport.value().startswith(b"*") and transport.value().endswith(b"\r\n\r\n")
    assert not transport.disconnecting
    transport.clear()
    server.dataReceived(b"QUERY 192.0.2.7\r\n\r\n")
    assert transport.value() == b"+alice\r\n\r\n"


def test_login_is_refused_without_allow_updates() -> None:
    factory, ledger = setup()
    server, transport = connected(factory, TCP_PEER)
    with capturedLogs():
        server.dataReceived(b"LOGIN 192.0.2.7 mallory\r\n\r\nLOGOUT 192.0.2.7\r\n\r\nQUERY 192.0.2.7\r\n\r\n")
    assert transport.value() == b"*updates are disabled\r\n\r\n" * 2 + b"-\r\n\r\n"
    assert ledger.lookup("192.0.2.7").result == []


def test_logout_is_refused_without_allow_updates() -> None:
    factory, ledger = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory, TCP_PEER)
    with capturedLogs():
        server.dataReceived(b"LOGOUT 192.0.2.7\r\n\r\n")
    assert transport.value() == b"*updates are disabled\r\n\r\n"
    assert len(ledger.lookup("192.0.2.7").result) == 1


def test_login_and_logout_update_the_ledger_when_allowed() -> None:
    factory, ledger = setup(replace(CONFIG, allow_updates=True))
    server, transport = connected(factory, TCP_PEER)
    with capturedLogs():
        server.dataReceived(b"LOGIN 192.0.2.7 bob\r\n\r\nQUERY 192.0.2.7\r\n\r\n")
        assert transport.value() == b"+\r\n\r\n+bob\r\n\r\n"
        [login] = ledger.lookup("192.0.2.7").result
        assert (login.user, login.protocol, login.open_sessions) == ("bob", "whoson", 0)
        transport.clear()
        server.dataReceived(b"LOGOUT 192.0.2.7\r\n\r\nQUERY 192.0.2.7\r\n\r\n")
    assert transport.value() == b"+\r\n\r\n-\r\n\r\n"


def test_ledger_failure_answers_error_never_yes() -> None:
    factory, ledger = setup(ledger_type=UnavailableLedger)
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory, TCP_PEER)
    with capturedLogs() as events:
        server.dataReceived(b"QUERY 192.0.2.7\r\n\r\n")
    assert transport.value().startswith(b"*")
    assert any(e.get("log_failure") for e in events)


def test_half_closed_client_gets_its_answer_then_eof() -> None:
    factory, ledger = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory, TCP_PEER)
    server.dataReceived(b"QUERY 192.0.2.7\r\n\r\n")
    server.readConnectionLost()
    assert transport.value() == b"+alice\r\n\r\n"
    assert transport.disconnecting


def test_nul_byte_closes_the_connection() -> None:
    factory, _ = setup()
    server, transport = connected(factory, TCP_PEER)
    with capturedLogs():
        server.dataReceived(b"QUERY 192.0.2.7\0\r\n\r\n")
    assert transport.disconnecting and transport.value() == b""


def test_over_long_line_closes_the_connection() -> None:
    factory, _ = setup()
    server, transport = connected(factory, TCP_PEER)
    with capturedLogs():
        server.dataReceived(b"QUERY " + b"1" * 100_000)
    assert transport.disconnecting
