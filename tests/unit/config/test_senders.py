"""``[senders]`` and the sender binding keys: every complaint names the file and the key."""

import pytest

from tests.unit.config.files import LDAP, POLICY, load
from tests.unit.config.files import error as full_error


def error(tmp_path, text) -> str:
    """The complaint after the file name every complaint starts with."""
    return full_error(tmp_path, text).removeprefix(f"{tmp_path / 'popbridge.toml'}: ")


def test_binding_is_off_by_default_with_the_issue_default_action(tmp_path) -> None:
    lookup = load(tmp_path, POLICY).lookups[0]
    assert lookup.sender_binding is False
    assert lookup.sender_mismatch_action == "REJECT 5.7.1 Sender address is not yours"


def test_every_source_loads(tmp_path) -> None:
    senders_map = tmp_path / "senders"
    senders_map.write_text("shared@example.org  alice, bob\n@lists.example.org listadmin\n")
    config = load(tmp_path, POLICY + 'sender_binding = true\n' + LDAP + f"""
[senders]
map = "{senders_map}"
ldap_attributes = ["mail", "mailAlternateAddress"]
domains = ["Example.ORG"]
""")
    assert config.lookups[0].sender_binding
    assert config.senders.ldap_attributes == ("mail", "mailAlternateAddress")
    assert config.senders.rules.domains == {"example.org"}
    assert config.senders.rules.map.owners["shared@example.org"] == {"alice", "bob"}


def test_binding_without_senders_is_refused(tmp_path) -> None:
    assert error(tmp_path, POLICY + "sender_binding = true\n") == (
        "[[lookup]] #1 sender_binding: needs a [senders] table (map, ldap_attributes or domains)"
    )


def test_binding_keys_are_for_policy_lookups_only(tmp_path) -> None:
    text = '[[lookup]]\nprotocol = "socketmap"\nlisten = "unix:address=/tmp/s"\nsender_binding = true\n'
    assert error(tmp_path, text).startswith("[[lookup]] #1 sender_binding: unknown key for protocol 'socketmap'")


@pytest.mark.parametrize("key", ["sender_mismatch_action", "unknown_action", "tempfail_action"])
def test_all_digit_action_is_refused_because_postfix_reads_it_as_ok(tmp_path, key) -> None:
    message = error(tmp_path, POLICY + f'{key} = "550"\n')
    assert message.startswith(f"[[lookup]] #1 {key}: '550': Postfix reads an all-digit action as OK")


def test_multi_line_mismatch_action_is_refused(tmp_path) -> None:
    assert error(tmp_path, POLICY + 'sender_mismatch_action = "REJECT\\nDUNNO"\n') == (
        "[[lookup]] #1 sender_mismatch_action: must be one line"
    )


def test_empty_senders_table_is_refused(tmp_path) -> None:
    assert error(tmp_path, POLICY + "[senders]\n").startswith("[senders] map: give at least one of")


def test_ldap_attributes_need_an_ldap_table(tmp_path) -> None:
    assert error(tmp_path, POLICY + '[senders]\nldap_attributes = ["mail"]\n') == "[senders] ldap_attributes: needs an [ldap] table"


@pytest.mark.parametrize(("line", "problem"), [
    ('ldap_attributes = ["mail;binary"]', "ldap_attributes: 'mail;binary' is not an LDAP attribute name"),
    ("ldap_attributes = []", "ldap_attributes: must be a non-empty list of strings"),
    ('domains = ["@example.org"]', "domains: '@example.org' is not a domain name"),
    ('domains = "example.org"', "domains: must be a non-empty list of strings"),
    ('mapp = "/etc/popbridge/senders"', "mapp: unknown key"),
])
def test_bad_senders_values_name_the_key(tmp_path, line, problem) -> None:
    assert error(tmp_path, POLICY + LDAP + f"[senders]\n{line}\n").startswith(f"[senders] {problem}")


def test_missing_map_file_names_the_key_and_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    assert error(tmp_path, POLICY + f'[senders]\nmap = "{missing}"\n') == (
        f"[senders] map: cannot read {missing}: No such file or directory"
    )


def test_broken_map_file_names_the_key_the_path_and_the_line(tmp_path) -> None:
    broken = tmp_path / "senders"
    broken.write_text("alice@example.org alice\nbob bob\n")
    assert error(tmp_path, POLICY + f'[senders]\nmap = "{broken}"\n') == (
        f"[senders] map: {broken} line 2: 'bob' is not address@domain or @domain"
    )


def test_binary_map_file_is_refused(tmp_path) -> None:
    binary = tmp_path / "senders.db"
    binary.write_bytes(b"\x00\xff\xfe hash database")
    assert error(tmp_path, POLICY + f'[senders]\nmap = "{binary}"\n') == f"[senders] map: {binary} is not UTF-8 text"
