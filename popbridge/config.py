"""The configuration file: one TOML file read into frozen dataclasses.

Every error is a `ConfigError` whose message names the file and the key, for example
``popbridge.toml: [[lookup]] #2 listen: ...``. Unknown keys are errors too: a misspelt key that
was silently ignored would leave an operator believing a setting is in force.

Endpoint strings are checked by parsing them with Twisted's own parsers, which have no side
effects until `listen()` / `connect()`.
"""

import grp
import ipaddress
import pwd
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPException
from ldap3.operation.search import parse_filter
from twisted.internet.endpoints import _parse, clientFromString, serverFromString  # _parse: Twisted's tokenizer

from popbridge.config_tls import TLS_KEYS, TlsConfig, proxy_tls
from popbridge.ledger.spec import DEFAULT_STORE, parse_store

PROXY_PROTOCOLS = ("pop3", "imap4")
COUNT_KEYS = ("max_line", "max_literal", "max_bad_commands", "max_sessions", "max_sessions_per_client")
LIMIT_KEYS = ("idle_timeout", "login_timeout", "session_idle_timeout", "shutdown_grace", *COUNT_KEYS)
LOOKUP_PROTOCOLS = ("policy", "socketmap", "whoson")


class ConfigError(ValueError):
    """The configuration file is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class LedgerConfig:
    ttl: float = 1800.0
    store: str = DEFAULT_STORE  # see popbridge.ledger.spec
    ipv6_prefix: int = 128
    redis_password: str = field(default="", repr=False)  # from redis_password_file
    redis_timeout: float = 0.5  # seconds a Redis call may take before lookups answer tempfail


@dataclass(frozen=True)
class ProxyConfig:
    protocol: str
    listen: str
    backend: str
    forward_client_address: bool = False
    idle_timeout: float = 60.0  # seconds without input from the client before it logs in
    login_timeout: float = 300.0  # seconds from connect to login, however busy the client is
    session_idle_timeout: float | None = None  # after the login; None: 600 (POP3) / 1800 (IMAP4)
    connect_timeout: float = 10.0  # seconds to reach the backend
    max_line: int = 16_384  # bytes in one line before the login
    max_literal: int = 65_536  # bytes in one IMAP literal before the login
    max_bad_commands: int = 5  # refused or failed commands (logins included) before the close
    max_sessions: int = 5_000  # open sessions on this listener
    max_sessions_per_client: int = 50  # open sessions from one client address
    shutdown_grace: float = 30.0  # seconds logged-in sessions may go on after SIGTERM
    tls: TlsConfig = TlsConfig()
    bind: str = ""  # the endpoint actually bound: `listen` without haproxy:, with ssl: turned into tcp:
    proxy_header: bool = False  # an haproxy: listener: a PROXY header comes first
    trusted_proxies: tuple[str, ...] = ()  # networks whose PROXY headers are believed

    @property
    def listen_endpoint(self) -> str:
        return self.bind or self.listen

    @property
    def idle_after_login(self) -> float:
        """RFC 1939 asks for at least 10 minutes, RFC 9051 for at least 30 (IDLE re-issues every 29)."""
        if self.session_idle_timeout is not None:
            return self.session_idle_timeout
        return 1800.0 if self.protocol == "imap4" else 600.0


@dataclass(frozen=True)
class LookupConfig:
    protocol: str
    listen: str
    authorised_action: str = "OK"
    unknown_action: str = "DUNNO"
    tempfail_action: str = "DEFER_IF_PERMIT Service temporarily unavailable"
    exempt_action: str = ""  # policy only: the answer for exempt addresses ("" = authorised_action)
    allow_updates: bool = False
    idle_timeout: float = 600.0  # Postfix keeps policy connections for up to 300 s idle
    owner: str | None = None  # unix socket owner and group, set after binding (as root)
    group: str | None = None


@dataclass(frozen=True)
class LdapConfig:
    """``[ldap]``: where per-user facts (exempt? which mail host?) come from.

    `urls` are tried in order (fail-over). `bind_password` is kept out of repr so that it
    cannot reach a log line or an error message by accident.
    """

    urls: tuple[str, ...]
    base: str
    start_tls: bool = False
    bind_dn: str = ""
    bind_password: str = field(default="", repr=False)
    user_filter: str = "(uid={user})"
    exempt_filter: str = ""  # "" = nobody is exempt
    backend_attribute: str = ""  # "" = no per-user routing
    cache_ttl: float = 300.0  # seconds an answer about an existing user is fresh
    negative_cache_ttl: float = 60.0  # seconds "no such user" is fresh
    stale_ttl: float = 3600.0  # seconds past freshness an answer may still serve while LDAP is down
    timeout: float = 3.0  # seconds a look-up may take before the cached answer or the fallback serves


@dataclass(frozen=True)
class ControlConfig:
    listen: str
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: where Prometheus scrapes ``/metrics`` (keep it on loopback or a trusted net)."""

    listen: str


