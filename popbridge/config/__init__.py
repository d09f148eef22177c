"""The configuration file: one TOML file read into the frozen dataclasses of `popbridge.settings`.

Every error is a `ConfigError` whose message names the file and the key, for example
``popbridge.toml: [[lookup]] #2 listen: ...``. Unknown keys are errors too: a misspelt key that
was silently ignored would leave an operator believing a setting is in force.

Endpoint strings are checked by parsing them with Twisted's own parsers, which have no side
effects until `listen()` / `connect()`.
"""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import clientFromString, serverFromString

from popbridge.config.feed import parse_feed
from popbridge.config.ldap import parse_ldap
from popbridge.config.reader import ConfigError, Reader
from popbridge.config.senders import parse_senders
from popbridge.config.tls import TLS_KEYS, proxy_tls
from popbridge.ledger.spec import parse_store
from popbridge.settings import (
    Config, ControlConfig, DaemonConfig, DemoConfig, LedgerConfig, LookupConfig, MetricsConfig, ProxyConfig,
)

__all__ = ["ConfigError", "load_config", "parse_config"]

PROXY_PROTOCOLS = ("pop3", "imap4")
COUNT_KEYS = ("max_line", "max_literal", "max_bad_commands", "max_sessions", "max_sessions_per_client")
LIMIT_KEYS = ("idle_timeout", "login_timeout", "session_idle_timeout", "shutdown_grace", *COUNT_KEYS)
LOOKUP_PROTOCOLS = ("policy", "socketmap", "whoson")


