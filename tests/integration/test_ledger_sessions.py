"""Open sessions through the real daemon and a real Dovecot, counted per session in every store
(issue 16, defect 2): session A is open, its address is revoked, session B logs in from the
same address and stays open, A ends. B must keep the address authorised for as long as it is
open, and for `ttl` after it closes, not `ttl` after A ended."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .imap_clients import BoundIMAP4, close
from .servers import Popbridge, Redis, StartPopbridge, wait_until

pytestmark = pytest.mark.realserver

ADDRESS = "127.0.0.61"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield "sqlite:ledger.sqlite3"  # in the daemon's own directory
    else:
        redis: Redis = request.getfixturevalue("own_redis")
        yield redis.url


def open_imap_sessions(daemon: Popbridge) -> float:
    """Proxied IMAP connections open now, from `popbridge stats`."""
    stats = daemon.cli("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    return float(json.loads(stats.stdout)["metrics"].get('popbridge_sessions_open{protocol="imap4"}', 0))


def test_the_end_of_a_session_from_before_a_revoke_leaves_a_later_session_open(
    popbridge_daemon: StartPopbridge, store: str
) -> None:
    daemon = popbridge_daemon(imap4=True, store=store)
    a = BoundIMAP4("127.0.0.1", daemon.imap_port, ADDRESS)
    b = BoundIMAP4("127.0.0.1", daemon.imap_port, ADDRESS)
    try:
        a.login("alice", "alice-pw")
        revoked = daemon.cli("revoke", ADDRESS)
        assert revoked.returncode == 0, revoked.stderr
        assert daemon.logins(ADDRESS) == []
        b.login("alice", "alice-pw")
        a.logout()
        wait_until(lambda: open_imap_sessions(daemon) == 1, "popbridge saw session A close")
        [login] = daemon.logins(ADDRESS)
        assert (login["user"], login["open_sessions"], login["expires"]) == ("alice", 1, None)
        b.logout()
        wait_until(lambda: open_imap_sessions(daemon) == 0, "popbridge saw session B close")
        [login] = daemon.logins(ADDRESS)
        assert (login["open_sessions"], login["expires"] is not None) == (0, True)
    finally:
        close(a)
        close(b)