@dataclass(frozen=True)
class DemoConfig:
    """An in-process demo POP3 server (``popbridge demo``); never for production."""

    listen: str
    users: Mapping[str, str] = field(default_factory=dict)
    messages: int = 2


@dataclass(frozen=True)
class Config:
    source: str
    ledger: LedgerConfig = LedgerConfig()
    proxies: tuple[ProxyConfig, ...] = ()
    lookups: tuple[LookupConfig, ...] = ()
    control: ControlConfig | None = None
    demo: DemoConfig | None = None
    ldap: LdapConfig | None = None
    metrics: MetricsConfig | None = None


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
    reader = _Reader(source)
    reader.only_keys("", document, ("ledger", "proxy", "lookup", "control", "demo", "ldap", "metrics"))
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
        ldap=_ldap(reader, document["ldap"]) if "ldap" in document else None,
        metrics=_metrics(reader, document["metrics"]) if "metrics" in document else None,
        demo=_demo(reader, document["demo"]) if "demo" in document else None,
    )
    _check_exempt_action(reader, config)
    if not (config.proxies or config.lookups):
        raise ConfigError(f"{source}: nothing to do: no [[proxy]] and no [[lookup]]")
    return config


def _ledger(reader: "_Reader", table: Mapping[str, Any]) -> LedgerConfig:
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
            reader.fail(where, key, "only for a \"redis://\" or \"rediss://\" store")
    password = ""
    if "redis_password_file" in table:
        path = reader.string(where, table, "redis_password_file")
        try:
            password = Path(path).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            reader.fail(where, "redis_password_file", f"cannot read {path}: {getattr(e, 'strerror', None) or e}")
    prefix = int(reader.number(where, table, "ipv6_prefix", LedgerConfig.ipv6_prefix, minimum=1, integer=True))
    if prefix > 128:
        reader.fail(where, "ipv6_prefix", f"{prefix} is not a prefix length (1-128)")
    return LedgerConfig(
        ttl=ttl, store=store, ipv6_prefix=prefix, redis_password=password,
        redis_timeout=reader.number(where, table, "redis_timeout", LedgerConfig.redis_timeout, minimum=0.01),
    )


def _proxy(reader: "_Reader", where: str, table: Mapping[str, Any]) -> ProxyConfig:
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


def _lookup(reader: "_Reader", where: str, table: Mapping[str, Any]) -> LookupConfig:
    protocol = reader.choice(where, table, "protocol", LOOKUP_PROTOCOLS)
    allowed = ["protocol", "listen", "idle_timeout", "owner", "group"]
    allowed += ["allow_updates"] if protocol == "whoson" else ["authorised_action", "unknown_action", "tempfail_action"]
    allowed += ["exempt_action"] if protocol == "policy" else []
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
        owner=reader.account(where, table, "owner"),
        group=reader.account(where, table, "group"),
        idle_timeout=reader.number(where, table, "idle_timeout", defaults.idle_timeout, minimum=1),
    )


def _control(reader: "_Reader", value: Any) -> ControlConfig:
    table = reader.table("[control]", value)
    reader.only_keys("[control]", table, ("listen", "owner", "group"))
    return ControlConfig(
        listen=reader.endpoint("[control]", table, "listen", serverFromString),
        owner=reader.account("[control]", table, "owner"),
        group=reader.account("[control]", table, "group"),
    )


def _metrics(reader: "_Reader", value: Any) -> MetricsConfig:
    table = reader.table("[metrics]", value)
    reader.only_keys("[metrics]", table, ("listen",))
    return MetricsConfig(listen=reader.endpoint("[metrics]", table, "listen", serverFromString))


LDAP_KEYS = (
    "url", "start_tls", "bind_dn", "bind_password", "bind_password_file", "base", "user_filter",
    "exempt_filter", "backend_attribute", "cache_ttl", "negative_cache_ttl", "stale_ttl", "timeout",
)


def _ldap(reader: "_Reader", value: Any) -> LdapConfig:
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


def _bind_password(reader: "_Reader", where: str, table: Mapping[str, Any]) -> str:
    if "bind_password" in table and "bind_password_file" in table:
        reader.fail(where, "bind_password_file", "give bind_password or bind_password_file, not both")
    if "bind_password" in table:
        if not isinstance(table["bind_password"], str) or not table["bind_password"]:
            reader.fail(where, "bind_password", "must be a non-empty string")
        return str(table["bind_password"])
    if "bind_password_file" not in table:
        return ""
    path = reader.string(where, table, "bind_password_file")
    try:
        password = Path(path).read_text().rstrip("\r\n")  # editors add a final newline
    except (OSError, UnicodeDecodeError) as e:
        reader.fail(where, "bind_password_file", f"cannot read {path}: {getattr(e, 'strerror', None) or e}")
    if not password:
        reader.fail(where, "bind_password_file", f"{path} is empty")
    return password


def _check_exempt_action(reader: "_Reader", config: Config) -> None:
    """An exempt_action that can never be answered would leave the operator believing it works."""
    for n, lookup in enumerate(config.lookups, 1):
        if lookup.exempt_action and (config.ldap is None or not config.ldap.exempt_filter):
            reader.fail(f"[[lookup]] #{n}", "exempt_action", "needs an [ldap] table with an exempt_filter")


