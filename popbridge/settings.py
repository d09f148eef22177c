"""Every key of the configuration file, as frozen dataclasses: what the daemon runs on.

No parsing and no I/O here, and no import of anything else in popbridge: this module is the
bottom of the import graph, so the ledger, directory, proxy and lookup packages read their
settings without importing the TOML parser (`popbridge.config`), which imports them in turn.
Defaults are the documented defaults of each key.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the loaded sender rules are data from popbridge.senders.map
    from popbridge.senders.map import SenderRules

DEFAULT_SQLITE_PATH = "/var/lib/popbridge/ledger.sqlite3"
DEFAULT_STORE = f"sqlite:{DEFAULT_SQLITE_PATH}"


@dataclass(frozen=True)
class TlsConfig:
    """TLS keys of one [[proxy]] table (tls_*, require_tls, backend_*)."""

    certificate: str | None = None  # PEM, leaf first then chain; offered as STLS/STARTTLS
    key: str | None = None
    implicit: bool = False  # an ssl: listener: TLS from the first byte
    require: bool = False  # refuse logins before TLS
    minimum_version: str = "TLSv1.2"
    backend_starttls: bool = False
    backend_ca: str | None = None  # PEM CA file; None: the system's trust store
    backend_hostname: str | None = None  # checked against the backend's certificate
    backend_verify: bool = True

    @property
    def offered(self) -> bool:
        return self.certificate is not None


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
    # DEFER, not DEFER_IF_PERMIT: the reject_unauth_destination after the policy check would
    # turn that into "554 Relay access denied" (README: Postfix main.cf)
    tempfail_action: str = "DEFER 4.3.0 Service temporarily unavailable"
    exempt_action: str = ""  # policy only: the answer for exempt addresses ("" = authorised_action)
    sender_binding: bool = False  # policy only: the sender must be owned by a user logged in there
    sender_mismatch_action: str = "REJECT 5.7.1 Sender address is not yours"
    allow_updates: bool = False
    idle_timeout: float = 600.0  # Postfix keeps policy connections for up to 300 s idle
    owner: str | None = None  # unix socket owner and group, set after binding (as root)
    group: str | None = None


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
class DaemonConfig:
    """``[daemon]``: how the daemon runs. `workers` 0 is one process; N proxy worker processes
    otherwise (``"auto"``: one per usable CPU, resolved when the file is read)."""

    workers: int = 0


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
class FeedConfig:
    """``[[feed]]``: where Dovecot POSTs its auth-policy requests, and which of them are logins.

    `api_key` is kept out of repr so that it cannot reach a log line or an error message.
    """

    protocol: str
    listen: str
    api_key: str = field(default="", repr=False)  # "" only with allow_unauthenticated
    api_header: str = "X-API-Key"
    allow_unauthenticated: bool = False
    protocols: tuple[str, ...] = ("pop3", "imap")
    ignore_addresses: tuple[str, ...] = ()  # networks, as ipaddress writes them
    record_on: str = "report"
    timeout: float = 60.0  # seconds an HTTP connection may sit idle (Dovecot keeps its own idle for 10 s)


@dataclass(frozen=True)
class SendersConfig:
    """``[senders]``: `map` (a path) and `domains` as loaded into `rules`; `ldap_attributes`
    name the attributes of a user's entry that hold their addresses.

    `rules` is the one value here that is not a key as written: the map file is read with the
    rest of the configuration, so a broken map is a configuration error (popbridge.config.senders).
    """

    rules: "SenderRules"
    map: str = ""
    ldap_attributes: tuple[str, ...] = ()


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
    senders: SendersConfig | None = None
    feeds: tuple[FeedConfig, ...] = ()
    daemon: DaemonConfig = DaemonConfig()
