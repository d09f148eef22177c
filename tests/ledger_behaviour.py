"""The ledger behaviour every store must have, as one class of tests: each store's test module
subclasses `LedgerBehaviour` and gives it a `ledger` fixture (the store under test) and a `clock`
fixture (the task.Clock that store runs on). Memory and SQLite run in
tests/unit/test_ledger_behaviour.py, Redis against a real redis-server in
tests/integration/test_ledger_redis.py.

Stores are driven by a `task.Clock` and a direct `run_blocking`, so every Deferred has fired
by the time a call returns and time passes only when a test advances the clock.
"""

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from popbridge.ledger import ILedger, IRestorableLedger, Login, new_session

from tests.doubles import result

TTL = 1800


def epoch_clock() -> Clock:
    """A task.Clock at a realistic epoch time: Redis TTLs are relative to it."""
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


def users(ledger: ILedger, address: str) -> list[str]:
    return [login.user for login in result(ledger.lookup(address))]


class LedgerBehaviour:
    """What every ILedger store does; not collected itself (its name has no Test prefix)."""

    def test_every_store_provides_the_interface(self, ledger):
        assert verifyObject(ILedger, ledger)
        assert verifyObject(IRestorableLedger, ledger)

    def test_record_fires_with_the_stored_login(self, ledger, clock):
        login = result(ledger.record("192.0.2.7", "alice", "pop3", tls=True))
        assert (login.client, login.user, login.protocol, login.when, login.tls) == (
            "192.0.2.7", "alice", "pop3", clock.seconds(), True
        )

    def test_a_login_authorises_its_address_until_the_ttl_passes(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        clock.advance(TTL - 1)
        assert users(ledger, "192.0.2.7") == ["alice"]
        clock.advance(1)
        assert users(ledger, "192.0.2.7") == []

    def test_a_new_login_refreshes_the_ttl(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        clock.advance(1000)
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        clock.advance(1000)
        assert users(ledger, "192.0.2.7") == ["alice"]

    def test_an_open_session_keeps_its_address_authorised(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "imap4", new_session()))
        for _ in range(20):
            clock.advance(1800)
        [login] = result(ledger.lookup("192.0.2.7"))
        assert (login.user, login.expires(ledger.ttl)) == ("alice", None)

    def test_the_ttl_starts_when_the_session_ends(self, ledger, clock):
        session = new_session()
        result(ledger.record("192.0.2.7", "alice", "pop3", session))
        clock.advance(5000)
        result(ledger.end_session("192.0.2.7", "alice", "pop3", session))
        clock.advance(TTL - 1)
        assert users(ledger, "192.0.2.7") == ["alice"]
        clock.advance(1)
        assert users(ledger, "192.0.2.7") == []

    def test_one_of_two_sessions_ending_keeps_the_login_open(self, ledger, clock):
        first, second = new_session(), new_session()
        result(ledger.record("192.0.2.7", "alice", "pop3", first))
        result(ledger.record("192.0.2.7", "alice", "pop3", second))
        result(ledger.end_session("192.0.2.7", "alice", "pop3", first))
        clock.advance(5000)
        assert users(ledger, "192.0.2.7") == ["alice"]

    def test_a_session_ending_twice_ends_only_itself(self, ledger, clock):
        first, second = new_session(), new_session()
        result(ledger.record("192.0.2.7", "alice", "pop3", first))
        result(ledger.record("192.0.2.7", "alice", "pop3", second))
        result(ledger.end_session("192.0.2.7", "alice", "pop3", first))
        result(ledger.end_session("192.0.2.7", "alice", "pop3", first))
        clock.advance(5000)
        assert [login.open_sessions for login in result(ledger.lookup("192.0.2.7"))] == [1]

    def test_several_users_share_a_nat_address_newest_first(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        clock.advance(1)
        result(ledger.record("192.0.2.7", "bob", "pop3"))
        assert users(ledger, "192.0.2.7") == ["bob", "alice"]

    def test_mapped_ipv6_finds_an_ipv4_login(self, ledger):
        result(ledger.record("::ffff:192.0.2.7", "alice", "pop3"))
        assert users(ledger, "192.0.2.7") == ["alice"]

    def test_ipv6_prefix_groups_addresses(self, ledger):
        result(ledger.record("2001:db8::1", "alice", "pop3"))
        assert users(ledger, "2001:db8::abcd") == ["alice"]

    def test_other_addresses_are_unknown(self, ledger):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        assert users(ledger, "192.0.2.8") == []
        assert users(ledger, "unknown") == []

    def test_a_non_address_records_nothing(self, ledger):
        assert result(ledger.record("unix-socket", "alice", "pop3")) is None
        assert result(ledger.logins()) == []

    def test_logins_lists_every_live_login(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        clock.advance(1)
        result(ledger.record("192.0.2.8", "bob", "imap4", new_session()))
        assert [(l.client, l.user, l.protocol) for l in result(ledger.logins())] == [
            ("192.0.2.8", "bob", "imap4"), ("192.0.2.7", "alice", "pop3")
        ]

    def test_revoke_forgets_open_sessions_too(self, ledger):
        session = new_session()
        result(ledger.record("192.0.2.7", "alice", "pop3", session))
        assert result(ledger.revoke("192.0.2.7")) == 1
        result(ledger.end_session("192.0.2.7", "alice", "pop3", session))
        assert users(ledger, "192.0.2.7") == []

    @pytest.mark.parametrize("second_user", ["alice", "bob"])
    def test_a_session_from_before_a_revoke_ending_leaves_a_later_session_open(self, ledger, clock, second_user):
        """Issue 16, defect 2: A open, revoke, B logs in and stays open, A ends: B still authorises."""
        a, b = new_session(), new_session()
        result(ledger.record("192.0.2.7", "alice", "imap4", a))
        result(ledger.revoke("192.0.2.7"))
        clock.advance(10)
        result(ledger.record("192.0.2.7", second_user, "imap4", b))
        clock.advance(10)
        result(ledger.end_session("192.0.2.7", "alice", "imap4", a))
        for _ in range(3):
            clock.advance(TTL)
            assert [(l.user, l.open_sessions) for l in result(ledger.lookup("192.0.2.7"))] == [(second_user, 1)]
        result(ledger.end_session("192.0.2.7", second_user, "imap4", b))
        clock.advance(TTL - 1)
        assert users(ledger, "192.0.2.7") == [second_user]
        clock.advance(1)
        assert users(ledger, "192.0.2.7") == []

    def test_revoke_counts_every_user_of_the_address(self, ledger):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        result(ledger.record("192.0.2.7", "bob", "pop3"))
        assert result(ledger.revoke("192.0.2.7")) == 2
        assert result(ledger.revoke("192.0.2.7")) == 0

    def test_expired_addresses_are_forgotten(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        clock.advance(TTL)
        assert result(ledger.logins()) == []
        assert result(ledger.purge()) == 0

    def test_purge_keeps_live_logins(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        clock.advance(1000)
        result(ledger.record("192.0.2.8", "bob", "pop3"))
        clock.advance(800)
        result(ledger.purge())
        assert users(ledger, "192.0.2.8") == ["bob"]
        assert users(ledger, "192.0.2.7") == []

    def test_a_new_ttl_applies_at_once_to_existing_logins(self, ledger, clock):
        result(ledger.record("192.0.2.7", "alice", "pop3"))
        ledger.ttl = 100
        clock.advance(99)
        assert users(ledger, "192.0.2.7") == ["alice"]
        clock.advance(1)
        assert users(ledger, "192.0.2.7") == []

    def test_restore_keeps_each_logins_own_time(self, ledger, clock):
        then = clock.seconds() - 1000
        old = Login("192.0.2.7", "alice", "pop3", then, 0, True)
        assert result(ledger.restore([old])) == 1
        assert result(ledger.lookup("192.0.2.7")) == [old]
        clock.advance(TTL - 1000)
        assert users(ledger, "192.0.2.7") == []