def _demo(reader: "_Reader", value: Any) -> DemoConfig:
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


@dataclass(frozen=True)
class _Reader:
    """Typed access to TOML values; every complaint names the file, the table and the key."""

    source: str

    def fail(self, where: str, key: str, problem: str) -> NoReturn:
        prefix = f"{where} {key}" if where else key
        raise ConfigError(f"{self.source}: {prefix}: {problem}")

    def only_keys(self, where: str, table: Mapping[str, Any], allowed: tuple[str, ...] | list[str], note: str = "") -> None:
        for key in table:
            if key not in allowed:
                self.fail(where, key, f"unknown key{' ' + note if note else ''} (known: {', '.join(allowed)})")

    def table(self, where: str, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: {where}: must be a table")
        return value

    def array(self, where: str, value: Any) -> list[Mapping[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ConfigError(f"{self.source}: {where}: must be an array of tables")
        return value

    def required(self, where: str, table: Mapping[str, Any], key: str) -> Any:
        if key not in table:
            self.fail(where, key, "missing")
        return table[key]

    def string(self, where: str, table: Mapping[str, Any], key: str, default: str | None = None) -> str:
        value = table.get(key, default) if default is not None else self.required(where, table, key)
        if not isinstance(value, str) or not value:
            self.fail(where, key, "must be a non-empty string")
        return value

    def choice(self, where: str, table: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
        value = self.string(where, table, key)
        if value not in choices:
            self.fail(where, key, f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value

    def action(self, where: str, table: Mapping[str, Any], key: str, default: str) -> str:
        value = self.string(where, table, key, default)
        if any(c in value for c in "\r\n\0"):
            self.fail(where, key, "must be one line")
        return value

    def ldap_filter(self, where: str, table: Mapping[str, Any], key: str, default: str) -> str:
        value = self.string(where, table, key, default or None)
        try:  # checked with {user} filled in, as it will be used
            parse_filter(value.replace("{user}", "x"), None, False, False, None, False)
        except LDAPException as e:
            self.fail(where, key, f"not an LDAP filter {value!r}: {e}")
        return value

    def boolean(self, where: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.fail(where, key, "must be true or false")
        return value

    def number(
        self, where: str, table: Mapping[str, Any], key: str, default: float, minimum: float, integer: bool = False
    ) -> float:
        value = table.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            self.fail(where, key, f"must be {'an integer' if integer else 'a number'} >= {minimum}")
        return value

    def account(self, where: str, table: Mapping[str, Any], key: str) -> str | None:
        """A user ("owner") or group ("group") name that exists on this machine, or None."""
        if key not in table:
            return None
        name = self.string(where, table, key)
        try:
            (pwd.getpwnam if key == "owner" else grp.getgrnam)(name)
        except KeyError:
            self.fail(where, key, f"no such {'user' if key == 'owner' else 'group'} {name!r}")
        if not table.get("listen", "").startswith("unix:"):
            self.fail(where, key, "only unix: sockets have an owner and a group")
        return name

    def networks(self, where: str, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(where, key, 'must be a list of networks like ["127.0.0.1/32"]')
        try:
            return tuple(str(ipaddress.ip_network(item, strict=False)) for item in value)
        except ValueError as e:
            self.fail(where, key, str(e))

    def endpoint(self, where: str, table: Mapping[str, Any], key: str, parse: Callable[[Any, str], object]) -> str:
        description = self.string(where, table, key)
        if description.startswith("systemd:"):
            return self.systemd_endpoint(where, key, description)
        try:
            parse(_UNUSED_REACTOR, description)
        except Exception as e:  # Twisted's parsers raise ValueError, TypeError, KeyError...
            self.fail(where, key, f"not a usable endpoint {description!r}: {e}")
        return description


    def systemd_endpoint(self, where: str, key: str, description: str) -> str:
        """A socket passed by systemd, checked for form only.

        Twisted's parser looks the descriptor up at once, and only a process that systemd
        started has it; `popbridge check-config` (or ExecStartPre) must still pass.
        """
        args, kwargs = _parse(description)
        problem = ""
        if args != ["systemd"] or not set(kwargs) <= {"domain", "index", "name"}:
            problem = "takes domain= and one of index= or name= only"
        elif kwargs.get("domain") not in ("INET", "INET6", "UNIX"):
            problem = "domain= must be INET, INET6 or UNIX"
        elif ("index" in kwargs) == ("name" in kwargs):
            problem = "give exactly one of index= (a number) or name= (the unit's FileDescriptorName=)"
        elif "index" in kwargs and not kwargs["index"].isdigit():
            problem = "index= must be a number"
        if problem:
            self.fail(where, key, f"not a usable endpoint {description!r}: {problem}")
        return description


_UNUSED_REACTOR = object()  # endpoint parsers only store the reactor; nothing is bound or connected
