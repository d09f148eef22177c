"""``[[feed]]``: what loads, and errors that name the key, never the API key."""

import pytest

from popbridge.settings import FeedConfig

from .test_config import error as config_error
from .test_config import load

LOOKUP = '[[lookup]]\nprotocol = "policy"\nlisten = "unix:address=/tmp/p"\n'
FEED = '[[feed]]\nprotocol = "dovecot"\nlisten = "tcp:port=8998:interface=127.0.0.1"\n'
SECRET = "feed-key-not-for-logs"


def error(tmp_path, text) -> str:
    message = config_error(tmp_path, text)
    assert SECRET not in message
    return message


def test_a_feed_with_a_key_gets_the_documented_defaults(tmp_path) -> None:
    (feed,) = load(tmp_path, LOOKUP + FEED + f'api_key = "{SECRET}"\n').feeds
    assert feed == FeedConfig(protocol="dovecot", listen="tcp:port=8998:interface=127.0.0.1", api_key=SECRET)
    assert (feed.api_header, feed.protocols, feed.ignore_addresses, feed.record_on) == (
        "X-API-Key", ("pop3", "imap"), (), "report"
    )
    assert SECRET not in repr(feed)


def test_every_key_of_the_issue_loads(tmp_path) -> None:
    key_file = tmp_path / "feed.key"
    key_file.write_text(SECRET + "\n")
    text = LOOKUP + FEED + f"""api_key_file = "{key_file}"
api_header = "X-Policy-Key"
protocols = ["pop3", "imap", "sieve"]
ignore_addresses = ["127.0.0.1", "::1", "10.1.0.0/16"]
record_on = "after_auth"
"""
    (feed,) = load(tmp_path, text).feeds
    assert feed.api_key == SECRET
    assert feed.api_header == "X-Policy-Key" and feed.protocols == ("pop3", "imap", "sieve")
    assert feed.ignore_addresses == ("127.0.0.1/32", "::1/128", "10.1.0.0/16")
    assert feed.record_on == "after_auth"


def test_a_feed_and_a_lookup_make_a_daemon_without_a_proxy(tmp_path) -> None:
    config = load(tmp_path, LOOKUP + FEED + 'allow_unauthenticated = true\n')
    assert config.proxies == () and config.feeds[0].api_key == ""


def test_a_feed_needs_a_key_unless_unauthenticated_is_allowed(tmp_path) -> None:
    assert "[[feed]] #1 api_key: missing" in error(tmp_path, LOOKUP + FEED)


def test_a_key_and_allow_unauthenticated_are_not_both_given(tmp_path) -> None:
    assert "[[feed]] #1 allow_unauthenticated:" in error(
        tmp_path, LOOKUP + FEED + f'api_key = "{SECRET}"\nallow_unauthenticated = true\n'
    )


def test_the_key_and_its_file_are_not_both_given(tmp_path) -> None:
    assert "api_key_file: give api_key or api_key_file" in error(
        tmp_path, LOOKUP + FEED + f'api_key = "{SECRET}"\napi_key_file = "/x"\n'
    )


def test_an_unreadable_key_file_is_named(tmp_path) -> None:
    assert f"api_key_file: cannot read {tmp_path}/missing" in error(
        tmp_path, LOOKUP + FEED + f'api_key_file = "{tmp_path}/missing"\n'
    )


@pytest.mark.parametrize("key", [" " + SECRET, SECRET + "\\t", "", "clé-" + SECRET])
def test_a_key_http_cannot_carry_unchanged_is_refused(tmp_path, key: str) -> None:
    assert "[[feed]] #1 api_key: the key must be" in error(tmp_path, LOOKUP + FEED + f'api_key = "{key}"\n')


@pytest.mark.parametrize(
    "line, key",
    [
        ('protocol = "weakforced"', "protocol"),
        ('record_on = "allow"', "record_on"),
        ('ignore_addresses = ["webmail"]', "ignore_addresses"),
        ("protocols = []", "protocols"),
        ('api_header = "X-API-Key: x"', "api_header"),
        ('listen = "tcp:port=nope"', "listen"),
        ("colour = 1", "colour"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path, line: str, key: str) -> None:
    base = {"api_key": f'"{SECRET}"', "protocol": '"dovecot"', "listen": '"tcp:port=8998"'}
    table = "".join(f"{name} = {value}\n" for name, value in base.items() if name != key)
    assert f"[[feed]] #1 {key}:" in error(tmp_path, LOOKUP + "[[feed]]\n" + table + line + "\n")
