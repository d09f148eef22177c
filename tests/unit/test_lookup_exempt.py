"""Exempt answers on the wire: policy `exempt_action`, socketmap map `exempt`, WHOSON unchanged."""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from popbridge.directory import IDirectory, MemoryDirectory
from popbridge.directory.ldap_search import UserFacts
from popbridge.ledger.memory import MemoryLedger
from popbridge.lookup import lookup_factory
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdicts
from popbridge.wire.socketmap import netstring

FILTER = "FILTER smtp:[127.0.0.1]:10025"
POLICY = LookupConfig("policy", "unix:address=/tmp/policy", exempt_action=FILTER)
SOCKETMAP = LookupConfig("socketmap", "unix:address=/tmp/socketmap")
WHOSON = LookupConfig("whoson", "unix:address=/tmp/whoson")
REQUEST = b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=%s\n\n"
DIRECTORY = MemoryDirectory({"alice": UserFacts(exempt=True), "bob": UserFacts()})


class SilentDirectory(MemoryDirectory):
    """A directory that never answers: what a lookup sees while LDAP hangs (before the timeout)."""

    def facts(self, user: str) -> "Deferred[UserFacts]":
        return Deferred()


def ask(config: LookupConfig, data: bytes, *logins: tuple[str, str], directory: IDirectory = DIRECTORY) -> bytes:
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    for address, user in logins:
        ledger.record(address, user, "pop3")
    factory = lookup_factory(config, Verdicts(ledger, directory), ledger, Counters(started=0), clock)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    server = factory.buildProtocol(None)
    server.makeConnection(transport)
    server.dataReceived(data)
    return transport.value()


def test_policy_answers_exempt_action_for_an_exempt_users_address() -> None:
    assert ask(POLICY, REQUEST % b"192.0.2.7", ("192.0.2.7", "alice")) == b"action=FILTER smtp:[127.0.0.1]:10025\n\n"


def test_policy_answers_authorised_action_for_an_ordinary_users_address() -> None:
    assert ask(POLICY, REQUEST % b"192.0.2.7", ("192.0.2.7", "bob")) == b"action=OK\n\n"


def test_policy_answers_authorised_action_when_an_ordinary_user_shares_the_address() -> None:
    logins = (("192.0.2.7", "alice"), ("192.0.2.7", "bob"))
    assert ask(POLICY, REQUEST % b"192.0.2.7", *logins) == b"action=OK\n\n"


def test_policy_never_exempts_an_address_without_a_login() -> None:
    assert ask(POLICY, REQUEST % b"192.0.2.8", ("192.0.2.7", "alice")) == b"action=DUNNO\n\n"


def test_policy_without_exempt_action_does_not_ask_the_directory() -> None:
    plain = LookupConfig("policy", "unix:address=/tmp/policy")
    answer = ask(plain, REQUEST % b"192.0.2.7", ("192.0.2.7", "alice"), directory=SilentDirectory())
    assert answer == b"action=OK\n\n"


def test_socketmap_exempt_map_says_yes_only_for_exempt_addresses() -> None:
    query = netstring(b"exempt 192.0.2.7")
    assert ask(SOCKETMAP, query, ("192.0.2.7", "alice")) == netstring(b"OK yes")
    assert ask(SOCKETMAP, query, ("192.0.2.7", "bob")) == netstring(b"NOTFOUND ")
    assert ask(SOCKETMAP, query, ("192.0.2.7", "alice"), ("192.0.2.7", "bob")) == netstring(b"NOTFOUND ")
    assert ask(SOCKETMAP, query) == netstring(b"NOTFOUND ")


def test_socketmap_exempt_map_answers_notfound_for_host_names() -> None:
    assert ask(SOCKETMAP, netstring(b"exempt unknown"), ("192.0.2.7", "alice")) == netstring(b"NOTFOUND ")


def test_socketmap_access_map_does_not_ask_the_directory() -> None:
    answer = ask(SOCKETMAP, netstring(b"access 192.0.2.7"), ("192.0.2.7", "alice"), directory=SilentDirectory())
    assert answer == netstring(b"OK OK")


def test_whoson_answers_the_user_only_and_never_asks_the_directory() -> None:
    answer = ask(WHOSON, b"QUERY 192.0.2.7\r\n\r\n", ("192.0.2.7", "alice"), directory=SilentDirectory())
    assert answer == b"+alice\r\n\r\n"
