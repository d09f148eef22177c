"""The blocking half of the directory: ldap3 connections and the search for one user.

Everything here runs in a worker thread (never on the reactor) and neither logs nor reads a
clock: it returns what it found, with a note for the operator when an entry looks wrong, and
raises on trouble. `popbridge.directory` turns that into cached answers and log lines.

Security rules kept here: the login name is escaped (RFC 4515, `escape_filter_chars`) before it
goes into `user_filter`, and a filter that matches more than one entry finds nobody, so no
crafted name can borrow another user's facts even if a filter were written carelessly.
"""

import math
import re
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ldap3 import BASE, NONE, NO_ATTRIBUTES, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from popbridge.senders.map import is_address, sender_key
from popbridge.settings import LdapConfig

T = TypeVar("T")

SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT = 0, 4, 32
# a host name, IPv4 address or [IPv6] literal, with an optional port
_BACKEND = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?")


class DirectoryError(LDAPException):
    """The server refused or failed an operation (bind, StartTLS, search)."""


@dataclass(frozen=True)
class UserFacts:
    """What the directory says about one user."""

    exempt: bool = False  # the entry matches `exempt_filter`
    backend: str | None = None  # `backend_attribute`: "host" or "host:port"; None = default backend
    addresses: frozenset[str] = frozenset()  # sender addresses from [senders] ldap_attributes
    answered: bool = True  # False only for the directory's FALLBACK: LDAP could not say


@dataclass(frozen=True)
class Found:
    """One search's outcome: the user's facts, or None when there is no such (single) user."""

    facts: UserFacts | None
    note: str = ""  # something the operator should hear about, logged by the caller


def user_filter(template: str, user: str) -> str:
    """`template` with every ``{user}`` replaced by the RFC 4515-escaped login name.

    `str.replace`, not `str.format`: an LDAP filter may legitimately contain braces.
    """
    return template.replace("{user}", escape_filter_chars(user))


def search_user(config: LdapConfig, user: str, connection: Connection, address_attributes: tuple[str, ...] = ()) -> Found:
    """Find `user`'s entry, then ask whether it also matches `exempt_filter` (a base search
    on that entry, so the exempt test can only ever be about this one user). The values of
    `address_attributes` are the sender addresses the user owns."""
    wanted = [config.backend_attribute] if config.backend_attribute else []
    attributes = [*wanted, *address_attributes] or NO_ATTRIBUTES
    time_limit = _whole_seconds(config.timeout)  # the server gives up too
    connection.search(
        config.base, user_filter(config.user_filter, user), SUBTREE,
        attributes=attributes, size_limit=2, time_limit=time_limit,
    )
    code = _result_code(connection, "search")
    entries = [r for r in connection.response or () if r.get("type") == "searchResEntry"]
    if code == NO_SUCH_OBJECT or not entries:
        return Found(None)
    if code == SIZE_LIMIT_EXCEEDED or len(entries) > 1:
        return Found(None, "user_filter matches several entries: treated as no such user")
    entry = entries[0]
    raw = entry.get("raw_attributes") or {}
    backend, note = _backend(config.backend_attribute, raw)
    addresses = frozenset(_addresses(address_attributes, raw))
    exempt = False
    if config.exempt_filter:
        connection.search(entry["dn"], config.exempt_filter, BASE, attributes=NO_ATTRIBUTES, time_limit=time_limit)
        code = _result_code(connection, "exempt search")
        exempt = code == SUCCESS and any(r.get("type") == "searchResEntry" for r in connection.response or ())
    return Found(UserFacts(exempt=exempt, backend=backend, addresses=addresses), note)


def _whole_seconds(seconds: float) -> int:
    """LDAP time limits and ldap3's receive timeout are whole seconds: round up, at least 1.
    The exact `timeout` is enforced on the reactor side; this only frees the thread."""
    return max(1, math.ceil(seconds))


