"""The Redis store against a real redis-server: the shared ledger behaviour suite, then what
only a shared store does (several nodes, leases on open sessions, outages)."""

import poplib
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.python.threadpool import ThreadPool

from popbridge.ledger import LedgerUnavailable, new_session
from popbridge.ledger.redis import RedisLedger, redis_client
from popbridge.ledger.sqlite import SqliteLedger
from popbridge.settings import LookupConfig
from tests.doubles import direct_call, result
from tests.ledger_behaviour import TTL, LedgerBehaviour, epoch_clock, users

from .conftest import require, started
from .servers import (
    Popbridge,
    Redis,
    RedisSentinel,
    ServerError,
    policy_action,
    pop3_login,
    popbridge_command,
    wait_until,
)


def node(server: Redis, clock: Clock, ttl: float = TTL, timeout: float = 2.0) -> RedisLedger:
    """One popbridge node's store, run synchronously on the test's clock."""
    ledger = RedisLedger(redis_client(server.url, "", timeout), clock, ttl, 64, run_blocking=direct_call, timeout=timeout)
    ledger.start_refreshing()
    return ledger


@pytest.fixture
def clock() -> Clock:
    return epoch_clock()


@pytest.fixture
def ledger(redis_server: Redis, clock: Clock) -> Iterator[RedisLedger]:
    redis_client(redis_server.url, "", 2.0).flushdb()
    store = node(redis_server, clock)
    yield store
    store.stop_refreshing()


class TestRedisLedger(LedgerBehaviour):
    """Every test of the shared ledger suite, against one node's Redis store."""


@pytest.fixture
def nodes(redis_server: Redis, clock: Clock) -> Iterator[tuple[RedisLedger, RedisLedger]]:
    redis_client(redis_server.url, "", 2.0).flushdb()
    a, b = node(redis_server, clock), node(redis_server, clock)
    yield a, b
    a.stop_refreshing()
    b.stop_refreshing()


def test_a_login_on_one_node_is_seen_by_another(nodes):
    a, b = nodes
    result(a.record("192.0.2.7", "alice", "pop3"))
    assert users(b, "192.0.2.7") == ["alice"]


def test_a_revoke_on_one_node_is_seen_by_every_node(nodes):
    a, b = nodes
    result(a.record("192.0.2.7", "alice", "pop3", new_session()))
    assert result(b.revoke("192.0.2.7")) == 1
    assert users(a, "192.0.2.7") == []


def test_a_revoked_session_is_not_brought_back_by_its_node(nodes, clock):
    a, b = nodes
    session = new_session()
    result(a.record("192.0.2.7", "alice", "imap4", session))
    result(b.revoke("192.0.2.7"))
    clock.advance(a.refresh)  # a's lease refresh finds the login gone
    result(a.end_session("192.0.2.7", "alice", "imap4", session))
    assert users(b, "192.0.2.7") == []


def test_a_session_from_before_a_revoke_on_another_node_ending_leaves_a_later_session_open(nodes, clock):
    """Defect 2 across nodes: a's session, a revoke on b, a new session on a before a's lease
    refresh noticed the revoke, then the old session ends: the new one still holds."""
    a, b = nodes
    old, new = new_session(), new_session()
    result(a.record("192.0.2.7", "alice", "imap4", old))
    result(b.revoke("192.0.2.7"))
    result(a.record("192.0.2.7", "alice", "imap4", new))
    result(a.end_session("192.0.2.7", "alice", "imap4", old))
    for _ in range(3):
        clock.advance(TTL)
        assert [(l.user, l.open_sessions) for l in result(b.lookup("192.0.2.7"))] == [("alice", 1)]


def test_a_session_held_by_one_node_keeps_the_address_live_for_all(nodes, clock):
    a, b = nodes
    result(a.record("192.0.2.7", "alice", "imap4", new_session()))
    for _ in range(200):
        clock.advance(a.refresh)
    [login] = result(b.lookup("192.0.2.7"))
    assert login.expires(b.ttl) is None


def test_a_crashed_nodes_sessions_end_ttl_after_it_was_last_seen(redis_server, clock):
    redis_client(redis_server.url, "", 2.0).flushdb()
    crashed, survivor = node(redis_server, clock), node(redis_server, clock)
    result(crashed.record("192.0.2.7", "alice", "imap4", new_session()))
    clock.advance(crashed.refresh)
    crashed.stop_refreshing()  # the node dies holding the session
    last_seen = clock.seconds()
    clock.advance(TTL - 1)
    assert users(survivor, "192.0.2.7") == ["alice"]
    clock.advance(1)
    assert clock.seconds() == last_seen + TTL and users(survivor, "192.0.2.7") == []
    survivor.stop_refreshing()


