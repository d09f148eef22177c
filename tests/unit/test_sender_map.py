"""Sender ownership rules without I/O: address keys, the map file format, the map and `domains`."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbridge.senders.map import SenderMap, SenderMapError, SenderRules, parse_sender_map, sender_key

MAP = """\
# who may send as what
alice@example.org     alice
shared@example.org    alice, bob
  carol
@lists.example.org    listadmin
alice+private@example.org  mallory
"""


def rules(text: str = MAP, domains: tuple[str, ...] = ()) -> SenderRules:
    return SenderRules(parse_sender_map(text), frozenset(domains))


# ---------------------------------------------------------------- address keys


@pytest.mark.parametrize(("text", "key"), [
    ("<alice@Example.ORG>", "alice@example.org"),
    ("Alice@EXAMPLE.org", "Alice@example.org"),  # the local part as written
    ("<>", ""),
    ("", ""),
    ("<<alice@example.org>>", "<alice@example.org>"),  # one pair only
    ("postmaster", "postmaster"),
])
def test_sender_key_strips_one_pair_of_brackets_and_folds_only_the_domain(text: str, key: str) -> None:
    assert sender_key(text) == key


@given(st.text())
def test_sender_key_is_idempotent_on_addresses_without_brackets(text: str) -> None:
    key = sender_key(text)
    if not (key.startswith("<") and key.endswith(">")):
        assert sender_key(key) == key


# ---------------------------------------------------------------- the map file


def test_map_entries_with_continuation_lines_and_comments() -> None:
    parsed = parse_sender_map(MAP)
    assert parsed.owners == {
        "alice@example.org": {"alice"},
        "shared@example.org": {"alice", "bob", "carol"},
        "@lists.example.org": {"listadmin"},
        "alice+private@example.org": {"mallory"},
    }


def test_map_keys_fold_the_domain() -> None:
    assert parse_sender_map("Bob@EXAMPLE.org\tbob\n").owners == {"Bob@example.org": {"bob"}}


@pytest.mark.parametrize(("text", "problem"), [
    ("alice  alice\n", "line 1: 'alice' is not address@domain or @domain"),
    ("\n\n@  alice\n", "line 3: '@' needs a domain"),
    ("alice@example.org\n", "line 1: 'alice@example.org' has no owners"),
    ("a@example.org a\nb@example.org b\nA@EXAMPLE.ORG x\na@Example.org c\n", "line 4: 'a@Example.org' repeats the key of line 1"),
    ("  alice\n", "line 1: starts with whitespace but continues nothing"),
])
def test_broken_map_names_the_line(text: str, problem: str) -> None:
    with pytest.raises(SenderMapError) as e:
        parse_sender_map(text)
    assert str(e.value) == problem


@given(st.text())
def test_map_parser_raises_only_its_own_error(text: str) -> None:
    try:
        parse_sender_map(text)
    except SenderMapError:
        pass


KEY = st.from_regex(r"[a-z0-9._+-]{0,8}@[a-z0-9-]{1,8}(\.[a-z]{2,4})?", fullmatch=True).filter(lambda k: k != "@")
USERS = st.frozensets(st.from_regex(r"[a-z][a-z0-9._@-]{0,10}", fullmatch=True), min_size=1, max_size=4)


@given(st.dictionaries(KEY, USERS, max_size=8), st.sampled_from([" ", "\t", "   "]), st.sampled_from([", ", ",", " ", "\n  "]))
def test_a_written_map_reads_back_as_written(entries: dict[str, frozenset[str]], gap: str, separator: str) -> None:
    text = "".join(f"{key}{gap}{separator.join(sorted(users))}\n# comment\n\n" for key, users in entries.items())
    assert parse_sender_map(text).owners == entries


# ---------------------------------------------------------------- who owns what


def test_map_owner_owns_the_address() -> None:
    assert rules().owned("alice@example.org", ["alice"])
    assert not rules().owned("alice@example.org", ["bob"])


def test_every_listed_owner_owns_a_shared_address() -> None:
    assert all(rules().owned("shared@example.org", [user]) for user in ("alice", "bob", "carol"))


def test_domain_key_gives_the_whole_domain() -> None:
    assert rules().owned("anything@lists.example.org", ["listadmin"])
    assert not rules().owned("anything@sub.lists.example.org", ["listadmin"])


def test_address_domain_compares_case_insensitively_and_the_local_part_as_written() -> None:
    assert rules().owned(sender_key("alice@EXAMPLE.ORG"), ["alice"])
    assert not rules().owned(sender_key("Alice@example.org"), ["alice"])


def test_sub_address_is_owned_by_the_owner_of_the_plain_address() -> None:
    assert rules().owned("alice+news@example.org", ["alice"])


def test_listed_sub_address_is_decided_by_its_own_entry_first() -> None:
    assert rules().owned("alice+private@example.org", ["mallory"])
    assert not rules().owned("alice+private@example.org", ["alice"])


def test_exact_entry_hides_the_domain_entry_as_in_postfix() -> None:
    table = rules("bob@example.org bob\n@example.org admin\n")
    assert not table.owned("bob@example.org", ["admin"])
    assert table.owned("carol@example.org", ["admin"])


def test_domains_rule_gives_a_login_name_its_address_in_each_listed_domain() -> None:
    table = rules("", ("example.org", "example.net"))
    assert table.owned("alice@example.org", ["alice"]) and table.owned("alice@example.net", ["alice"])
    assert table.owned("alice+tag@example.org", ["alice"])
    assert not table.owned("alice@example.com", ["alice"])
    assert not table.owned("bob@example.org", ["alice"])


def test_address_login_name_owns_itself_only_in_a_listed_domain() -> None:
    table = rules("", ("example.org",))
    assert table.owned("alice@example.org", ["alice@Example.org"])
    assert not table.owned("alice@gmail.example", ["alice@gmail.example"])


def test_address_login_name_is_not_a_local_part_in_a_listed_domain() -> None:
    """Postfix passes ``"bob@other.example"@example.org`` on as bob@other.example@example.org:
    a login bob@other.example owns itself, not a mailbox of example.org that bears its name."""
    table = rules("", ("example.org",))
    assert not table.owned("bob@other.example@example.org", ["bob@other.example"])


def test_a_login_without_a_name_owns_nothing() -> None:
    assert not rules("@example.org alice\n", ("example.org",)).owned("@example.org", [""])


def test_map_lists_an_address_only_by_its_own_entry() -> None:
    table = rules()
    assert table.lists("alice@example.org") and table.lists("alice+x@example.org")
    assert not table.lists("someone@lists.example.org")


ADDRESS = st.from_regex(r"[a-z]{1,4}(\+[a-z]{0,3})?@(example\.org|example\.net|lists\.example\.org)", fullmatch=True)


@given(st.dictionaries(KEY, USERS, max_size=6), st.frozensets(st.sampled_from(["example.org", "example.net"])),
       ADDRESS, st.frozensets(st.from_regex(r"[a-z]{1,4}", fullmatch=True), max_size=3), st.from_regex(r"[a-z]{1,4}", fullmatch=True))
def test_another_login_never_takes_an_address_away(entries, domains, address, users, other) -> None:
    table = SenderRules(SenderMap(entries), domains)
    if table.owned(address, users):
        assert table.owned(address, users | {other})
