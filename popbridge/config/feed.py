"""The ``[[feed]]`` tables: logins learned from Dovecot's auth-policy requests, no proxy in between."""

from collections.abc import Mapping
from typing import Any

from twisted.internet.endpoints import serverFromString

from popbridge.config.reader import Reader
from popbridge.settings import FeedConfig

FEED_PROTOCOLS = ("dovecot",)
RECORD_POINTS = ("report", "after_auth")
FEED_KEYS = (
    "protocol", "listen", "api_key", "api_key_file", "api_header", "allow_unauthenticated", "protocols",
    "ignore_addresses", "record_on", "timeout",
)


def parse_feed(reader: Reader, where: str, table: Mapping[str, Any]) -> FeedConfig:
    reader.only_keys(where, table, FEED_KEYS)
    unauthenticated = reader.boolean(where, table, "allow_unauthenticated", False)
    key = _api_key(reader, where, table)
    if not key and not unauthenticated:
        reader.fail(where, "api_key", "missing: give api_key or api_key_file (or allow_unauthenticated = true)")
    if key and unauthenticated:
        reader.fail(where, "allow_unauthenticated", "a feed with a key checks it: remove one or the other")
    header = reader.string(where, table, "api_header", FeedConfig.api_header)
    if not all(c.isalnum() or c in "-_" for c in header):
        reader.fail(where, "api_header", f"{header!r} is not an HTTP header name")
    protocols = table.get("protocols", list(FeedConfig.protocols))
    if not isinstance(protocols, list) or not protocols or not all(isinstance(p, str) and p for p in protocols):
        reader.fail(where, "protocols", 'must be a non-empty list of Dovecot service names like ["pop3", "imap"]')
    return FeedConfig(
        protocol=reader.choice(where, table, "protocol", FEED_PROTOCOLS),
        listen=reader.endpoint(where, table, "listen", serverFromString),
        api_key=key,
        api_header=header,
        allow_unauthenticated=unauthenticated,
        protocols=tuple(protocols),
        ignore_addresses=reader.networks(where, table, "ignore_addresses"),
        record_on=reader.choice(where, table, "record_on", RECORD_POINTS) if "record_on" in table else "report",
        timeout=reader.number(where, table, "timeout", FeedConfig.timeout, minimum=1),
    )


def _api_key(reader: Reader, where: str, table: Mapping[str, Any]) -> str:
    """The key from api_key or api_key_file; complaints name the key, never the value."""
    if "api_key" in table and "api_key_file" in table:
        reader.fail(where, "api_key_file", "give api_key or api_key_file, not both")
    if "api_key" in table:
        if not isinstance(table["api_key"], str):
            reader.fail(where, "api_key", "must be a string")
        key, name = str(table["api_key"]), "api_key"
    elif "api_key_file" in table:
        key, name = reader.secret_file(where, table, "api_key_file"), "api_key_file"
    else:
        return ""
    # HTTP trims a header value and cannot carry control characters: such a key could never match
    if not key or key != key.strip() or not key.isprintable() or not key.isascii():
        reader.fail(where, name, "the key must be non-empty printable ASCII without surrounding spaces")
    return key
