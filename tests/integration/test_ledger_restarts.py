"""The durable and shared stores with the real daemon: SQLite across SIGTERM and SIGKILL
restarts, and two daemons sharing one redis-server."""

from __future__ import annotations

import time

import pytest

from .servers import BoundPOP3, Dovecot, Popbridge, Redis, ServerError, policy_action, pop3_login, wait_until

POLICY_TEMPFAIL = "action=DEFER 4.3.0"


def started(daemon: Popbridge) -> Popbridge:
    try:
        return daemon.start()
    except ServerError as e:
        pytest.fail(f"popbridge did not start: {e}", pytrace=False)


def ended_session(daemon: Popbridge, address: str) -> dict[str, object]:
    """The single login on `address` once its proxy session has closed (expires is set)."""
    found: list[dict[str, object]] = []

    def closed() -> bool:
        found[:] = daemon.logins(address)
        return len(found) == 1 and found[0]["expires"] is not None

    wait_until(closed, f"the session of {address} to end", timeout=10)
    return found[0]


def killed(daemon: Popbridge) -> None:
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait(timeout=10)


# ---------------------------------------------------------------- SQLite


def sqlite_daemon(dovecot: Dovecot, daemons: list[Popbridge]) -> Popbridge:
    daemon = Popbridge(backend_port=dovecot.port, store="sqlite:ledger.sqlite3")  # in the daemon's directory
    daemons.append(daemon)
    return started(daemon)


def test_sqlite_logins_survive_a_sigterm_restart_with_user_and_expiry(dovecot, daemons):
    daemon = sqlite_daemon(dovecot, daemons)
    pop3_login(daemon.port, "127.0.0.21", "alice", "alice-pw")
    before = ended_session(daemon, "127.0.0.21")
    daemon.stop()  # SIGTERM
    started(daemon)
    assert daemon.logins("127.0.0.21") == [before]
    assert (before["user"], before["protocol"]) == ("alice", "pop3")


def test_sqlite_logins_survive_a_sigkill_restart_with_user_and_expiry(dovecot, daemons):
    daemon = sqlite_daemon(dovecot, daemons)
    pop3_login(daemon.port, "127.0.0.22", "bob", "bob-pw")
    before = ended_session(daemon, "127.0.0.22")
    killed(daemon)
    started(daemon)
    assert daemon.logins("127.0.0.22") == [before]


def test_a_login_whose_success_reached_the_client_survives_any_sigkill(dovecot, daemons):
    """Kill right after +OK (session open), after QUIT, and after the session was seen closed,
    over and over: every login the client was told about is there after the restart."""
    daemon = sqlite_daemon(dovecot, daemons)
    told: list[str] = []
    for n in range(6):
        source = f"127.0.0.{30 + n}"
        pop = BoundPOP3("127.0.0.1", daemon.port, source)
        pop.user("carol")
        assert pop.pass_("carol-pw").startswith(b"+OK")
        told.append(source)
        if n % 3 >= 1:
            pop.quit()
        if n % 3 == 2:
            ended_session(daemon, source)
        killed(daemon)
        pop.close()
        started(daemon)
        for address in told:
            assert [login["user"] for login in daemon.logins(address)] == ["carol"], (n, address)


def test_a_sqlite_file_held_by_another_daemon_stops_the_second_one(dovecot, daemons, tmp_path):
    first = sqlite_daemon(dovecot, daemons)
    shared = first.directory / "ledger.sqlite3"
    second = Popbridge(backend_port=dovecot.port, store=f"sqlite:{shared}")
    daemons.append(second)
    with pytest.raises(ServerError, match="locked by another process"):
        second.start()


# ---------------------------------------------------------------- Redis


def two_nodes(dovecot: Dovecot, redis: Redis, daemons: list[Popbridge], ttl: float) -> tuple[Popbridge, Popbridge]:
    """Two daemons, A and B, sharing `redis`."""
    a = Popbridge(backend_port=dovecot.port, ttl=ttl, store=redis.url)
    b = Popbridge(backend_port=dovecot.port, ttl=ttl, store=redis.url)
    daemons.extend([a, b])
    return started(a), started(b)


@pytest.fixture
def pair(dovecot: Dovecot, own_redis: Redis, daemons: list[Popbridge]) -> tuple[Popbridge, Popbridge]:
    return two_nodes(dovecot, own_redis, daemons, ttl=1800)


def test_a_login_through_one_node_authorises_on_the_other_until_revoked(pair):
    a, b = pair
    pop3_login(a.port, "127.0.0.41", "bob", "bob-pw")
    assert policy_action(b.policy_socket, "127.0.0.41") == "action=OK"
    assert b.cli("revoke", "127.0.0.41").returncode == 0
    assert policy_action(a.policy_socket, "127.0.0.41") == "action=DUNNO"
    assert policy_action(b.policy_socket, "127.0.0.41") == "action=DUNNO"


def test_the_ttl_holds_on_both_nodes(dovecot, own_redis, daemons):
    a, b = two_nodes(dovecot, own_redis, daemons, ttl=3)
    pop3_login(b.port, "127.0.0.42", "alice", "alice-pw")
    ended = ended_session(b, "127.0.0.42")
    assert policy_action(a.policy_socket, "127.0.0.42") == "action=OK"
    time.sleep(max(0.0, float(ended["expires"]) - time.time()) + 0.2)  # waiting for the ttl to pass
    assert policy_action(a.policy_socket, "127.0.0.42") == "action=DUNNO"
    assert policy_action(b.policy_socket, "127.0.0.42") == "action=DUNNO"


@pytest.mark.wallclock
def test_a_dead_redis_gives_prompt_tempfails_on_both_nodes_then_recovery(pair, own_redis):
    a, b = pair
    pop3_login(a.port, "127.0.0.43", "carol", "carol-pw")
    for outage in (own_redis.kill, own_redis.pause):
        outage()
        for node in (a, b):
            began = time.monotonic()
            assert policy_action(node.policy_socket, "127.0.0.43").startswith(POLICY_TEMPFAIL)
            assert time.monotonic() - began < 1.0, outage.__name__
        if outage == own_redis.pause:
            own_redis.resume()
        else:
            own_redis.start()  # same port, same data (appendonly)
        for node in (a, b):  # reconnects by itself
            wait_until(lambda node=node: policy_action(node.policy_socket, "127.0.0.43") == "action=OK", "recovery", timeout=10)
        assert policy_action(b.policy_socket, "127.0.0.43") == "action=OK"