@pytest.mark.wallclock
def test_redis_expires_the_address_itself(redis_server):
    """Real time here: the Redis TTL, not only popbridge's reading of `when`, ends a login."""
    redis_client(redis_server.url, "", 2.0).flushdb()
    store = RedisLedger(redis_client(redis_server.url, "", 2.0), reactor, 1, 128, run_blocking=direct_call)
    result(store.record("192.0.2.7", "alice", "pop3"))
    raw = redis_client(redis_server.url, "", 2.0)
    assert 0 < raw.pttl("popbridge:login:192.0.2.7") <= 2000
    deadline = time.monotonic() + 5
    while raw.exists("popbridge:login:192.0.2.7") and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for time to pass: the TTL is what is tested
    assert not raw.exists("popbridge:login:192.0.2.7")


def test_a_dead_redis_is_unavailable_not_unknown(own_redis, clock):
    store = node(own_redis, clock)
    own_redis.kill()
    with pytest.raises(LedgerUnavailable):
        result(store.lookup("192.0.2.7"))
    with pytest.raises(LedgerUnavailable):
        result(store.record("192.0.2.7", "alice", "pop3"))
    store.stop_refreshing()


@pytest.mark.wallclock
@pytest_twisted.ensureDeferred
async def test_a_hung_redis_answers_unavailable_within_the_timeout_then_recovers(own_redis):
    pool = ThreadPool(1, 4, name="test-redis")
    pool.start()
    try:
        store = RedisLedger(
            redis_client(own_redis.url, "", 0.3), reactor, TTL, 128,
            run_blocking=partial(deferToThreadPool, reactor, pool), timeout=0.3,
        )
        await store.record("192.0.2.7", "alice", "pop3")
        own_redis.pause()
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await store.lookup("192.0.2.7")
        assert time.monotonic() - started < 1.0
        own_redis.resume()
        assert [login.user for login in await store.lookup("192.0.2.7")] == ["alice"]
        own_redis.kill()
        with pytest.raises(LedgerUnavailable):
            await store.lookup("192.0.2.7")
        await deferToThread(own_redis.start)
        assert [login.user for login in await store.lookup("192.0.2.7")] == ["alice"]  # reconnected; AOF kept it
    finally:
        await deferToThread(pool.stop)


