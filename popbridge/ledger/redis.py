"""The Redis store: one ledger shared by several popbridge nodes.

Why it is built this way:

- **Client: redis-py in a thread pool, not txredisapi.** redis-py is the client Redis itself
  maintains (TLS for ``rediss://``, URLs, Lua scripts, reconnection per command); txredisapi
  is Twisted-native but has one maintainer, and a command sent while it is disconnected
  waits in its queue for as long as Redis is away. Here every call runs in a small thread
  pool with socket timeouts of `timeout` seconds, and the reactor side gives up after the
  same `timeout` (`addTimeout`), so the reactor never blocks and a lookup answers a
  temporary failure (`LedgerUnavailable`) within `timeout` whether Redis is down, paused or
  slow. A call that waited in the pool's queue past its deadline is dropped unsent, so an
  outage leaves no backlog. The connection pool reconnects on the next call once Redis is
  back; nothing has to be restarted.
- **Layout.** One hash per client address, ``popbridge:login:<address>``: one field per
  (user, protocol), ``["user", "protocol"]`` holding ``{"when", "tls"}``, and one field per
  open session, ``["user", "protocol", "NODE:ID"]`` holding its lease ``{"seen", "until"}``.
  A lookup is one ``HGETALL``; revoke is one ``DEL``, seen by every node at once, sessions
  included. Several users per address (NAT) are several fields. Every write extends the
  hash's Redis TTL to cover its longest-lived field (never shortens it), so Redis itself
  drops an address once all its logins are over; readers also filter fields by time, so a
  field that outlived its `ttl` inside a live hash is never a yes. There is no local cache:
  every lookup asks Redis, so a revocation is visible on every node immediately.
- **Open sessions across nodes, each on its own.** A node cannot know another node's
  connections, and a node that crashes cannot say its sessions ended. So the node that holds
  a session keeps a lease on it: every `refresh` seconds it rewrites the session's field to
  ``seen = now, until = now + 3 * refresh``. While any lease holds the login is live; when a
  session ends its node deletes its field and writes ``when = now``, so the `ttl` runs from
  then once no other session holds it. If the node dies, the lease lapses and the `ttl` runs
  from `seen`: as if its sessions had ended when it was last seen. A lease write or a session
  end only touches a field that is still there, so after a revoke (the ``DEL`` took every
  session field with it) a session opened before it can neither come back nor end a session
  opened after it.
- **Clocks.** Times are each node's own clock (`when` is compared across nodes), so nodes
  sharing a Redis need NTP, as any multi-node mail setup does.
- **Durability** is Redis's: popbridge waits for Redis's reply before it releases a login;
  how that survives a Redis restart is the Redis ``appendonly``/replication setting.
"""

import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from popbridge.ledger import IRestorableLedger, LedgerUnavailable, Login, SessionId
from popbridge.ledger.keyed import KeyedStore
from popbridge.ledger.spec import SENTINEL_SCHEME, parse_sentinel
from popbridge.ledger.table import newest_first

RunBlocking = Callable[..., "Deferred[Any]"]
KEY_PREFIX = "popbridge:login:"
LIST_TIMEOUT = 10.0  # seconds for `logins()`, which walks every address (control socket only)
MAX_REFRESH = 30.0  # seconds between lease refreshes of open sessions (less for a short ttl)

# KEYS[1] the address hash. ARGV: [1] a field that must still be there, or "" (lease refreshes
# and session ends: never re-create what a revoke deleted); [2] milliseconds the hash must live
# at least; [3] a field to delete, or ""; [4...] field, value pairs to set. Returns 0 when the
# field in [1] was missing and nothing was written. The hash's TTL only ever grows.
WRITE_SCRIPT = """
if ARGV[1] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
local want = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
return 1
"""

Name = tuple[str, str, str]  # (address key, user, protocol)
Write = tuple[str, list[Any]]  # (hash key, WRITE_SCRIPT's ARGV)


