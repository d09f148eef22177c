"""The ``[ldap]`` table: directory look-ups for exempt users and per-user backends."""

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from popbridge.config.reader import Reader
from popbridge.settings import LdapConfig


LDAP_KEYS = (
    "url", "start_tls", "bind_dn", "bind_password", "bind_password_file", "base", "user_filter",
    "exempt_filter", "backend_attribute", "cache_ttl", "negative_cache_ttl", "stale_ttl", "timeout",
)


def parse_ldap(reader: Reader, value: Any) -> LdapConfig:
    """``[ldap]``; complaints about the password name the key, never the value."""
    where = "[ldap]"
    table = reader.table(where, value)
    reader.only_keys(where, table, LDAP_KEYS)
    urls = table.get("url")
    urls = [urls] if isinstance(urls, str) else urls
    if not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
        reader.fail(where, "url", "must be an ldap:// or ldaps:// URL, or a non-empty list of them")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
            reader.fail(where, "url", f"{url!r} is not ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
    start_tls = reader.boolean(where, table, "start_tls", False)
    if start_tls and any(url.startswith("ldaps:") for url in urls):
        reader.fail(where, "start_tls", "ldaps:// is TLS already; use ldap:// URLs with start_tls")
    bind_dn = reader.string(where, table, "bind_dn") if "bind_dn" in table else ""
    password = _bind_password(reader, where, table)
    if bool(bind_dn) != bool(password):
        reader.fail(where, "bind_dn" if password else "bind_password", "bind_dn and a password go together")
    user_filter = reader.ldap_filter(where, table, "user_filter", LdapConfig.user_filter)
    if "{user}" not in user_filter:
        reader.fail(where, "user_filter", "must contain {user}, where the escaped login name goes")
    return LdapConfig(
        urls=tuple(urls),
        base=reader.string(where, table, "base"),
        start_tls=start_tls,
        bind_dn=bind_dn,
        bind_password=password,
        user_filter=user_filter,
        exempt_filter=reader.ldap_filter(where, table, "exempt_filter", "") if "exempt_filter" in table else "",
        backend_attribute=reader.string(where, table, "backend_attribute") if "backend_attribute" in table else "",
        cache_ttl=reader.number(where, table, "cache_ttl", LdapConfig.cache_ttl, minimum=0),
        negative_cache_ttl=reader.number(where, table, "negative_cache_ttl", LdapConfig.negative_cache_ttl, minimum=0),
        stale_ttl=reader.number(where, table, "stale_ttl", LdapConfig.stale_ttl, minimum=0),
        timeout=reader.number(where, table, "timeout", LdapConfig.timeout, minimum=0.1),
    )


def _bind_password(reader: Reader, where: str, table: Mapping[str, Any]) -> str:
    if "bind_password" in table and "bind_password_file" in table:
        reader.fail(where, "bind_password_file", "give bind_password or bind_password_file, not both")
    if "bind_password" in table:
        if not isinstance(table["bind_password"], str) or not table["bind_password"]:
            reader.fail(where, "bind_password", "must be a non-empty string")
        return str(table["bind_password"])
    if "bind_password_file" not in table:
        return ""
    password = reader.secret_file(where, table, "bind_password_file")
    if not password:
        reader.fail(where, "bind_password_file", f"{table['bind_password_file']} is empty")
    return password


