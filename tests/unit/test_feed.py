"""The Dovecot feed's HTTP side: Twisted's own HTTP parser fed over a StringTransport, a
task.Clock, the memory ledger (or a spy); no reactor, no sockets."""

import http.client
import io
import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from popbridge.config import parse_config
from popbridge.daemon.service import build_service
from popbridge.directory import MemoryDirectory
from popbridge.directory.ldap_search import UserFacts
from popbridge.feed import feed_site
from popbridge.ledger import LedgerUnavailable, Login
from popbridge.ledger.memory import MemoryLedger
from popbridge.metrics import Metrics
from popbridge.metrics.counters import Counters
from popbridge.settings import FeedConfig
from popbridge.verdict import Status, Verdict, Verdicts
from popbridge.wire.dovecot_policy import ALLOW_ANSWER, MAX_BODY

KEY = "feed-key-not-for-logs"
PWHASH = "c0ffee"
REPORT = {"device_id": "", "login": "alice", "protocol": "imap", "pwhash": PWHASH, "remote": "192.0.2.7",
          "session_id": "abc", "success": True, "policy_reject": False, "tls": True}
ALLOW = {key: value for key, value in REPORT.items() if key not in ("success", "policy_reject")}


class Feed:
    """One feed listener and its ledger; `post` sends one HTTP request over a fresh connection."""

    def __init__(self, ledger=None, ipv6_prefix: int = 128, **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.counters = Counters(0.0, metrics=Metrics(now=self.clock.seconds))
        self.ledger = ledger or MemoryLedger(self.clock, ttl=1800, ipv6_prefix=ipv6_prefix)
        options = {"api_key": KEY, "ignore_addresses": ("127.0.0.1/32", "::1/128")} | settings
        self.site = feed_site(FeedConfig("dovecot", "tcp:8998", **options), self.ledger, self.counters, self.clock)  # type: ignore[arg-type]
        self.transport = StringTransport()

    def send(self, command: str, body: bytes, headers: dict[str, str] | None = None, chunked: bool = False) -> None:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(self.transport)
        self.channel = protocol
        head = {"Host": "127.0.0.1", "Content-Type": "application/json"}
        head |= {"X-API-Key": f" {KEY}"} if headers is None else headers  # Dovecot keeps the space after the colon
        head |= {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(len(body))}
        lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
        protocol.dataReceived(f"POST /?command={command} HTTP/1.1\r\n{lines}\r\n".encode())
        if chunked:
            for start in range(0, len(body), 8192):
                piece = body[start:start + 8192]
                protocol.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))
            protocol.dataReceived(b"0\r\n\r\n")
        else:
            protocol.dataReceived(body)

    def answer(self) -> tuple[int, bytes]:
        response = http.client.HTTPResponse(_Socket(self.transport.value()))  # type: ignore[arg-type]
        response.begin()
        return response.status, response.read()

    def post(self, command: str, document: object, **options: object) -> tuple[int, bytes]:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.send(command, body, **options)  # type: ignore[arg-type]
        return self.answer()

    def logins(self, address: str) -> list[Login]:
        return self.ledger.lookup_now(address)

    def count(self, command: str, outcome: str) -> float:
        name = f'popbridge_feed_requests_total{{command="{command}",outcome="{outcome}"}}'
        return dict(self.counters.metrics.samples()).get(name, 0.0)


class _Socket:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


class SpyLedger:
    """A store whose writes fire when the test says so."""

    def __init__(self) -> None:
        self.writes: list[Deferred[None]] = []

    def record(self, *args: object, **kwargs: object) -> "Deferred[None]":
        self.writes.append(Deferred())
        return self.writes[-1]


def test_a_successful_report_records_the_login_as_a_proxied_login_does() -> None:
    feed = Feed()
    assert feed.post("report", REPORT | {"remote": "::ffff:192.0.2.7"}) == (200, ALLOW_ANSWER)
    assert feed.logins("192.0.2.7") == [Login("192.0.2.7", "alice", "imap", 1000.0, 0, True)]
    assert feed.count("report", "recorded") == 1


def test_a_fed_login_expires_after_the_ttl() -> None:
    feed = Feed()
    feed.post("report", REPORT)
    feed.clock.advance(1800)
    assert feed.logins("192.0.2.7") == []


def test_ipv6_clients_are_grouped_by_the_ledger_prefix() -> None:
    feed = Feed(ipv6_prefix=64)
    feed.post("report", REPORT | {"remote": "2001:db8::1"})
    assert [login.user for login in feed.logins("2001:db8::2")] == ["alice"]


@pytest.mark.parametrize(
    "change, outcome",
    [
        ({"success": False}, "failed"),
        ({"policy_reject": True}, "policy_reject"),
        ({"success": False, "policy_reject": True}, "policy_reject"),
        ({"protocol": "submission"}, "other_protocol"),
        ({"protocol": "smtp"}, "other_protocol"),
        ({"remote": "127.0.0.1"}, "ignored"),
        ({"remote": "::ffff:127.0.0.1"}, "ignored"),
        ({"remote": ""}, "no_address"),
        ({"login": ""}, "no_user"),
    ],
)
def test_a_report_that_is_not_a_mail_login_records_nothing_and_is_counted(change: dict, outcome: str) -> None:
    feed = Feed()
    assert feed.post("report", REPORT | change) == (200, ALLOW_ANSWER)
    assert feed.ledger.logins().result == []
    assert feed.count("report", outcome) == 1


