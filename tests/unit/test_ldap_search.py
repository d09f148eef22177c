"""The blocking half of the directory: filter escaping, entry reading, the connection pool."""

from dataclasses import replace

import pytest

from popbridge.directory.ldap_search import ConnectionPool, UserFacts, search_user, user_filter

from .ldap_mock import CONFIG, MockLdap


def test_user_name_is_escaped_per_rfc_4515() -> None:
    assert user_filter("(uid={user})", "alice)(|(uid=*") == r"(uid=alice\29\28|\28uid=\2a)"
    assert user_filter("(uid={user})", "back\\slash") == r"(uid=back\5cslash)"


def test_every_user_placeholder_is_filled_and_braces_elsewhere_survive() -> None:
    template = "(&(objectClass={x})(|(uid={user})(mail={user}@example.org)))"
    assert user_filter(template, "a*") == r"(&(objectClass={x})(|(uid=a\2a)(mail=a\2a@example.org)))"


def test_filter_matching_several_entries_finds_nobody() -> None:
    ldap = MockLdap()
    config = replace(CONFIG, user_filter="(|(uid={user})(uid=alice))")  # a careless filter
    found = ldap_run(ldap, config, "bob")
    assert found.facts is None
    assert "several entries" in found.note


def test_existing_user_without_routing_gets_the_default_backend() -> None:
    assert ldap_run(MockLdap(), CONFIG, "bob").facts == UserFacts(exempt=False, backend=None)


@pytest.mark.parametrize(
    "value, backend",
    [
        ("mail2.example.org", "mail2.example.org"),
        ("mail2.example.org:1110", "mail2.example.org:1110"),
        ("192.0.2.9:995", "192.0.2.9:995"),
        ("[2001:db8::9]:110", "[2001:db8::9]:110"),
        ("mail2:0", None),
        ("mail2:99999", None),
        ("mail2 ; rm -rf", None),
        ("", None),
    ],
)
def test_backend_attribute_must_be_host_or_host_and_port(value: str, backend: str | None) -> None:
    ldap = MockLdap({"erin": {"mailHost": value}} if value else {"erin": {}})
    assert ldap_run(ldap, CONFIG, "erin").facts == UserFacts(backend=backend)


def ldap_run(ldap: MockLdap, config, user: str):
    return ConnectionPool(ldap.connect, 1).run(lambda connection: search_user(config, user, connection))


def test_pool_reuses_a_connection_between_queries() -> None:
    ldap = MockLdap()
    pool = ConnectionPool(ldap.connect, 2)
    for user in ("alice", "bob", "carol"):
        pool.run(lambda connection: search_user(CONFIG, user, connection))
    assert ldap.connections == 1


def test_pool_drops_a_connection_that_failed() -> None:
    ldap = MockLdap()
    pool = ConnectionPool(ldap.connect, 2)
    pool.run(lambda connection: search_user(CONFIG, "alice", connection))
    ldap.down = True
    with pytest.raises(Exception):
        pool.run(lambda connection: search_user(CONFIG, "alice", connection))
    ldap.down = False
    pool.run(lambda connection: search_user(CONFIG, "alice", connection))
    assert ldap.connections == 2


def test_pool_keeps_at_most_its_size_of_idle_connections() -> None:
    ldap = MockLdap()
    pool = ConnectionPool(ldap.connect, 1)
    # a query that runs another one inside it needs two connections at once
    pool.run(lambda outer: pool.run(lambda inner: search_user(CONFIG, "bob", inner)))
    pool.run(lambda c: pool.run(lambda inner: search_user(CONFIG, "bob", inner)))
    assert ldap.connections == 3  # one kept idle, one closed each round


def test_connector_fails_over_to_the_next_url_and_back(monkeypatch) -> None:
    from ldap3.core.exceptions import LDAPSocketOpenError

    from popbridge.directory import ldap_search

    down = {"ldap://ldap1.example.org"}
    opened: list[str] = []

    def fake_open(config, server):
        url = f"ldap://{server.host}"
        opened.append(url)
        if url in down:
            raise LDAPSocketOpenError(f"{url}: connection refused")
        return url

    monkeypatch.setattr(ldap_search, "_open", fake_open)
    connect = ldap_search.ldap_connector(replace(CONFIG, urls=("ldap://ldap1.example.org", "ldap://ldap2.example.org")))
    assert connect() == "ldap://ldap2.example.org"
    down.clear()
    assert connect() == "ldap://ldap1.example.org"  # the primary again, as soon as it answers
    down.update({"ldap://ldap1.example.org", "ldap://ldap2.example.org"})
    with pytest.raises(LDAPSocketOpenError, match="ldap2"):
        connect()


def test_address_attributes_give_the_users_sender_addresses() -> None:
    ldap = MockLdap()
    ldap.add("erin", {"mail": "erin@Example.ORG", "mailAlternateAddress": ["erin.b@example.net", "not an address"]})
    found = ConnectionPool(ldap.connect, 1).run(
        lambda connection: search_user(CONFIG, "erin", connection, address_attributes=("mail", "mailAlternateAddress"))
    )
    assert found.facts is not None
    assert found.facts.addresses == {"erin@example.org", "erin.b@example.net"}