def load_config(path: str | Path) -> Config:
    """Read and check `path`; raises ConfigError naming the file and the key."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: not valid TOML: {e}") from None
    return parse_config(document, name)


def parse_config(document: Mapping[str, Any], source: str) -> Config:
    reader = Reader(source)
    reader.only_keys("", document, ("ledger", "proxy", "lookup", "control", "demo", "ldap", "metrics", "senders", "feed", "daemon"))
    config = Config(
        source=source,
        ledger=_ledger(reader, reader.table("[ledger]", document.get("ledger", {}))),
        proxies=tuple(
            _proxy(reader, f"[[proxy]] #{n}", table)
            for n, table in enumerate(reader.array("[[proxy]]", document.get("proxy", [])), 1)
        ),
        lookups=tuple(
            _lookup(reader, f"[[lookup]] #{n}", table)
            for n, table in enumerate(reader.array("[[lookup]]", document.get("lookup", [])), 1)
        ),
        control=_control(reader, document["control"]) if "control" in document else None,
        ldap=parse_ldap(reader, document["ldap"]) if "ldap" in document else None,
        metrics=_metrics(reader, document["metrics"]) if "metrics" in document else None,
        demo=_demo(reader, document["demo"]) if "demo" in document else None,
        senders=parse_senders(reader, document["senders"]) if "senders" in document else None,
        feeds=tuple(
            parse_feed(reader, f"[[feed]] #{n}", table)
            for n, table in enumerate(reader.array("[[feed]]", document.get("feed", [])), 1)
        ),
        daemon=_daemon(reader, document.get("daemon", {})),
    )
    _check_exempt_action(reader, config)
    _check_senders(reader, config)
    if not (config.proxies or config.lookups):
        raise ConfigError(f"{source}: nothing to do: no [[proxy]] and no [[lookup]]")
    return config


def _ledger(reader: Reader, table: Mapping[str, Any]) -> LedgerConfig:
    where = "[ledger]"
    reader.only_keys(where, table, ("ttl", "store", "ipv6_prefix", "redis_password_file", "redis_timeout"))
    ttl = reader.number(where, table, "ttl", LedgerConfig.ttl, minimum=1)
    store = reader.string(where, table, "store", LedgerConfig.store)
    try:
        kind = parse_store(store).kind
    except ValueError as e:
        reader.fail(where, "store", str(e))
    for key in ("redis_password_file", "redis_timeout"):
        if key in table and kind != "redis":
            reader.fail(where, key, "only for a \"redis://\", \"rediss://\" or \"redis+sentinel://\" store")
    password = ""
    if "redis_password_file" in table:
        password = reader.secret_file(where, table, "redis_password_file")
    prefix = int(reader.number(where, table, "ipv6_prefix", LedgerConfig.ipv6_prefix, minimum=1, integer=True))
    if prefix > 128:
        reader.fail(where, "ipv6_prefix", f"{prefix} is not a prefix length (1-128)")
    return LedgerConfig(
        ttl=ttl, store=store, ipv6_prefix=prefix, redis_password=password,
        redis_timeout=reader.number(where, table, "redis_timeout", LedgerConfig.redis_timeout, minimum=0.01),
    )


def _proxy(reader: Reader, where: str, table: Mapping[str, Any]) -> ProxyConfig:
    reader.only_keys(
        where,
        table,
        ("protocol", "listen", "backend", "forward_client_address", "connect_timeout", "trusted_proxies", *LIMIT_KEYS, *TLS_KEYS),
    )
    listen = reader.string(where, table, "listen")
    proxy_header = listen.startswith("haproxy:")
    inner = listen.removeprefix("haproxy:")
    if proxy_header and inner.startswith("ssl:"):
        reader.fail(where, "listen", "haproxy:ssl: is not supported: use haproxy:tcp: and STLS/STARTTLS")
    bind, tls = proxy_tls(reader, where, table, inner)
    trusted = reader.networks(where, table, "trusted_proxies")
    if proxy_header and not trusted:
        reader.fail(where, "trusted_proxies", "an haproxy: listener needs the networks its PROXY headers may come from")
    return ProxyConfig(
        protocol=reader.choice(where, table, "protocol", PROXY_PROTOCOLS),
        listen=listen,
        bind=reader.endpoint(where, {"listen": bind}, "listen", serverFromString),
        tls=tls,
        proxy_header=proxy_header,
        trusted_proxies=trusted,
        backend=reader.endpoint(where, table, "backend", clientFromString),
        forward_client_address=reader.boolean(where, table, "forward_client_address", False),
        connect_timeout=reader.number(where, table, "connect_timeout", ProxyConfig.connect_timeout, minimum=1),
        idle_timeout=reader.number(where, table, "idle_timeout", ProxyConfig.idle_timeout, minimum=1),
        login_timeout=reader.number(where, table, "login_timeout", ProxyConfig.login_timeout, minimum=1),
        shutdown_grace=reader.number(where, table, "shutdown_grace", ProxyConfig.shutdown_grace, minimum=0),
        session_idle_timeout=(
            reader.number(where, table, "session_idle_timeout", 0, minimum=1) if "session_idle_timeout" in table else None
        ),
        **{key: int(reader.number(where, table, key, getattr(ProxyConfig, key), minimum=1, integer=True)) for key in COUNT_KEYS},
    )


def _lookup(reader: Reader, where: str, table: Mapping[str, Any]) -> LookupConfig:
    protocol = reader.choice(where, table, "protocol", LOOKUP_PROTOCOLS)
    allowed = ["protocol", "listen", "idle_timeout", "owner", "group"]
    allowed += ["allow_updates"] if protocol == "whoson" else ["authorised_action", "unknown_action", "tempfail_action"]
    allowed += ["exempt_action", "sender_binding", "sender_mismatch_action"] if protocol == "policy" else []
    reader.only_keys(where, table, allowed, note=f"for protocol {protocol!r}")
    defaults = LookupConfig(protocol, "")
    return LookupConfig(
        protocol=protocol,
        listen=reader.endpoint(where, table, "listen", serverFromString),
        authorised_action=reader.action(where, table, "authorised_action", defaults.authorised_action),
        unknown_action=reader.action(where, table, "unknown_action", defaults.unknown_action),
        tempfail_action=reader.action(where, table, "tempfail_action", defaults.tempfail_action),
        exempt_action=reader.action(where, table, "exempt_action", "-") if "exempt_action" in table else "",
        allow_updates=reader.boolean(where, table, "allow_updates", False),
        sender_binding=reader.boolean(where, table, "sender_binding", False),
        sender_mismatch_action=reader.action(where, table, "sender_mismatch_action", defaults.sender_mismatch_action),
        owner=reader.account(where, table, "owner"),
        group=reader.account(where, table, "group"),
        idle_timeout=reader.number(where, table, "idle_timeout", defaults.idle_timeout, minimum=1),
    )


def _control(reader: Reader, value: Any) -> ControlConfig:
    table = reader.table("[control]", value)
    reader.only_keys("[control]", table, ("listen", "owner", "group"))
    return ControlConfig(
        listen=reader.endpoint("[control]", table, "listen", serverFromString),
        owner=reader.account("[control]", table, "owner"),
        group=reader.account("[control]", table, "group"),
    )


def _metrics(reader: Reader, value: Any) -> MetricsConfig:
    table = reader.table("[metrics]", value)
    reader.only_keys("[metrics]", table, ("listen",))
    return MetricsConfig(listen=reader.endpoint("[metrics]", table, "listen", serverFromString))


def _daemon(reader: Reader, value: Any) -> DaemonConfig:
    table = reader.table("[daemon]", value)
    reader.only_keys("[daemon]", table, ("workers",))
    workers = table.get("workers", 0)
    if workers == "auto":
        return DaemonConfig(workers=len(os.sched_getaffinity(0)))
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 256:
        reader.fail("[daemon]", "workers", 'must be "auto" or a whole number from 0 to 256')
    return DaemonConfig(workers=workers)


def _check_exempt_action(reader: Reader, config: Config) -> None:
    """An exempt_action that can never be answered would leave the operator believing it works."""
    for n, lookup in enumerate(config.lookups, 1):
        if lookup.exempt_action and (config.ldap is None or not config.ldap.exempt_filter):
            reader.fail(f"[[lookup]] #{n}", "exempt_action", "needs an [ldap] table with an exempt_filter")


def _check_senders(reader: Reader, config: Config) -> None:
    """Binding without owners would refuse every sender; LDAP attributes need a directory."""
    for n, lookup in enumerate(config.lookups, 1):
        if lookup.sender_binding and config.senders is None:
            reader.fail(f"[[lookup]] #{n}", "sender_binding", "needs a [senders] table (map, ldap_attributes or domains)")
    if config.senders is not None and config.senders.ldap_attributes and config.ldap is None:
        reader.fail("[senders]", "ldap_attributes", "needs an [ldap] table")


def _demo(reader: Reader, value: Any) -> DemoConfig:
    where = "[demo]"
    table = reader.table(where, value)
    reader.only_keys(where, table, ("listen", "users", "messages"))
    users = reader.table(f"{where} users", table.get("users", {}))
    for user, password in users.items():
        if not isinstance(password, str) or not password:
            reader.fail(where, f"users.{user}", "the password must be a non-empty string")
    return DemoConfig(
        listen=reader.endpoint(where, table, "listen", serverFromString),
        users=dict(users),
        messages=int(reader.number(where, table, "messages", 2, minimum=0, integer=True)),
    )