def test_migrate_store_moves_live_logins_from_sqlite_to_redis_and_back(redis_server, tmp_path):
    redis_client(redis_server.url, "", 2.0).flushdb()
    source = SqliteLedger(tmp_path / "a.sqlite3", reactor, TTL, 128, run_blocking=direct_call)
    source.open()
    result(source.record("192.0.2.7", "alice", "pop3", tls=True))
    result(source.record("192.0.2.8", "bob", "imap4", new_session()))  # open: arrives as ended now
    before = result(source.logins())
    source.close()

    def migrate(*stores: str) -> str:
        done = subprocess.run([*popbridge_command(), "migrate-store", *stores], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "copied 2 live logins" in migrate(f"sqlite:{tmp_path / 'a.sqlite3'}", redis_server.url)
    shared = RedisLedger(redis_client(redis_server.url, "", 2.0), reactor, TTL, 128, run_blocking=direct_call)
    assert [(l.client, l.user, l.tls) for l in result(shared.logins())] == [(l.client, l.user, l.tls) for l in before]
    assert "copied 2 live logins" in migrate(redis_server.url, f"sqlite:{tmp_path / 'b.sqlite3'}")
    back = SqliteLedger(tmp_path / "b.sqlite3", reactor, TTL, 128, run_blocking=direct_call)
    back.open()
    assert result(back.lookup("192.0.2.7")) == result(shared.lookup("192.0.2.7"))
    back.close()


def test_a_session_whose_login_was_not_stored_holds_no_lease(own_redis, clock):
    store = node(own_redis, clock)
    result(store.record("192.0.2.7", "alice", "imap4"))
    own_redis.kill()
    with pytest.raises(LedgerUnavailable):
        result(store.record("192.0.2.7", "alice", "imap4", new_session()))
    own_redis.start()
    clock.advance(TTL)  # had the failed session kept a lease, the refresh would keep alice live
    assert users(store, "192.0.2.7") == []
    store.stop_refreshing()


# ---------------------------------------------------------------- Redis Sentinel failover


@pytest.fixture
def sentinel_group() -> Iterator[tuple[Redis, Redis, list[RedisSentinel]]]:
    """A master, its replica and three sentinels (quorum 2, master down after 1 s), all on
    loopback, started once the sentinels know each other and the replica."""
    require("redis-server", "redis-sentinel", root=False)
    started: list[Redis | RedisSentinel] = []
    try:
        master = Redis().start()
        started.append(master)
        replica = Redis(replica_of=master).start()
        started.append(replica)
        sentinels = [RedisSentinel(master).start() for _ in range(3)]
        started.extend(sentinels)
        wait_until(lambda: all(_knows_everyone(s) for s in sentinels), "sentinels to find each other and the replica", timeout=30)
    except ServerError as e:
        for server in started:
            server.cleanup()
        pytest.fail(f"the sentinel group did not start: {e}", pytrace=False)
    yield master, replica, sentinels
    for server in started:
        server.cleanup()


@pytest.fixture
def daemon_on_sentinels(dovecot, sentinel_group) -> Iterator[Popbridge]:
    """The daemon in front of Dovecot with its ledger behind the sentinels."""
    sentinels = sentinel_group[2]
    store = f"redis+sentinel://{','.join(f'{s.host}:{s.port}' for s in sentinels)}/{sentinels[0].service}/0"
    daemon = started(Popbridge(backend_port=dovecot.port, store=store))
    yield daemon
    daemon.stop()
    print(f"--- popbridge output:\n{daemon.output()[-4000:]}")
    daemon.cleanup()


TEMPFAIL = "action=" + LookupConfig("policy", "").tempfail_action  # what the daemon answers while Redis cannot


def _knows_everyone(sentinel: RedisSentinel) -> bool:
    state = sentinel.master_state()
    return state is not None and state["num-other-sentinels"] == 2 and state["num-slaves"] == 1


@pytest.mark.wallclock
def test_a_failover_costs_tempfails_never_a_false_yes_then_service_resumes_without_a_restart(
    sentinel_group, daemon_on_sentinels
):
    """Issue 16, Redis failover: kill the master under a running daemon. Lookups answer tempfail
    (never OK for an address without a login) until the sentinels promote the replica; then
    the login made before the kill is there again and new logins are recorded. Prints the
    timeline (seconds after the kill)."""
    master, replica, sentinels = sentinel_group
    daemon = daemon_on_sentinels
    pop3_login(daemon.port, "127.0.0.71", "alice", "alice-pw")
    key = "popbridge:login:127.0.0.71"
    replica_client = redis_client(replica.url, "", 2.0)
    wait_until(lambda: replica_client.exists(key), "the login to reach the replica")
    assert policy_action(daemon.policy_socket, "127.0.0.71") == "action=OK"

    master.kill()
    killed = time.monotonic()
    timeline: dict[str, float] = {}
    answers: list[tuple[float, str, str]] = []
    refused_during_outage = False
    while time.monotonic() - killed < 60:
        now = time.monotonic() - killed
        known, unknown = policy_action(daemon.policy_socket, "127.0.0.71"), policy_action(daemon.policy_socket, "127.0.0.72")
        answers.append((now, known, unknown))
        if known == TEMPFAIL:
            timeline.setdefault("first tempfail", now)
            if not refused_during_outage:
                with pytest.raises(poplib.error_proto):  # the login cannot be recorded: not released
                    pop3_login(daemon.port, "127.0.0.74", "bob", "bob-pw")
                refused_during_outage = True
        elif known == "action=OK" and "first tempfail" in timeline:
            timeline["answers again"] = now
            break
    assert "answers again" in timeline, answers[-5:]
    assert {unknown for _, _, unknown in answers} <= {"action=DUNNO", TEMPFAIL}
    assert {known for _, known, _ in answers} <= {"action=OK", TEMPFAIL}
    wait_until(lambda: _logs_in(daemon, "127.0.0.73"), "a new login after the failover", timeout=30)
    timeline["new login recorded"] = time.monotonic() - killed
    assert policy_action(daemon.policy_socket, "127.0.0.73") == "action=OK"
    assert policy_action(daemon.policy_socket, "127.0.0.74") == "action=DUNNO"  # refused during the outage: not recorded
    assert sentinels[0].master_state()["port"] == replica.port  # type: ignore[index]
    assert daemon.process is not None and daemon.process.poll() is None  # the same daemon, never restarted
    print("failover timeline (s after SIGKILL of the master):", {k: round(v, 2) for k, v in timeline.items()})


def _logs_in(daemon: Popbridge, source: str) -> bool:
    try:
        pop3_login(daemon.port, source, "carol", "carol-pw")
    except poplib.error_proto:
        return False
    return True


def test_a_lease_renewal_that_overtakes_the_login_write_does_not_drop_the_session(redis_server, clock):
    """The pool runs calls in any order: a renewal sent before the login's write lands finds no
    lease. The session must still be renewed afterwards."""
    redis_client(redis_server.url, "", 2.0).flushdb()
    queued: list[tuple[Deferred[Any], Callable[[], Any]]] = []

    def later(function: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        queued.append((d, function))
        return d

    store = RedisLedger(redis_client(redis_server.url, "", 2.0), clock, TTL, 64, run_blocking=later, timeout=60)
    store.start_refreshing()
    store.record("192.0.2.7", "alice", "imap4", new_session())
    clock.advance(store.refresh)  # a renewal is due while the write is still queued
    for d, function in reversed(queued):  # the renewal (if any was sent) runs first
        d.callback(function())
    queued.clear()
    for _ in range(3 * int(TTL / store.refresh)):
        clock.advance(store.refresh)
        for d, function in queued:
            d.callback(function())
        queued.clear()
    reader = node(redis_server, clock)
    assert [(l.user, l.open_sessions) for l in result(reader.lookup("192.0.2.7"))] == [("alice", 1)]
    store.stop_refreshing()
    reader.stop_refreshing()
