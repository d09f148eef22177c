"""Control socket glue and the lookup entry points: StringTransport + task.Clock, no reactor."""

import json

import pytest
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from popbridge.ledger import new_session
from popbridge.ledger.memory import MemoryLedger
from popbridge.lookup import control_factory, lookup_factory
from popbridge.lookup.server import LookupServer
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdicts
from tests.doubles import UnavailableLedger, connected


def setup(ledger_type: type[MemoryLedger] = MemoryLedger) -> tuple[ServerFactory, MemoryLedger, Counters, Clock]:
    clock = Clock()
    clock.advance(1000)
    ledger = ledger_type(clock, ttl=1800)
    counters = Counters(started=clock.seconds())
    return control_factory(ledger, counters, clock), ledger, counters, clock


def replies(transport: StringTransport) -> list[dict]:
    return [json.loads(line) for line in transport.value().splitlines()]


def test_list_reports_every_live_login() -> None:
    factory, ledger, _, clock = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    clock.advance(10)
    ledger.record("192.0.2.8", "bob", "imap4", new_session(), tls=True)
    server, transport = connected(factory)
    server.dataReceived(b'{"command": "list"}\n')
    assert replies(transport) == [
        {
            "ok": True,
            "logins": [
                {"client": "192.0.2.8", "user": "bob", "protocol": "imap4", "when": 1010.0, "expires": None,
                 "open_sessions": 1, "tls": True},
                {"client": "192.0.2.7", "user": "alice", "protocol": "pop3", "when": 1000.0, "expires": 2800.0,
                 "open_sessions": 0, "tls": False},
            ],
        }
    ]


def test_query_reports_the_logins_of_one_address() -> None:
    factory, ledger, _, _ = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    server, transport = connected(factory)
    server.dataReceived(b'{"command": "query", "address": "::ffff:192.0.2.7"}\n'
                        b'{"command": "query", "address": "192.0.2.9"}\n')
    first, second = replies(transport)
    assert [login["user"] for login in first["logins"]] == ["alice"]
    assert second == {"ok": True, "address": "192.0.2.9", "logins": []}


def test_revoke_reports_how_many_logins_it_removed() -> None:
    factory, ledger, _, _ = setup()
    ledger.record("192.0.2.7", "alice", "pop3")
    ledger.record("192.0.2.7", "bob", "pop3", new_session())
    server, transport = connected(factory)
    with capturedLogs():
        server.dataReceived(b'{"command": "revoke", "address": "192.0.2.7"}\n')
    assert replies(transport) == [{"ok": True, "address": "192.0.2.7", "revoked": 2}]
    assert ledger.lookup("192.0.2.7").result == []


def test_stats_reports_counters_logins_and_uptime() -> None:
    factory, ledger, counters, clock = setup()
    counters.count("login_succeeded")
    ledger.record("192.0.2.7", "alice", "pop3")
    ledger.record("192.0.2.7", "bob", "pop3")
    ledger.record("192.0.2.8", "carol", "pop3")
    clock.advance(42)
    server, transport = connected(factory)
    server.dataReceived(b'{"command": "stats"}\n')
    [reply] = replies(transport)
    assert reply["ok"] is True
    assert reply["events"] == {"control_stats": 1, "login_succeeded": 1}
    assert (reply["live_logins"], reply["live_addresses"], reply["uptime"]) == (3, 2, 42.0)


@pytest.mark.parametrize(
    "line", [b"not json", b'{"command": "reboot"}', b'{"command": "revoke"}', b"[]", b'{"command": "query", "address": "x"}']
)
def test_bad_request_gets_an_error_reply_and_the_connection_keeps_serving(line: bytes) -> None:
    factory, _, _, _ = setup()
    server, transport = connected(factory)
    with capturedLogs():
        server.dataReceived(line + b"\n" + b'{"command": "list"}\n')
    bad, good = replies(transport)
    assert bad["ok"] is False and bad["error"]
    assert good == {"ok": True, "logins": []}
    assert not transport.disconnecting


def test_over_long_line_closes_the_connection() -> None:
    factory, _, _, _ = setup()
    server, transport = connected(factory)
    with capturedLogs():
        server.dataReceived(b'{"command": "list", "x": "' + b"y" * 10_000)
    assert transport.disconnecting and transport.value() == b""


def test_ledger_failure_is_an_error_reply() -> None:
    factory, _, _, _ = setup(UnavailableLedger)
    server, transport = connected(factory)
    with capturedLogs() as events:
        server.dataReceived(b'{"command": "list"}\n')
    assert replies(transport) == [{"ok": False, "error": "list failed: LedgerUnavailable"}]
    assert any(e.get("log_failure") for e in events)
    assert not transport.disconnecting


@pytest.mark.parametrize("protocol", ["policy", "socketmap", "whoson"])
def test_lookup_factory_builds_a_lookup_server_for_each_protocol(protocol: str) -> None:
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    factory = lookup_factory(LookupConfig(protocol, "unix:address=/tmp/x"), Verdicts(ledger), ledger,
                             Counters(started=0.0), clock)
    assert isinstance(factory.buildProtocol(None), LookupServer)


def test_lookup_factory_refuses_an_unknown_protocol() -> None:
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    with pytest.raises(ValueError):
        lookup_factory(LookupConfig("finger", "unix:address=/tmp/x"), Verdicts(ledger), ledger, Counters(0.0), clock)