def _result_code(connection: Connection, what: str) -> int:
    result = connection.result or {}
    code = int(result.get("result", -1))
    if code not in (SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT):
        raise DirectoryError(f"{what} failed: {result.get('description', code)} {result.get('message', '')}".strip())
    return code


def _backend(attribute: str, raw: Any) -> tuple[str | None, str]:
    """The first value of `attribute` if it names a host[:port]; else None and a note why."""
    if not attribute:
        return None, ""
    values: list[Any] = next((v for name, v in raw.items() if name.lower() == attribute.lower()), [])
    if not values:
        return None, ""
    value = values[0].decode("utf-8", "replace").strip() if isinstance(values[0], bytes) else str(values[0]).strip()
    match = _BACKEND.fullmatch(value)
    if match is None or (match.group(1) is not None and not 0 < int(match.group(1)) < 65536):
        return None, f"{attribute} {value!r} is not host or host:port: using the default backend"
    note = f"{attribute} has {len(values)} values: using the first, {value!r}" if len(values) > 1 else ""
    return value, note


def _addresses(attributes: tuple[str, ...], raw: Any) -> Iterable[str]:
    """Every value of `attributes` that is an address, normalised (values that are not are skipped)."""
    wanted = {name.lower() for name in attributes}
    for name, values in raw.items():
        if name.lower() in wanted:
            for value in values:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                key = sender_key(text.strip())
                if is_address(key):
                    yield key


class ConnectionPool:
    """Bound connections, reused across queries and shared by the worker threads.

    A connection in use belongs to one thread; at most `size` idle ones are kept, so there are
    never more connections than threads. A connection that raised is closed, not reused: the
    next query opens a fresh one, which is how a restarted or failed-over server is picked up.
    """

    def __init__(self, connect: Callable[[], Connection], size: int) -> None:
        self._connect, self._size = connect, size
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def run(self, query: Callable[[Connection], T]) -> T:
        """`query(connection)` on a pooled or new connection (blocking: call it in a thread)."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connect()
        try:
            result = query(connection)
        except BaseException:
            _close(connection)
            raise
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(connection)
                return result
        _close(connection)
        return result

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            _close(connection)


def _close(connection: Connection) -> None:
    try:
        connection.unbind()
    except Exception:  # closing a broken connection may fail too; it is gone either way
        pass


def ldap_connector(config: LdapConfig) -> Callable[[], Connection]:
    """Opens and binds a connection to the first server of `urls` that answers.

    Fail-over is this loop rather than ldap3's active ServerPool: that one probes every server
    with an extra connection and then sleeps 10 s (POOLING_LOOP_TIMEOUT) after a cycle that
    found none, which would hold a worker thread long after the caller gave up. Each attempt
    here is bounded by `timeout`, and the next query tries the first server again, so a
    restarted primary is used as soon as it answers. A new `Server` per attempt, because an
    ldap3 Server remembers a refused address as unavailable for a while.
    """
    tls = Tls(validate=ssl.CERT_REQUIRED)

    def connect() -> Connection:
        failure: LDAPException | None = None
        for url in config.urls:
            try:
                return _open(config, Server(url, connect_timeout=config.timeout, get_info=NONE, tls=tls))
            except LDAPException as e:
                failure = e
        assert failure is not None  # config guarantees at least one URL
        raise failure

    return connect


def _open(config: LdapConfig, server: Server) -> Connection:
    connection = Connection(
        server,
        user=config.bind_dn or None,
        password=config.bind_password or None,
        receive_timeout=_whole_seconds(config.timeout),  # ldap3 packs it into SO_RCVTIMEO as an int
        read_only=True,
        raise_exceptions=False,
    )
    try:
        connection.open()
        if config.start_tls and not connection.start_tls():
            raise DirectoryError(f"StartTLS refused by {server.name}: {(connection.result or {}).get('description')}")
        if not connection.bind():
            refusal = (connection.result or {}).get("description")
            raise DirectoryError(f"bind as {config.bind_dn or 'anonymous'} refused by {server.name}: {refusal}")
    except BaseException:
        _close(connection)
        raise
    return connection
