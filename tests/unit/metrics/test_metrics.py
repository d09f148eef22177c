"""What popbridge measures: sessions, lookups, the store and the directory, read back from the
daemon's own registry. StringTransport, task.Clock and a spy backend; no reactor, no sockets."""

import json

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.test.requesthelper import DummyRequest

from popbridge.directory import LdapDirectory
from popbridge.directory.ldap_search import ConnectionPool
from popbridge.ledger import IImmediateLedger, LedgerUnavailable
from popbridge.ledger.memory import MemoryLedger
from popbridge.lookup import control_factory, lookup_factory
from popbridge.metrics import Metrics
from popbridge.metrics.counters import Counters
from popbridge.metrics.http import metrics_site
from popbridge.metrics.ledger import MeasuredLedger
from popbridge.proxy import proxy_factory
from popbridge.proxy.backend import EndpointConnector
from popbridge.settings import LookupConfig, ProxyConfig
from popbridge.verdict import Verdicts
from tests.doubles import SpyEndpoint, UnavailableLedger
from tests.unit.ldap_mock import CONFIG, MockLdap


def sample(metrics: Metrics, name: str) -> float:
    return dict(metrics.samples()).get(name, 0.0)


class Session:
    """One POP3 client connection through the proxy glue, with the daemon's counters."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.counters = Counters(0.0, metrics=Metrics(now=self.clock.seconds))
        self.metrics = self.counters.metrics
        self.ledger = MemoryLedger(self.clock, ttl=1800)
        self.backend = SpyEndpoint()
        config = ProxyConfig("pop3", "tcp:1110", "tcp:host=127.0.0.1:port=110")
        connector = EndpointConnector(self.backend, self.clock, config.connect_timeout)
        factory = proxy_factory(config, connector, self.ledger, self.counters, self.clock)
        self.proxy = factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 40000))
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 40000))
        self.proxy.makeConnection(self.client)

    def connect_backend(self, after: float = 0.0) -> None:
        self.clock.advance(after)
        self.leg, self.server = self.backend.complete()
        self.leg.dataReceived(b"+OK ready\r\n")

    def log_in(self, password_ok: bool = True) -> None:
        self.proxy.dataReceived(b"USER alice\r\n")
        self.leg.dataReceived(b"+OK\r\n")
        self.proxy.dataReceived(b"PASS secret\r\n")
        self.leg.dataReceived(b"+OK Logged in.\r\n" if password_ok else b"-ERR [AUTH] Authentication failed.\r\n")


LOGINS_OK = 'popbridge_logins_total{method="USER",outcome="succeeded",protocol="pop3"}'


def test_each_daemon_counts_in_a_registry_of_its_own():
    one, two = Metrics(), Metrics()
    one.login("pop3", "USER", "succeeded")
    assert sample(one, LOGINS_OK) == 1
    assert sample(two, LOGINS_OK) == 0


def test_logins_are_counted_by_protocol_method_and_outcome():
    s = Session()
    s.connect_backend()
    s.log_in(password_ok=False)
    s.log_in()
    assert sample(s.metrics, LOGINS_OK) == 1
    assert sample(s.metrics, 'popbridge_logins_total{method="USER",outcome="failed",protocol="pop3"}') == 1


def test_an_open_session_is_counted_until_it_closes_with_the_bytes_it_moved():
    s = Session()
    s.connect_backend()
    s.log_in()
    assert sample(s.metrics, 'popbridge_sessions_open{protocol="pop3"}') == 1
    s.proxy.dataReceived(b"RETR 1\r\n")
    s.leg.dataReceived(b"+OK 5 octets\r\nhello\r\n.\r\n")
    s.proxy.connectionLost()
    samples = dict(s.metrics.samples())
    assert samples['popbridge_sessions_open{protocol="pop3"}'] == 0
    assert samples['popbridge_proxied_bytes_total{direction="client_to_backend",protocol="pop3"}'] == len(b"RETR 1\r\n")
    assert samples['popbridge_proxied_bytes_total{direction="backend_to_client",protocol="pop3"}'] == len(
        b"+OK 5 octets\r\nhello\r\n.\r\n"
    )


def test_backend_connect_latency_is_observed():
    s = Session()
    s.connect_backend(after=0.02)
    samples = dict(s.metrics.samples())
    assert samples['popbridge_backend_connect_seconds_count{protocol="pop3"}'] == 1
    assert samples['popbridge_backend_connect_seconds_bucket{le="0.025",protocol="pop3"}'] == 1
    assert samples['popbridge_backend_connect_seconds_bucket{le="0.01",protocol="pop3"}'] == 0


def test_an_unreachable_backend_is_counted_as_a_connect_error():
    s = Session()
    s.backend.attempts[-1][1].errback(ConnectionRefusedError())
    assert sample(s.metrics, 'popbridge_backend_connect_errors_total{protocol="pop3"}') == 1
    assert s.client.disconnecting
    s.proxy.connectionLost()  # what the real transport does after loseConnection
    assert sample(s.metrics, 'popbridge_sessions_open{protocol="pop3"}') == 0


def ask(factory, request: bytes) -> bytes:
    transport = StringTransport(peerAddress=UNIXAddress(None))
    server = factory.buildProtocol(None)
    server.makeConnection(transport)
    server.dataReceived(request)
    return transport.value()


def lookups(protocol: str, ledger=None):
    clock = Clock()
    ledger = ledger or MemoryLedger(clock, ttl=1800)
    counters = Counters(0.0)
    factory = lookup_factory(LookupConfig(protocol, "unix:x"), Verdicts(ledger), ledger, counters, clock)
    return factory, ledger, counters.metrics


def test_lookups_are_counted_by_what_the_answer_meant_and_timed():
    factory, ledger, metrics = lookups("policy")
    ledger.record("192.0.2.7", "alice", "pop3")
    assert ask(factory, b"client_address=192.0.2.7\n\n") == b"action=OK\n\n"
    assert ask(factory, b"client_address=192.0.2.8\n\n") == b"action=DUNNO\n\n"
    samples = dict(metrics.samples())
    assert samples['popbridge_lookups_total{answer="authorised",protocol="policy"}'] == 1
    assert samples['popbridge_lookups_total{answer="unknown",protocol="policy"}'] == 1
    assert samples['popbridge_lookup_seconds_count{protocol="policy"}'] == 2


def test_socketmap_and_whoson_answers_are_named_the_same_way():
    factory, ledger, metrics = lookups("socketmap")
    ledger.record("192.0.2.7", "alice", "pop3")
    for query in (b"access 192.0.2.7", b"access unknown", b"nosuchmap 192.0.2.7"):
        ask(factory, b"%d:%s," % (len(query), query))
    whoson, _, whoson_metrics = lookups("whoson", UnavailableLedger(Clock(), ttl=1800))
    assert ask(whoson, b"QUERY 192.0.2.7\r\n\r\n").startswith(b"*")
    samples = dict(metrics.samples())
    assert samples['popbridge_lookups_total{answer="authorised",protocol="socketmap"}'] == 1
    assert samples['popbridge_lookups_total{answer="unknown",protocol="socketmap"}'] == 1
    assert samples['popbridge_lookups_total{answer="refused",protocol="socketmap"}'] == 1
    assert sample(whoson_metrics, 'popbridge_lookups_total{answer="tempfail",protocol="whoson"}') == 1


def test_store_calls_are_timed_and_failures_counted_without_changing_the_result():
    metrics = Metrics()
    ledger = MeasuredLedger(UnavailableLedger(Clock(), ttl=1800), metrics)
    failures: list[object] = []
    ledger.lookup("192.0.2.7").addErrback(failures.append)
    ledger.record("192.0.2.7", "alice", "pop3")
    assert failures and failures[0].check(LedgerUnavailable)
    samples = dict(metrics.samples())
    assert samples['popbridge_store_errors_total{operation="lookup"}'] == 1
    assert samples.get('popbridge_store_errors_total{operation="record"}', 0) == 0
    assert samples['popbridge_store_seconds_count{operation="record"}'] == 1


def test_lookups_answered_at_once_are_timed_as_store_lookups():
    metrics = Metrics()
    ledger = MeasuredLedger(MemoryLedger(Clock(), ttl=1800), metrics)
    assert IImmediateLedger.providedBy(ledger)
    assert ledger.lookup_now("192.0.2.7") == []
    assert dict(metrics.samples())['popbridge_store_seconds_count{operation="lookup"}'] == 1
    assert not IImmediateLedger.providedBy(MeasuredLedger(UnavailableLedger(Clock(), ttl=1800), metrics))


def test_a_store_call_still_pending_is_timed_when_it_fires():
    clock = Clock()
    metrics = Metrics(now=clock.seconds)
    store = MemoryLedger(clock, ttl=1800)
    pending: Deferred[int] = Deferred()
    store.purge = lambda: pending  # a store that writes behind, as SQLite and Redis do
    purged: list[int] = []
    MeasuredLedger(store, metrics).purge().addCallback(purged.append)
    assert sample(metrics, 'popbridge_store_seconds_count{operation="purge"}') == 0
    clock.advance(0.003)
    pending.callback(4)
    assert purged == [4]
    assert sample(metrics, 'popbridge_store_seconds_count{operation="purge"}') == 1
    assert sample(metrics, 'popbridge_store_seconds_sum{operation="purge"}') == 0.003


def test_measured_ledger_passes_the_ttl_through_both_ways():
    store = MemoryLedger(Clock(), ttl=1800)
    ledger = MeasuredLedger(store, Metrics())
    ledger.ttl = 600
    assert store.ttl == 600 and ledger.ttl == 600


def scrape(site) -> DummyRequest:
    request = DummyRequest([b"metrics"])
    resource = site.getResourceFor(request)
    request.render(resource)
    return request


def test_a_scrape_reads_the_live_addresses_from_the_ledger():
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    ledger.record("192.0.2.7", "alice", "pop3")
    ledger.record("192.0.2.7", "bob", "imap4")
    ledger.record("192.0.2.8", "carol", "pop3")
    metrics = Metrics()
    request = scrape(metrics_site(metrics, ledger))
    body = b"".join(request.written)
    assert request.finished
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    assert b"\npopbridge_live_addresses 2.0\n" in body
    assert b"\npopbridge_live_logins 3.0\n" in body


def test_a_scrape_still_answers_when_the_store_is_down():
    class NoLogins(MemoryLedger):
        def logins(self):
            return fail(LedgerUnavailable("store down"))

    metrics = Metrics()
    request = scrape(metrics_site(metrics, MeasuredLedger(NoLogins(Clock(), ttl=1800), metrics)))
    assert request.finished
    assert b'popbridge_store_errors_total{operation="logins"} 1.0' in b"".join(request.written)


def test_only_metrics_is_served():
    request = DummyRequest([b"other"])
    request.render(metrics_site(Metrics(), MemoryLedger(Clock(), ttl=1800)).getResourceFor(request))
    assert request.responseCode == 404


def test_popbridge_stats_reports_the_numbers_metrics_serves():
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    ledger.record("192.0.2.7", "alice", "pop3")
    counters = Counters(0.0)
    counters.metrics.login("pop3", "USER", "succeeded")
    reply = ask(control_factory(ledger, counters, clock), b'{"command": "stats"}\n')
    metrics = json.loads(reply)["metrics"]
    assert metrics[LOGINS_OK] == 1
    assert metrics["popbridge_live_addresses"] == 1
    assert metrics == dict(counters.metrics.samples())


def test_stats_events_are_read_off_the_metrics_and_metrics_gains_no_name():
    metrics = Metrics()
    metrics.connection("pop3")
    metrics.connection("pop3")
    metrics.login("pop3", "USER", "succeeded")
    metrics.login("imap4", "LOGIN", "failed")
    metrics.lookup_answered("policy", "authorised", metrics.now())
    metrics.lookup_answered("policy", "unknown", metrics.now())
    metrics.control_request("stats")
    metrics.not_stored(3)
    assert metrics.events() == {
        "pop3_connections": 2, "login_succeeded": 1, "login_failed": 1, "lookup_policy": 2,
        "control_stats": 1, "ledger_not_stored": 3,
    }
    assert Metrics().events() == {}
    exposed = metrics.exposition().decode()
    assert "popbridge_connections" not in exposed and "popbridge_control_requests" not in exposed


def test_directory_cache_hits_misses_and_ldap_errors_are_counted():
    clock, ldap, metrics = Clock(), MockLdap(), Metrics()
    directory = LdapDirectory(CONFIG, ConnectionPool(ldap.connect, 2), lambda f, *a: maybeDeferred(f, *a), clock, metrics=metrics)
    directory.is_exempt("alice")  # asks LDAP
    directory.is_exempt("alice")  # fresh in the cache
    ldap.down = True
    clock.advance(CONFIG.cache_ttl)
    directory.is_exempt("alice")  # stale: LDAP asked, fails, the stale answer serves
    samples = dict(metrics.samples())
    assert samples['popbridge_ldap_lookups_total{result="miss"}'] == 2
    assert samples['popbridge_ldap_lookups_total{result="hit"}'] == 1
    assert samples['popbridge_ldap_lookups_total{result="error"}'] == 1