def redis_client(url: str, password: str, timeout: float) -> Redis:
    """A client that fails within `timeout` instead of waiting, and retries once at once (a
    pooled connection that Redis closed while it was away is replaced on that retry).

    For ``redis+sentinel://`` it is redis-py's Sentinel client for the master: each new
    connection asks the sentinels (in turn, each within `timeout`) where the master is now, and
    a connection to a master that was demoted is dropped. So after a failover the next calls
    reach the promoted replica, with no restart; until the sentinels have promoted one, calls
    fail and lookups answer tempfail. `password` is the master's (and replicas'); the
    sentinels are asked without one.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "decode_responses": True,
    }
    if password:
        options["password"] = password
    if url.startswith(SENTINEL_SCHEME):
        where = parse_sentinel(url)
        sentinels = Sentinel(
            where.sentinels, sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout}
        )
        return sentinels.master_for(where.service, db=where.database, **options)
    return Redis.from_url(url, **options)


@implementer(IRestorableLedger)
class RedisLedger(KeyedStore):
    log = Logger()

    def __init__(
        self,
        client: Redis,
        clock: IReactorTime,
        ttl: float,
        ipv6_prefix: int,
        run_blocking: RunBlocking,
        timeout: float = 0.5,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self._redis, self._clock, self._ipv6_prefix = client, clock, ipv6_prefix
        self._run_blocking, self._timeout, self._prefix = run_blocking, timeout, prefix
        self._write_script = client.register_script(WRITE_SCRIPT)
        self._node = uuid.uuid4().hex[:12]  # makes this node's session ids unique in Redis
        self._open: dict[SessionId, tuple[Name, bool]] = {}  # sessions this node holds: login, tls
        self._refreshing = LoopingCall(self._refresh_leases)
        self._refreshing.clock = clock
        self.ttl = ttl

    @property
    def ttl(self) -> float:
        return self._ttl

    @ttl.setter
    def ttl(self, seconds: float) -> None:
        """A new ttl (SIGHUP) applies at once; the lease period follows it. Hashes already in
        Redis keep their Redis TTL, so a *longer* ttl covers logins recorded from now on."""
        self._ttl = seconds
        self.refresh = min(MAX_REFRESH, seconds / 3)
        if self._refreshing.running:
            self._refreshing.stop()
            self.start_refreshing()

    # -- lease refreshing (started and stopped by the service) ----------------------------

    def start_refreshing(self) -> None:
        self._refreshing.start(self.refresh, now=False).addErrback(
            lambda f: self.log.failure("redis lease refresh loop stopped", f)
        )

    def stop_refreshing(self) -> None:
        if self._refreshing.running:
            self._refreshing.stop()

    def _refresh_leases(self) -> "Deferred[None]":
        now = self._clock.seconds()
        sessions = list(self._open)
        if not sessions:
            return succeed(None)
        writes = []
        for session in sessions:
            name, _ = self._open[session]
            lease = self._lease_field(name, session)
            writes.append(self._write(name[0], now + 3 * self.refresh, must_exist=lease, pairs=self._lease(lease, now)))
        refreshing = self._call("lease refresh", self._write_many, writes)
        refreshing.addCallback(self._refreshed, sessions)
        refreshing.addErrback(lambda f: self.log.failure("redis: could not refresh {count} open sessions", f, count=len(sessions)))
        return refreshing

    def _refreshed(self, results: list[int], sessions: list[SessionId]) -> None:
        for session, written in zip(sessions, results, strict=True):
            if not written:  # revoked, perhaps by another node: the session no longer counts
                self._open.pop(session, None)

    # -- ILedger ---------------------------------------------------------------------------

    def _record(
        self, key: str, user: str, protocol: str, session: SessionId | None, tls: bool
    ) -> "Deferred[Login | None]":
        now, name = self._clock.seconds(), (key, user, protocol)
        pairs = self._login(name, now, tls)
        lease_until = now
        if session is not None:
            lease_until = now + 3 * self.refresh
            pairs += self._lease(self._lease_field(name, session), now)
        writing = self._call("record", self._write_many, [self._write(key, lease_until, pairs=pairs)])
        if session is not None:
            writing.addCallback(self._opened, session, name, tls)
        # open_sessions: the one this call opened; the others are leases of their own in Redis,
        # counted by `lookup`, and counting them here would cost a read on every login
        opened = 0 if session is None else 1
        return writing.addCallback(lambda _: Login(key, user, protocol, now, opened, tls))

    def _opened(self, result: object, session: SessionId, name: Name, tls: bool) -> object:
        """The session's lease is in Redis: from now on this node renews it. Not before, or a
        renewal could overtake the write and, finding no lease, drop the session; a login that
        was not stored holds no session at all."""
        self._open[session] = (name, tls)
        return result

    def _end_session(self, key: str, user: str, protocol: str, session: SessionId) -> "Deferred[None]":
        if session not in self._open:  # revoked since, or never stored
            return succeed(None)
        name, tls = self._open.pop(session)
        lease = self._lease_field(name, session)
        now = self._clock.seconds()
        ending = self._write(name[0], now, must_exist=lease, delete=lease, pairs=self._login(name, now, tls))
        return self._call("end session", self._write_many, [ending]).addCallback(lambda _: None)

    def _lookup(self, key: str) -> "Deferred[list[Login]]":
        reading = self._call("lookup", self._redis.hgetall, self._prefix + key)
        return reading.addCallback(lambda fields: newest_first(self._live(key, fields)))

    def logins(self) -> "Deferred[list[Login]]":
        return self._call("list", self._everything, timeout=LIST_TIMEOUT).addCallback(
            lambda hashes: newest_first(login for key, fields in hashes for login in self._live(key, fields))
        )

    def _revoke(self, key: str) -> "Deferred[int]":
        for session in [session for session, (name, _) in self._open.items() if name[0] == key]:
            del self._open[session]
        return self._call("revoke", self._delete_address, self._prefix + key)

    def purge(self) -> "Deferred[int]":
        """Nothing to do: Redis drops each address when its hash's TTL runs out."""
        return succeed(0)

    def restore(self, logins: Iterable[Login]) -> "Deferred[int]":
        entries = [
            self._write(l.client, l.when, pairs=self._login((l.client, l.user, l.protocol), l.when, l.tls)) for l in logins
        ]
        if not entries:
            return succeed(0)
        return self._call("restore", self._write_many, entries, timeout=LIST_TIMEOUT).addCallback(len)

    # -- Redis calls (these run in the thread pool) ---------------------------------------

    def _write(
        self, key: str, live_until: float, must_exist: str = "", delete: str = "", pairs: list[str] | None = None
    ) -> Write:
        """One WRITE_SCRIPT call on `key`'s hash, which must then live until `live_until` + `ttl`."""
        lives_ms = max(1, int((live_until + self.ttl - self._clock.seconds()) * 1000) + 1000)
        return self._prefix + key, [must_exist, lives_ms, delete, *(pairs or [])]

    @staticmethod
    def _login(name: Name, when: float, tls: bool) -> list[str]:
        _, user, protocol = name
        return [json.dumps([user, protocol]), json.dumps({"when": when, "tls": tls})]

    def _lease_field(self, name: Name, session: SessionId) -> str:
        _, user, protocol = name
        return json.dumps([user, protocol, f"{self._node}:{session}"])

    def _lease(self, field: str, now: float) -> list[str]:
        return [field, json.dumps({"seen": now, "until": now + 3 * self.refresh})]

    def _write_many(self, entries: list[Write]) -> list[int]:
        pipe = self._redis.pipeline(transaction=False)
        for key, args in entries:
            self._write_script(keys=[key], args=args, client=pipe)
        return [int(result) for result in pipe.execute()]

    def _delete_address(self, key: str) -> int:
        """Deletes the address's hash; counts its logins (the fields that are not session leases)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hkeys(key)
        pipe.delete(key)
        fields, _ = pipe.execute()
        return sum(1 for field in fields if _is_login(field))

    def _everything(self) -> list[tuple[str, dict[str, str]]]:
        keys = list(self._redis.scan_iter(match=self._prefix + "*", count=1000))
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [(key.removeprefix(self._prefix), fields) for key, fields in zip(keys, pipe.execute(), strict=True)]

    def _call(self, what: str, function: Callable[..., Any], *args: Any, timeout: float | None = None) -> "Deferred[Any]":
        """`function(*args)` in the pool; LedgerUnavailable on any Redis error or after `timeout`."""
        limit = timeout or self._timeout
        deadline = time.monotonic() + limit

        def bounded() -> Any:
            if time.monotonic() > deadline:
                raise LedgerUnavailable(f"redis {what}: waited past its {limit:g} s deadline in the queue")
            try:
                return function(*args)
            except RedisError as e:
                raise LedgerUnavailable(f"redis {what}: {e}") from e

        def timed_out(result: object, seconds: float) -> None:
            raise LedgerUnavailable(f"redis {what}: no answer within {seconds:g} s")

        calling: Deferred[Any] = self._run_blocking(bounded)
        return calling.addTimeout(limit, self._clock, onTimeoutCancel=timed_out)

    def _live(self, key: str, fields: dict[str, str]) -> list[Login]:
        """The live logins in one address's hash: login fields, each with its session leases."""
        now = self._clock.seconds()
        logins: dict[tuple[str, str], tuple[float, bool]] = {}
        leases: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for name, value in fields.items():
            try:
                user, protocol, *session = json.loads(name)
                entry = json.loads(value)
                if session:
                    leases.setdefault((user, protocol), []).append((float(entry["seen"]), float(entry["until"])))
                else:
                    logins[user, protocol] = (float(entry["when"]), bool(entry["tls"]))
            except (ValueError, KeyError, TypeError):
                self.log.warn("redis: ignoring a malformed entry {field!r} of {key}", field=name, key=key)
        live = []
        for (user, protocol), (when, tls) in logins.items():
            held = leases.get((user, protocol), [])
            open_sessions = sum(1 for _, until in held if now < until)
            when = max([when, *(seen for seen, until in held if until <= now)])  # a lapsed lease ended when last seen
            if open_sessions or now < when + self.ttl:
                live.append(Login(key, user, protocol, when, open_sessions, tls))
        return live


def _is_login(field: str) -> bool:
    """A login's field (``["user", "protocol"]``), not a session lease's (three items)."""
    try:
        return len(json.loads(field)) == 2
    except (ValueError, TypeError):
        return False
