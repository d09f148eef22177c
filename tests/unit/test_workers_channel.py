"""The worker <-> main process channel, both ends connected in memory (iosim): logins are
answered only once the main ledger stored them, failures fail closed, leases of a worker that
is gone are ended, and the worker's log lines and counters reach the main process."""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from popbridge.daemon.workers.channel import MainChannel, Start, WorkerChannel
from popbridge.daemon.workers.remote import RemoteDirectory, RemoteLedger
from popbridge.directory import FALLBACK, MemoryDirectory, UserFacts
from popbridge.ledger import ILoginRecorder, LedgerUnavailable, SessionId
from popbridge.ledger.memory import MemoryLedger
from popbridge.metrics.counters import Counters
from zope.interface.verify import verifyObject

from .test_proxy_session import Harness


class HeldLedger(MemoryLedger):
    """Stores only when the test says so, and notes every end_session."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, ttl=1800)
        self.pending: list[Deferred] = []
        self.ended: list[tuple[str, str, str]] = []

    def record(self, *args, **kwargs):
        held: Deferred = Deferred()
        self.pending.append(held)
        return held.addCallback(lambda _: MemoryLedger.record(self, *args, **kwargs))

    def end_session(self, address, user, protocol, session):
        self.ended.append((address, user, protocol))
        return MemoryLedger.end_session(self, address, user, protocol, session)


class Pair:
    def __init__(self, ledger=None, directory=None) -> None:
        self.clock = Clock()
        self.ledger = ledger or MemoryLedger(self.clock, ttl=1800)
        self.counters = Counters(0.0)
        self.started: list[bytes] = []
        self.lost: list[Failure] = []

        def start(settings: bytes) -> Deferred:
            self.started.append(settings)
            return succeed(None)

        self.worker, self.main, self.pump = connectedServerAndClient(
            lambda: MainChannel("worker 1", self.ledger, directory),
            lambda: WorkerChannel(start, self.counters, self.lost.append),
        )
        self.remote = RemoteLedger(self.worker)

    def outcome(self, d: Deferred) -> list[object]:
        box: list[object] = []
        d.addBoth(box.append)
        self.pump.flush()
        return box

    def users(self, address: str) -> list[str]:
        box: list = []
        self.ledger.lookup(address).addCallback(box.append)
        return [login.user for login in box[0]]


def test_the_remote_ledger_is_what_a_proxy_needs():
    assert verifyObject(ILoginRecorder, Pair().remote)


def test_a_login_is_answered_only_once_the_main_ledger_has_stored_it():
    pair = Pair(ledger=HeldLedger(Clock()))
    answered = pair.outcome(pair.remote.record("127.0.0.9", "alice", "pop3", SessionId(1), tls=True))
    assert answered == [] and pair.users("127.0.0.9") == []
    pair.ledger.pending[0].callback(None)
    pair.pump.flush()
    [login] = answered
    assert (login.client, login.user, login.protocol, login.open_sessions, login.tls) == ("127.0.0.9", "alice", "pop3", 1, True)
    assert pair.users("127.0.0.9") == ["alice"]


def test_a_non_ip_address_is_stored_as_nothing():
    pair = Pair()
    assert pair.outcome(pair.remote.record("not-an-address", "alice", "pop3")) == [None]


def test_a_store_failure_in_the_main_process_fails_the_workers_record():
    class DownLedger(MemoryLedger):
        def record(self, *args, **kwargs):
            return fail(LedgerUnavailable("sqlite: disk I/O error"))

    pair = Pair(ledger=DownLedger(Clock(), ttl=1800))
    [failure] = pair.outcome(pair.remote.record("127.0.0.9", "alice", "pop3", SessionId(1)))
    assert failure.check(LedgerUnavailable)


def test_a_record_fails_at_once_when_the_channel_is_gone():
    pair = Pair()
    pair.worker.transport.loseConnection()
    pair.pump.flush()
    [failure] = pair.outcome(pair.remote.record("127.0.0.9", "alice", "pop3", SessionId(1)))
    assert isinstance(failure, Failure)
    assert pair.users("127.0.0.9") == []


def test_a_record_in_flight_fails_when_the_channel_closes():
    pair = Pair(ledger=HeldLedger(Clock()))
    answered = pair.outcome(pair.remote.record("127.0.0.9", "alice", "pop3", SessionId(1)))
    pair.worker.connectionLost(Failure(ConnectionLost()))
    [failure] = answered
    assert isinstance(failure, Failure)


def test_the_open_sessions_of_a_worker_that_is_gone_are_ended_by_the_main_process():
    pair = Pair(ledger=HeldLedger(Clock()))
    for session, address in enumerate(("127.0.0.9", "127.0.0.9", "127.0.0.10"), 1):
        pair.remote.record(address, "alice", "pop3", SessionId(session))
        pair.pump.flush()
        pair.ledger.pending[-1].callback(None)
        pair.pump.flush()
    pair.outcome(pair.remote.end_session("127.0.0.9", "alice", "pop3", SessionId(1)))
    assert pair.ledger.ended == [("127.0.0.9", "alice", "pop3")]
    pair.main.connectionLost(Failure(ConnectionLost()))
    assert sorted(pair.ledger.ended) == [("127.0.0.10", "alice", "pop3"), ("127.0.0.9", "alice", "pop3"), ("127.0.0.9", "alice", "pop3")]


def test_two_workers_sessions_with_the_same_id_are_counted_apart():
    shared = MemoryLedger(Clock(), ttl=1800)
    first, second = Pair(ledger=shared), Pair(ledger=shared)
    for pair in (first, second):
        pair.outcome(pair.remote.record("127.0.0.9", "alice", "pop3", SessionId(1)))
    first.outcome(first.remote.end_session("127.0.0.9", "alice", "pop3", SessionId(1)))
    first.pump.flush()
    [login] = shared.lookup_now("127.0.0.9")
    assert login.open_sessions == 1  # the second worker's session is still open


def test_a_session_stored_after_its_worker_died_is_ended_at_once():
    pair = Pair(ledger=HeldLedger(Clock()))
    pair.remote.record("127.0.0.9", "alice", "pop3", SessionId(1))
    pair.pump.flush()
    pair.main.connectionLost(Failure(ConnectionLost()))
    pair.ledger.pending[0].callback(None)
    assert pair.ledger.ended == [("127.0.0.9", "alice", "pop3")]


def test_a_proxy_on_a_worker_tells_its_client_to_retry_when_the_main_process_is_gone():
    pair = Pair()
    pair.worker.transport.loseConnection()
    pair.pump.flush()
    h = Harness(ledger=pair.remote)
    h.connect_backend()
    h.client.clear()
    h.proxy.dataReceived(b"USER alice\r\nPASS secret\r\n")
    h.leg.dataReceived(b"+OK\r\n")
    with capturedLogs():
        h.leg.dataReceived(b"+OK Logged in.\r\n")
    assert h.client.value() == b"+OK\r\n-ERR [SYS/TEMP] popbridge: login could not be recorded, try again later\r\n"
    assert h.client.disconnecting


def test_directory_facts_come_from_the_main_process():
    pair = Pair(directory=MemoryDirectory({"alice": UserFacts(exempt=True, backend="mail2:110")}))
    assert pair.outcome(RemoteDirectory(pair.worker).facts("alice")) == [UserFacts(True, "mail2:110")]
    assert pair.outcome(RemoteDirectory(pair.worker).backend_for("bob")) == [None]


def test_directory_look_ups_fall_back_when_the_main_process_is_gone():
    pair = Pair(directory=MemoryDirectory({"alice": UserFacts(backend="mail2:110")}))
    pair.worker.transport.loseConnection()
    pair.pump.flush()
    with capturedLogs():
        assert pair.outcome(RemoteDirectory(pair.worker).facts("alice")) == [FALLBACK]


def test_worker_log_lines_are_written_by_the_main_process_as_that_worker():
    pair = Pair()
    with capturedLogs() as events:
        pair.worker.send_log("warn", "pop3 client 127.0.0.9 dropped")
        pair.worker.send_log("no-such-level", "still written")
        pair.pump.flush()
    assert [(e["log_system"], e["log_level"].name, e["text"]) for e in events if "text" in e] == [
        ("worker 1", "warn", "pop3 client 127.0.0.9 dropped"),
        ("worker 1", "warn", "still written"),
    ]


def test_the_worker_reports_its_events_and_metrics():
    pair = Pair()
    pair.counters.count("login_succeeded")
    pair.counters.metrics.login("pop3", "USER", "succeeded")
    [(events, metrics)] = pair.outcome(pair.main.report())
    assert events == {"login_succeeded": 1}
    assert 'popbridge_logins_total{method="USER",outcome="succeeded",protocol="pop3"} 1.0' in metrics


def test_start_hands_the_settings_to_the_worker():
    pair = Pair()
    assert pair.outcome(pair.main.callRemote(Start, settings=b"pickled")) == [{}]
    assert pair.started == [b"pickled"]


def test_a_worker_learns_that_the_main_process_is_gone():
    pair = Pair()
    pair.main.transport.loseConnection()
    pair.pump.flush()
    assert len(pair.lost) == 1

