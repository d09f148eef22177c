"""Socketmap glue: StringTransport + task.Clock + MemoryLedger, no reactor."""

from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from popbridge.ledger import new_session
from popbridge.ledger.memory import MemoryLedger
from popbridge.lookup import lookup_factory
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdicts
from popbridge.wire.socketmap import netstring
from tests.doubles import UnavailableLedger, connected

CONFIG = LookupConfig("socketmap", "unix:address=/tmp/socketmap")


def query(map_name: str, key: str) -> bytes:
    return netstring(f"{map_name} {key}".encode())


def setup(ledger_type: type[MemoryLedger] = MemoryLedger) -> tuple[ServerFactory, MemoryLedger, Counters]:
    clock = Clock()
    ledger = ledger_type(clock, ttl=1800)
    counters = Counters(started=0.0)
    return lookup_factory(CONFIG, Verdicts(ledger), ledger, counters, clock), ledger, counters


def ask(factory: ServerFactory, data: bytes) -> bytes:
    server, transport = connected(factory)
    server.dataReceived(data)
    return transport.value()


def test_access_map_answers_ok_for_a_live_address_and_notfound_otherwise() -> None:
    factory, ledger, _ = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    assert ask(factory, query("access", "192.0.2.7")) == b"5:OK OK,"
    assert ask(factory, query("access", "192.0.2.8")) == b"9:NOTFOUND ,"


def test_hostname_keys_are_notfound() -> None:
    factory, _, _ = setup()
    assert ask(factory, query("access", "unknown")) == b"9:NOTFOUND ,"
    assert ask(factory, query("access", "mail.example.org")) == b"9:NOTFOUND ,"
    assert ask(factory, query("access", "192.0.2")) == b"9:NOTFOUND ,"
    assert ask(factory, query("access", "")) == b"9:NOTFOUND ,"


def test_hostname_keys_are_notfound_even_when_the_ledger_is_down() -> None:
    factory, _, _ = setup(UnavailableLedger)
    assert ask(factory, query("access", "unknown")) == b"9:NOTFOUND ,"


def test_user_map_answers_the_newest_login_name() -> None:
    factory, ledger, _ = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    assert ask(factory, query("user", "192.0.2.7")) == b"8:OK alice,"
    assert ask(factory, query("user", "192.0.2.8")) == b"9:NOTFOUND ,"


def test_user_map_without_a_login_name_is_notfound_never_bare_ok() -> None:
    factory, ledger, _ = setup()
    ledger.record("192.0.2.7", "", "pop3", new_session())  # GSSAPI: no name known
    assert ask(factory, query("user", "192.0.2.7")) == b"9:NOTFOUND ,"
    assert ask(factory, query("access", "192.0.2.7")) == b"5:OK OK,"


def test_unknown_map_is_perm() -> None:
    factory, _, _ = setup()
    with capturedLogs():
        assert ask(factory, query("virtual", "192.0.2.7")) == b"16:PERM unknown map,"


def test_ledger_failure_is_temp_never_ok() -> None:
    factory, ledger, _ = setup(UnavailableLedger)
    ledger.record("192.0.2.7", "alice", "pop3")
    with capturedLogs() as events:
        reply = ask(factory, query("access", "192.0.2.7"))
    assert reply.split(b":", 1)[1].startswith(b"TEMP ")
    assert any(e.get("log_failure") for e in events)


def test_several_queries_share_one_connection() -> None:
    factory, ledger, counters = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory)
    server.dataReceived(query("access", "unknown") + query("access", "192.0.2.7"))
    server.dataReceived(query("user", "192.0.2.7")[:5])
    server.dataReceived(query("user", "192.0.2.7")[5:])
    assert transport.value() == b"9:NOTFOUND ,5:OK OK,8:OK alice,"
    assert not transport.disconnecting
    assert counters.events["lookup_socketmap"] == 3


def test_bad_netstring_closes_and_another_connection_is_served() -> None:
    factory, ledger, _ = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    for bad in (b"x16:access 192.0.2.7,", b"16:access 192.0.2.7;", b"99999999:", b"15:access192.0.2.7,"):
        server, transport = connected(factory)
        with capturedLogs() as events:
            server.dataReceived(bad)
        assert transport.disconnecting and transport.value() == b""
        assert [e["log_level"] for e in events] == [LogLevel.warn]
    assert ask(factory, query("access", "192.0.2.7")) == b"5:OK OK,"


def test_half_closed_client_gets_its_answer_then_eof() -> None:
    factory, ledger, _ = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory)
    server.dataReceived(query("access", "192.0.2.7"))
    server.readConnectionLost()
    assert transport.value() == b"5:OK OK,"
    assert transport.disconnecting
