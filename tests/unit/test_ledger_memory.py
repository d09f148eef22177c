"""MemoryLedger behaviour. A later store gets the same tests by adding itself to `ledgers`."""

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from popbridge.ledger import ILedger
from popbridge.ledger.memory import MemoryLedger


def result(d):
    box = []
    d.addBoth(box.append)
    return box[0]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ledger(clock):
    return MemoryLedger(clock, ttl=1800, ipv6_prefix=64)


def users(ledger, address):
    return [login.user for login in result(ledger.lookup(address))]


def test_memory_ledger_provides_the_interface(ledger):
    assert verifyObject(ILedger, ledger)


def test_a_login_authorises_its_address_until_the_ttl_passes(ledger, clock):
    ledger.record("192.0.2.7", "alice", "pop3", False)
    clock.advance(1799)
    assert users(ledger, "192.0.2.7") == ["alice"]
    clock.advance(1)
    assert users(ledger, "192.0.2.7") == []


def test_a_new_login_refreshes_the_ttl(ledger, clock):
    ledger.record("192.0.2.7", "alice", "pop3", False)
    clock.advance(1000)
    ledger.record("192.0.2.7", "alice", "pop3", False)
    clock.advance(1000)
    assert users(ledger, "192.0.2.7") == ["alice"]


def test_an_open_session_keeps_its_address_authorised(ledger, clock):
    ledger.record("192.0.2.7", "alice", "imap4", True)
    clock.advance(10 * 3600)
    assert users(ledger, "192.0.2.7") == ["alice"]


def test_the_ttl_starts_when_the_session_ends(ledger, clock):
    ledger.record("192.0.2.7", "alice", "pop3", True)
    clock.advance(5000)
    ledger.end_session("192.0.2.7", "alice", "pop3")
    clock.advance(1799)
    assert users(ledger, "192.0.2.7") == ["alice"]
    clock.advance(1)
    assert users(ledger, "192.0.2.7") == []


def test_one_of_two_sessions_ending_keeps_the_login_open(ledger, clock):
    ledger.record("192.0.2.7", "alice", "pop3", True)
    ledger.record("192.0.2.7", "alice", "pop3", True)
    ledger.end_session("192.0.2.7", "alice", "pop3")
    clock.advance(5000)
    assert users(ledger, "192.0.2.7") == ["alice"]


def test_several_users_share_a_nat_address_newest_first(ledger, clock):
    ledger.record("192.0.2.7", "alice", "pop3", False)
    clock.advance(1)
    ledger.record("192.0.2.7", "bob", "pop3", False)
    assert users(ledger, "192.0.2.7") == ["bob", "alice"]


def test_mapped_ipv6_finds_an_ipv4_login(ledger):
    ledger.record("::ffff:192.0.2.7", "alice", "pop3", False)
    assert users(ledger, "192.0.2.7") == ["alice"]


def test_ipv6_prefix_groups_addresses(ledger):
    ledger.record("2001:db8::1", "alice", "pop3", False)
    assert users(ledger, "2001:db8::abcd") == ["alice"]


def test_other_addresses_are_unknown(ledger):
    ledger.record("192.0.2.7", "alice", "pop3", False)
    assert users(ledger, "192.0.2.8") == []
    assert users(ledger, "unknown") == []


def test_a_non_address_records_nothing(ledger):
    assert result(ledger.record("unix-socket", "alice", "pop3", False)) is None
    assert result(ledger.logins()) == []


def test_revoke_forgets_open_sessions_too(ledger):
    ledger.record("192.0.2.7", "alice", "pop3", True)
    assert result(ledger.revoke("192.0.2.7")) == 1
    ledger.end_session("192.0.2.7", "alice", "pop3")
    assert users(ledger, "192.0.2.7") == []


def test_expired_addresses_are_forgotten(ledger, clock):
    ledger.record("192.0.2.7", "alice", "pop3", False)
    clock.advance(1800)
    assert result(ledger.logins()) == []
    assert result(ledger.purge()) == 0


def test_purge_forgets_expired_addresses_only(ledger, clock):
    ledger.record("192.0.2.7", "alice", "pop3", False)
    clock.advance(1000)
    ledger.record("192.0.2.8", "bob", "pop3", False)
    clock.advance(800)
    assert result(ledger.purge()) == 1
    assert users(ledger, "192.0.2.8") == ["bob"]
