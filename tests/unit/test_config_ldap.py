"""``[ldap]`` and ``exempt_action``: what loads, and errors that name the key, never the password."""

import pytest

from popbridge.settings import LdapConfig

from .test_config import error, load

POLICY = '[[lookup]]\nprotocol = "policy"\nlisten = "unix:address=/tmp/p"\n'
LDAP = """
[ldap]
url = "ldap://ldap.example.org"
base = "dc=example,dc=org"
"""
SECRET = "hunter2-not-for-logs"


def test_minimal_ldap_table_gets_the_documented_defaults(tmp_path) -> None:
    ldap = load(tmp_path, POLICY + LDAP).ldap
    assert ldap == LdapConfig(urls=("ldap://ldap.example.org",), base="dc=example,dc=org")
    assert ldap.user_filter == "(uid={user})" and not ldap.exempt_filter and not ldap.backend_attribute
    assert (ldap.cache_ttl, ldap.negative_cache_ttl, ldap.stale_ttl, ldap.timeout) == (300, 60, 3600, 3)


def test_every_key_of_the_issue_loads(tmp_path) -> None:
    text = POLICY + f"""
[ldap]
url = ["ldaps://ldap1.example.org", "ldaps://ldap2.example.org:1636"]
bind_dn = "cn=popbridge,ou=services,dc=example,dc=org"
bind_password = "{SECRET}"
base = "ou=people,dc=example,dc=org"
user_filter = "(&(objectClass=inetOrgPerson)(uid={{user}}))"
exempt_filter = "(memberOf=cn=exempt,ou=groups,dc=example,dc=org)"
backend_attribute = "mailHost"
cache_ttl = 120
negative_cache_ttl = 30
stale_ttl = 900
timeout = 1.5
"""
    ldap = load(tmp_path, text).ldap
    assert ldap.urls == ("ldaps://ldap1.example.org", "ldaps://ldap2.example.org:1636")
    assert ldap.bind_password == SECRET and SECRET not in repr(ldap)
    assert ldap.backend_attribute == "mailHost" and ldap.timeout == 1.5


def test_password_may_come_from_a_file_without_its_newline(tmp_path) -> None:
    secret = tmp_path / "bind.pw"
    secret.write_text(SECRET + "\n")
    text = POLICY + LDAP + f'bind_dn = "cn=pb"\nbind_password_file = "{secret}"\n'
    assert load(tmp_path, text).ldap.bind_password == SECRET


def test_password_and_password_file_together_is_an_error(tmp_path) -> None:
    text = POLICY + LDAP + f'bind_dn = "cn=pb"\nbind_password = "{SECRET}"\nbind_password_file = "/x"\n'
    message = error(tmp_path, text)
    assert "[ldap] bind_password_file: give bind_password or bind_password_file, not both" in message
    assert SECRET not in message


def test_unreadable_password_file_names_the_key(tmp_path) -> None:
    text = POLICY + LDAP + f'bind_dn = "cn=pb"\nbind_password_file = "{tmp_path}/absent"\n'
    assert "[ldap] bind_password_file: cannot read" in error(tmp_path, text)


def test_bind_dn_without_a_password_is_an_error(tmp_path) -> None:
    assert "[ldap] bind_password: bind_dn and a password go together" in error(
        tmp_path, POLICY + LDAP + 'bind_dn = "cn=pb"\n'
    )


def test_password_of_the_wrong_type_is_not_echoed(tmp_path) -> None:
    message = error(tmp_path, POLICY + LDAP + 'bind_dn = "cn=pb"\nbind_password = 12345678\n')
    assert "[ldap] bind_password: must be a non-empty string" in message and "12345678" not in message


@pytest.mark.parametrize("url", ['"http://ldap.example.org"', '"ldap://"', "[]", "389", '"ldap://h/dc=x"'])
def test_url_must_be_ldap_or_ldaps(tmp_path, url) -> None:
    text = POLICY + LDAP.replace('"ldap://ldap.example.org"', url)
    assert ": [ldap] url: " in error(tmp_path, text)


def test_start_tls_over_ldaps_is_an_error(tmp_path) -> None:
    text = POLICY + LDAP.replace("ldap://", "ldaps://") + "start_tls = true\n"
    assert "[ldap] start_tls:" in error(tmp_path, text)


def test_user_filter_needs_the_user_placeholder(tmp_path) -> None:
    assert "[ldap] user_filter: must contain {user}" in error(tmp_path, POLICY + LDAP + 'user_filter = "(uid=x)"\n')


@pytest.mark.parametrize("key", ["user_filter", "exempt_filter"])
def test_filters_must_parse(tmp_path, key) -> None:
    assert f"[ldap] {key}: not an LDAP filter" in error(tmp_path, POLICY + LDAP + f'{key} = "uid={{user}}"\n')


def test_missing_base_and_unknown_keys_are_errors(tmp_path) -> None:
    assert "[ldap] base: missing" in error(tmp_path, POLICY + '[ldap]\nurl = "ldap://h"\n')
    assert "[ldap] bind_pasword: unknown key" in error(tmp_path, POLICY + LDAP + 'bind_pasword = "x"\n')


def test_timeout_must_be_positive(tmp_path) -> None:
    assert "[ldap] timeout: must be a number" in error(tmp_path, POLICY + LDAP + "timeout = 0\n")


def test_exempt_action_is_read_for_policy_listeners(tmp_path) -> None:
    text = POLICY + 'exempt_action = "FILTER smtp:[127.0.0.1]:10025"\n' + LDAP + 'exempt_filter = "(memberOf=cn=x)"\n'
    assert load(tmp_path, text).lookups[0].exempt_action == "FILTER smtp:[127.0.0.1]:10025"


def test_exempt_action_without_an_exempt_filter_is_an_error(tmp_path) -> None:
    text = POLICY + 'exempt_action = "FILTER smtp:[127.0.0.1]:10025"\n'
    assert "[[lookup]] #1 exempt_action: needs an [ldap] table with an exempt_filter" in error(tmp_path, text)
    assert "exempt_action: needs an [ldap]" in error(tmp_path, text + LDAP)


def test_exempt_action_is_a_policy_setting_only(tmp_path) -> None:
    text = '[[lookup]]\nprotocol = "socketmap"\nlisten = "unix:address=/tmp/s"\nexempt_action = "OK"\n'
    assert "[[lookup]] #1 exempt_action: unknown key for protocol 'socketmap'" in error(tmp_path, text)