def test_an_allow_is_answered_at_once_and_records_nothing_by_default() -> None:
    feed = Feed()
    assert feed.post("allow", ALLOW) == (200, ALLOW_ANSWER)
    assert feed.logins("192.0.2.7") == []
    assert feed.count("allow", "answered") == 1


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}, {"Authorization": KEY}])
def test_a_wrong_or_missing_key_gets_401_and_records_nothing(headers: dict[str, str]) -> None:
    feed = Feed()
    assert feed.post("report", REPORT, headers=headers)[0] == 401
    assert feed.logins("192.0.2.7") == []
    assert feed.count("report", "unauthorised") == 1


def test_the_key_is_read_from_the_configured_header() -> None:
    feed = Feed(api_header="X-Policy-Key")
    assert feed.post("report", REPORT, headers={"X-Policy-Key": KEY})[0] == 200
    assert feed.post("report", REPORT, headers={"X-API-Key": KEY})[0] == 401


def test_an_unauthenticated_feed_takes_requests_without_a_key() -> None:
    feed = Feed(api_key="", allow_unauthenticated=True)
    assert feed.post("report", REPORT, headers={})[0] == 200
    assert [login.user for login in feed.logins("192.0.2.7")] == ["alice"]


@pytest.mark.parametrize(
    "command, body, code, reason",
    [
        ("report", b"{", 400, "malformed"),
        ("report", json.dumps({"login": "alice"}).encode(), 400, "missing_field"),
        ("report", json.dumps(REPORT | {"remote": "webmail.example.org"}).encode(), 400, "bad_remote"),
        ("reject", json.dumps(REPORT).encode(), 400, "unknown_command"),
        ("report", b"{" + b" " * MAX_BODY + b"}", 413, "too_large"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_reason_and_records_nothing(command: str, body: bytes, code: int, reason: str) -> None:
    feed = Feed()
    assert feed.post(command, body) == (code, f"{reason}\n".encode())
    assert feed.ledger.logins().result == []


def test_a_chunked_body_over_the_limit_is_dropped_not_kept() -> None:
    feed = Feed()
    feed.send("report", json.dumps(REPORT).encode()[:-1] + b"," + b" " * (4 * MAX_BODY) + b"}", chunked=True)
    assert feed.answer()[0] == 413


def test_a_chunked_report_records_like_any_other() -> None:
    feed = Feed()
    feed.send("report", json.dumps(REPORT).encode(), chunked=True)
    assert feed.answer()[0] == 200 and feed.logins("192.0.2.7")


def test_a_refusal_is_logged_at_most_once_a_minute_per_reason() -> None:
    feed = Feed()
    with capturedLogs() as events:
        for _ in range(3):
            feed.post("report", b"{")
        feed.post("report", REPORT, headers={})
        feed.clock.advance(60)
        feed.post("report", b"{")
    lines = [formatEvent(event) for event in events]
    assert sum("(malformed:" in line for line in lines) == 2
    assert sum("(unauthorised:" in line for line in lines) == 1
    assert feed.count("report", "malformed") == 4


def test_neither_the_key_nor_the_pwhash_reaches_the_log() -> None:
    feed = Feed()
    with capturedLogs() as events:
        feed.post("report", REPORT)
        feed.post("report", REPORT, headers={"X-API-Key": KEY[:-1]})
        feed.post("report", json.dumps(REPORT)[:-1].encode())
        feed.post("allow", ALLOW | {"remote": "not-an-address"})
    text = "\n".join(formatEvent(event) + repr(event) for event in events)
    assert "login learned from Dovecot" in text
    assert KEY not in text and PWHASH not in text


def test_only_post_is_answered() -> None:
    feed = Feed()
    protocol = feed.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(feed.transport)
    protocol.dataReceived(b"GET /?command=report HTTP/1.1\r\nHost: x\r\n\r\n")
    assert feed.answer()[0] == 405


def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    feed = Feed(timeout=60.0)
    feed.post("report", REPORT)
    assert not feed.transport.disconnecting
    feed.clock.advance(60)
    assert feed.transport.disconnecting


def test_a_report_is_answered_after_the_store_has_written() -> None:
    ledger = SpyLedger()
    feed = Feed(ledger=ledger)
    feed.send("report", json.dumps(REPORT).encode())
    assert feed.transport.value() == b""
    ledger.writes[0].callback(None)
    assert feed.answer() == (200, ALLOW_ANSWER)


def test_a_report_the_store_cannot_write_gets_503() -> None:
    feed = Feed()
    feed.ledger.record = lambda *args, **kwargs: fail(LedgerUnavailable("down"))  # type: ignore[method-assign]
    with capturedLogs():
        assert feed.post("report", REPORT)[0] == 503
    assert feed.count("report", "store_error") == 1


# -- record_on = "after_auth" -------------------------------------------------------------


def armed(feed: Feed) -> Feed:
    """The first report proves Dovecot reports, so a wrong password would show as a failed one."""
    feed.post("report", REPORT | {"remote": "", "success": False})
    return feed


def test_after_auth_records_nothing_on_allow_until_a_report_has_been_seen() -> None:
    feed = Feed(record_on="after_auth")
    feed.post("allow", ALLOW)
    assert feed.logins("192.0.2.7") == []
    armed(feed).post("allow", ALLOW)
    assert [login.user for login in feed.logins("192.0.2.7")] == ["alice"]


def test_after_auth_answers_allow_only_once_the_login_is_stored() -> None:
    ledger = SpyLedger()
    feed = armed(Feed(ledger=ledger, record_on="after_auth"))
    feed.send("allow", json.dumps(ALLOW).encode())
    assert feed.transport.value() == b""
    ledger.writes[-1].callback(None)
    assert feed.answer() == (200, ALLOW_ANSWER)


def test_after_auth_still_allows_when_the_store_fails() -> None:
    feed = armed(Feed(record_on="after_auth"))
    feed.ledger.record = lambda *args, **kwargs: fail(LedgerUnavailable("down"))  # type: ignore[method-assign]
    with capturedLogs():
        assert feed.post("allow", ALLOW) == (200, ALLOW_ANSWER)


def test_an_allow_then_a_failed_report_revokes_the_address_and_stops_recording_on_allow() -> None:
    feed = armed(Feed(record_on="after_auth"))
    with capturedLogs() as events:
        feed.post("allow", ALLOW)  # sent before the password check (auth_policy_check_before_auth = yes)
        feed.post("report", REPORT | {"success": False})
    assert feed.logins("192.0.2.7") == []
    assert any("auth_policy_check_before_auth" in formatEvent(event) for event in events)
    feed.post("allow", ALLOW | {"remote": "192.0.2.8"})
    assert feed.logins("192.0.2.8") == []
    feed.post("report", REPORT | {"remote": "192.0.2.8"})
    assert [login.user for login in feed.logins("192.0.2.8")] == ["alice"]


def test_a_failed_report_for_another_login_does_not_trip_the_guard() -> None:
    feed = armed(Feed(record_on="after_auth"))
    feed.post("allow", ALLOW)
    feed.post("report", REPORT | {"login": "bob", "success": False})
    feed.clock.advance(31)
    feed.post("report", REPORT | {"success": False})  # the allow is older than the guard's window
    feed.post("allow", ALLOW | {"remote": "192.0.2.9"})
    assert [login.user for login in feed.logins("192.0.2.9")] == ["alice"]


def test_a_wrong_password_after_a_reported_success_does_not_trip_the_guard() -> None:
    feed = armed(Feed(record_on="after_auth"))
    feed.post("allow", ALLOW)  # after the password check (auth_policy_check_before_auth = no)
    feed.post("report", REPORT)
    feed.post("report", REPORT | {"success": False})  # another device behind the same address mistypes
    assert [login.user for login in feed.logins("192.0.2.7")] == ["alice"]
    feed.post("allow", ALLOW | {"remote": "192.0.2.9"})
    assert [login.user for login in feed.logins("192.0.2.9")] == ["alice"]


def test_a_daemon_with_only_a_feed_and_a_lookup_listens_for_both() -> None:
    document = {
        "ledger": {"store": "memory"},
        "feed": [{"protocol": "dovecot", "listen": "tcp:port=8998:interface=127.0.0.1", "api_key": KEY}],
        "lookup": [{"protocol": "policy", "listen": "unix:address=/tmp/pb-feed-policy:mode=666"}],
    }
    reactor = MemoryReactorClock()
    service = build_service(parse_config(document, "t.toml"), reactor)
    with capturedLogs() as events:
        service.privilegedStartService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(8998, "127.0.0.1")]
    assert any("listening for Dovecot auth-policy requests" in formatEvent(event) for event in events)


def test_a_request_dovecot_gave_up_on_is_recorded_and_not_answered() -> None:
    ledger = SpyLedger()
    feed = Feed(ledger=ledger)
    feed.send("report", json.dumps(REPORT).encode())
    feed.channel.connectionLost(Failure(ConnectionDone()))
    ledger.writes[0].callback(None)
    errors: list[Failure] = []
    ledger.writes[0].addErrback(errors.append)
    assert feed.transport.value() == b"" and errors == []


def test_a_fed_login_of_an_exempt_user_makes_its_address_exempt() -> None:
    feed = Feed()
    feed.post("report", REPORT)
    directory = MemoryDirectory({"alice": UserFacts(exempt=True)})
    answer: list[Verdict] = []
    Deferred.fromCoroutine(Verdicts(feed.ledger, directory).for_address("192.0.2.7", exempt=True)).addCallback(answer.append)
    assert answer[0].status is Status.EXEMPT and answer[0].user == "alice"
