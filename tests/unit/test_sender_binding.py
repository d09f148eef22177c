"""Sender binding on the policy wire: StringTransport + task.Clock + MemoryLedger + MemoryDirectory.

alice and bob log in as themselves; carol's addresses come from the directory; the map gives
shared@example.org to alice and bob, and `domains` gives every login name its example.org address.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from popbridge.directory import FALLBACK, IDirectory, MemoryDirectory
from popbridge.directory.ldap_search import UserFacts
from popbridge.ledger.memory import MemoryLedger
from popbridge.lookup import lookup_factory
from popbridge.metrics.counters import Counters
from popbridge.senders.map import SenderRules, parse_sender_map
from popbridge.senders.owners import SenderOwners, SendersUnavailable
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdicts

MISMATCH = "REJECT 5.7.1 Sender address is not yours"
BINDING = LookupConfig("policy", "unix:address=/tmp/policy", sender_binding=True)
PLAIN = LookupConfig("policy", "unix:address=/tmp/policy")
EXEMPT = LookupConfig("policy", "unix:address=/tmp/policy", sender_binding=True, exempt_action="FILTER smtp:[127.0.0.1]:10025")
RULES = SenderRules(parse_sender_map("shared@example.org alice, bob\n"), frozenset({"example.org"}))
DIRECTORY = MemoryDirectory({
    "alice": UserFacts(exempt=True),
    "bob": UserFacts(),
    "carol": UserFacts(addresses=frozenset({"carol@ldap.example", "carol.second@ldap.example"})),
})


class DownDirectory(MemoryDirectory):
    """LDAP down with nothing cached: every user gets the fallback."""

    def facts(self, user: str) -> "Deferred[UserFacts]":
        return succeed(FALLBACK)


class WaitingLedger(MemoryLedger):
    lookup_now = None  # a store that has to wait (Redis), not one answering from memory


def request(client: str, sender: str | None) -> bytes:
    lines = ["request=smtpd_access_policy", "protocol_state=RCPT", f"client_address={client}"]
    lines += [] if sender is None else [f"sender={sender}"]
    return ("\n".join(lines) + "\n\n").encode()


def ask(config: LookupConfig, client: str, sender: str | None, *logins: tuple[str, str],
        directory: IDirectory = DIRECTORY, rules: SenderRules = RULES, counters: Counters | None = None,
        ledger_type: type[MemoryLedger] = MemoryLedger) -> str:
    clock = Clock()
    ledger = ledger_type(clock, ttl=1800)
    for address, user in logins:
        ledger.record(address, user, "pop3")
    verdicts = Verdicts(ledger, directory, SenderOwners(rules, directory))
    factory = lookup_factory(config, verdicts, ledger, counters or Counters(started=0), clock)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    server = factory.buildProtocol(None)
    server.makeConnection(transport)
    server.dataReceived(request(client, sender))
    reply = transport.value()
    assert reply.startswith(b"action=") and reply.endswith(b"\n\n"), reply
    return reply[len(b"action="):-2].decode()


ALICE = ("192.0.2.7", "alice")


def test_own_address_passes() -> None:
    assert ask(BINDING, "192.0.2.7", "alice@example.org", ALICE) == "OK"


def test_someone_elses_address_gets_the_mismatch_action() -> None:
    assert ask(BINDING, "192.0.2.7", "bob@example.org", ALICE) == MISMATCH


def test_null_sender_passes() -> None:
    assert ask(BINDING, "192.0.2.7", "", ALICE) == "OK"
    assert ask(BINDING, "192.0.2.7", "<>", ALICE) == "OK"


def test_request_without_a_sender_line_is_answered_as_without_binding() -> None:
    assert ask(BINDING, "192.0.2.7", None, ALICE) == "OK"


def test_address_without_a_login_gets_the_unknown_action_whatever_the_sender() -> None:
    assert ask(BINDING, "192.0.2.8", "alice@example.org", ALICE) == "DUNNO"
    assert ask(BINDING, "192.0.2.8", "nobody@example.com", ALICE) == "DUNNO"


def test_any_user_logged_in_on_the_address_may_send_as_themselves() -> None:
    both = (ALICE, ("192.0.2.7", "bob"))
    assert ask(BINDING, "192.0.2.7", "alice@example.org", *both) == "OK"
    assert ask(BINDING, "192.0.2.7", "bob@example.org", *both) == "OK"
    assert ask(BINDING, "192.0.2.7", "carol@example.org", *both) == MISMATCH


def test_without_binding_any_sender_passes() -> None:
    assert ask(PLAIN, "192.0.2.7", "bob@example.org", ALICE) == "OK"


def test_map_owner_passes() -> None:
    assert ask(BINDING, "192.0.2.7", "shared@example.org", ("192.0.2.7", "bob")) == "OK"


def test_directory_addresses_are_owned() -> None:
    carol = ("192.0.2.9", "carol")
    assert ask(BINDING, "192.0.2.9", "carol.second@ldap.example", carol) == "OK"
    assert ask(BINDING, "192.0.2.9", "<carol@LDAP.example>", carol) == "OK"
    assert ask(BINDING, "192.0.2.9", "alice@ldap.example", carol) == MISMATCH


def test_exempt_user_sending_as_someone_else_gets_the_mismatch_action() -> None:
    assert ask(EXEMPT, "192.0.2.7", "alice@example.org", ALICE) == EXEMPT.exempt_action
    assert ask(EXEMPT, "192.0.2.7", "bob@example.org", ALICE) == MISMATCH


def test_login_without_a_name_may_send_only_bounces() -> None:
    nameless = ("192.0.2.10", "")
    assert ask(BINDING, "192.0.2.10", "", nameless) == "OK"
    assert ask(BINDING, "192.0.2.10", "alice@example.org", nameless) == MISMATCH


def test_mismatch_is_logged_with_client_sender_and_users_and_counted() -> None:
    counters = Counters(started=0)
    with capturedLogs() as events:
        ask(BINDING, "192.0.2.7", "bob@example.org", ALICE, ("192.0.2.7", "carol"), counters=counters)
    lines = [formatEvent(e) for e in events if e.get("log_level").name == "warn"]
    assert lines == ["policy 192.0.2.7: sender bob@example.org refused: not an address of carol, alice"]
    assert ('popbridge_lookups_total{answer="mismatch",protocol="policy"}', 1.0) in list(counters.metrics.samples())


def test_ldap_outage_defers_a_sender_only_ldap_could_vouch_for() -> None:
    with capturedLogs():
        answer = ask(BINDING, "192.0.2.9", "carol.second@ldap.example", ("192.0.2.9", "carol"), directory=DownDirectory())
    assert answer == BINDING.tempfail_action


def test_ldap_outage_leaves_the_map_and_domains_deciding() -> None:
    down, carol = DownDirectory(), ("192.0.2.9", "carol")
    assert ask(BINDING, "192.0.2.9", "carol@example.org", carol, directory=down) == "OK"  # domains
    assert ask(BINDING, "192.0.2.9", "shared@example.org", carol, directory=down) == MISMATCH  # the map lists it


def test_binding_applies_the_same_when_the_store_has_to_wait() -> None:
    carol = ("192.0.2.9", "carol")
    assert ask(BINDING, "192.0.2.7", "alice@example.org", ALICE, ledger_type=WaitingLedger) == "OK"
    assert ask(BINDING, "192.0.2.7", "bob@example.org", ALICE, ledger_type=WaitingLedger) == MISMATCH
    assert ask(BINDING, "192.0.2.9", "carol@ldap.example", carol, ledger_type=WaitingLedger) == "OK"
    with capturedLogs():
        answer = ask(BINDING, "192.0.2.9", "carol@ldap.example", carol, ledger_type=WaitingLedger, directory=DownDirectory())
    assert answer == BINDING.tempfail_action


def test_owners_without_a_directory_never_wait() -> None:
    owners = SenderOwners(RULES)
    assert owners.owned("someone@ldap.example", ["carol"]) is False


def test_owners_raise_unavailable_naming_the_unanswered_user() -> None:
    owners = SenderOwners(RULES, DownDirectory())
    failure = []
    owners.owned("x@ldap.example", ["carol", ""]).addErrback(failure.append)
    assert failure[0].check(SendersUnavailable) and "carol may send as x@ldap.example" in str(failure[0].value)


# ---------------------------------------------------------------- properties

USER = st.sampled_from(["alice", "bob", "carol", "dave", ""])
CLIENT = st.sampled_from(["192.0.2.7", "192.0.2.8", "192.0.2.9"])
SENDER = st.one_of(
    st.none(),
    st.sampled_from(["", "<>", "shared@example.org", "carol.second@ldap.example", "dave@example.org"]),
    st.builds(lambda user, domain, tag: f"{user}{tag}@{domain}", USER, st.sampled_from(["example.org", "EXAMPLE.org", "ldap.example", "other.example"]), st.sampled_from(["", "+x"])),
    st.text(max_size=20).filter(lambda s: "\n" not in s),
)
LOGINS = st.lists(st.tuples(CLIENT, USER), max_size=5)
DIRECTORIES = st.sampled_from([DIRECTORY, DownDirectory()])


@given(CLIENT, SENDER, LOGINS, DIRECTORIES, st.sampled_from([MemoryLedger, WaitingLedger]))
def test_binding_never_turns_an_unknown_address_into_an_authorised_one(client, sender, logins, directory, ledger_type) -> None:
    with capturedLogs():
        bound = ask(BINDING, client, sender, *logins, directory=directory, ledger_type=ledger_type)
        plain = ask(PLAIN, client, sender, *logins, directory=directory, ledger_type=ledger_type)
    assert bound in (plain, MISMATCH, BINDING.tempfail_action)
    if plain != "OK":
        assert bound == plain


OWNS = {  # by construction from RULES and DIRECTORY: what each user may send as
    "alice": ["alice@example.org", "alice+x@EXAMPLE.org", "shared@example.org", "<alice@example.org>"],
    "bob": ["bob@example.org", "shared@example.org"],
    "carol": ["carol@example.org", "carol@ldap.example", "carol.second@LDAP.example"],
    "dave": ["dave@example.org", "dave+y@example.org"],
}


@given(CLIENT, st.sampled_from(sorted(OWNS)), LOGINS, st.data())
def test_a_sender_owned_by_a_logged_in_user_is_never_refused(client, owner, logins, data) -> None:
    sender = data.draw(st.sampled_from(OWNS[owner]))
    logins = [*logins, (client, owner)]
    assert ask(BINDING, client, sender, *logins) == "OK"
    with capturedLogs():
        assert ask(BINDING, client, sender, *logins, directory=DownDirectory()) in ("OK", BINDING.tempfail_action)
