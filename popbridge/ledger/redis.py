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
- **Layout.** One hash per client address, ``popbridge:login:<address>``, one field per
  (user, protocol) holding ``{"when", "tls", "open_until"}``. A lookup is one ``HGETALL``;
  revoke is one ``DEL``, seen by every node at once. Several users per address (NAT) are
  several fields. Every write extends the hash's Redis TTL to cover its longest-lived field
  (never shortens it), so Redis itself drops an address once all its logins are over;
  readers also filter fields by time, so a field that outlived its `ttl` inside a live hash
  is never a yes. There is no local cache: every lookup asks Redis, so a revocation is
  visible on every node immediately.
- **Open sessions across nodes.** A node cannot know another node's connections, and a node
  that crashes cannot say its sessions ended. So the node that holds a session keeps a lease
  on its login: every `refresh` seconds it rewrites ``when = now`` and ``open_until = now +
  3 * refresh``. While the lease holds the login is live; when the last local session ends
  the node writes ``when = now, open_until = 0`` and the `ttl` runs from then. If the node
  dies, the lease lapses and the `ttl` runs from its last refresh: as if its sessions had
  ended when it was last seen. Lease writes never re-create a login that was revoked.
- **Clocks.** Times are each node's own clock (`when` is compared across nodes), so nodes
  sharing a Redis need NTP, as any multi-node mail setup does.
- **Durability** is Redis's: popbridge waits for Redis's reply before it releases a login;
  how that survives a Redis restart is the Redis ``appendonly``/replication setting.
"""

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popbridge.addresses import client_key
from popbridge.ledger import IRestorableLedger, LedgerUnavailable, Login
from popbridge.ledger.table import newest_first

RunBlocking = Callable[..., "Deferred[Any]"]
KEY_PREFIX = "popbridge:login:"
LIST_TIMEOUT = 10.0  # seconds for `logins()`, which walks every address (control socket only)
MAX_REFRESH = 30.0  # seconds between lease refreshes of open sessions (less for a short ttl)

# KEYS[1] the address hash. ARGV: field, value, milliseconds the hash must live at least,
# "1" to write only if the field is still there (lease refreshes and session ends: never
# re-create a revoked login). The hash's TTL only ever grows.
WRITE_SCRIPT = """
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local want = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
return 1
"""

Name = tuple[str, str, str]  # (address key, user, protocol)


def redis_client(url: str, password: str, timeout: float) -> Redis:
    """A client that fails within `timeout` instead of waiting, and retries once at once (a
    pooled connection that Redis closed while it was away is replaced on that retry)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "decode_responses": True,
    }
    if password:
        options["password"] = password
    return Redis.from_url(url, **options)


@implementer(IRestorableLedger)
class RedisLedger:
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
        self._open: dict[Name, tuple[int, bool]] = {}  # sessions this node holds: (count, tls)
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
        names = list(self._open)
        if not names:
            return succeed(None)
        writes = [self._entry(name, now, self._open[name][1], now + 3 * self.refresh, only_if_present=True) for name in names]
        refreshing = self._call("lease refresh", self._write_many, writes)
        refreshing.addCallback(self._refreshed, names)
        refreshing.addErrback(lambda f: self.log.failure("redis: could not refresh {count} open sessions", f, count=len(names)))
        return refreshing

    def _refreshed(self, results: list[int], names: list[Name]) -> None:
        for name, written in zip(names, results, strict=True):
            if not written:  # revoked, perhaps by another node: the session no longer counts
                self._open.pop(name, None)

    # -- ILedger ---------------------------------------------------------------------------

    def record(
        self, address: str, user: str, protocol: str, session: bool, tls: bool = False
    ) -> "Deferred[Login | None]":
        key = client_key(address, self._ipv6_prefix)
        if key is None:
            return succeed(None)
        now, name = self._clock.seconds(), (key, user, protocol)
        if session:
            self._open[name] = (self._open.get(name, (0, tls))[0] + 1, tls)
        open_until = now + 3 * self.refresh if name in self._open else 0.0
        writing = self._call("record", self._write_many, [self._entry(name, now, tls, open_until)])
        if session:
            writing.addErrback(self._not_opened, name)
        return writing.addCallback(lambda _: Login(key, user, protocol, now, 1 if open_until else 0, tls))

    def _not_opened(self, failure: Failure, name: Name) -> Failure:
        """The login was not stored, so the proxy will not end its session: forget it here."""
        count, tls = self._open.get(name, (0, False))
        if count > 1:
            self._open[name] = (count - 1, tls)
        else:
            self._open.pop(name, None)
        return failure

    def end_session(self, address: str, user: str, protocol: str) -> "Deferred[None]":
        key = client_key(address, self._ipv6_prefix)
        name = (key or "", user, protocol)
        if name not in self._open:
            return succeed(None)
        count, tls = self._open[name]
        if count > 1:
            self._open[name] = (count - 1, tls)
            return succeed(None)
        del self._open[name]
        entry = self._entry(name, self._clock.seconds(), tls, 0.0, only_if_present=True)
        return self._call("end session", self._write_many, [entry]).addCallback(lambda _: None)

    def lookup(self, address: str) -> "Deferred[list[Login]]":
        key = client_key(address, self._ipv6_prefix)
        if key is None:
            return succeed([])
        reading = self._call("lookup", self._redis.hgetall, self._prefix + key)
        return reading.addCallback(lambda fields: newest_first(self._live(key, fields)))

    def logins(self) -> "Deferred[list[Login]]":
        return self._call("list", self._everything, timeout=LIST_TIMEOUT).addCallback(
            lambda hashes: newest_first(login for key, fields in hashes for login in self._live(key, fields))
        )

    def revoke(self, address: str) -> "Deferred[int]":
        key = client_key(address, self._ipv6_prefix)
        if key is None:
            return succeed(0)
        for name in [name for name in self._open if name[0] == key]:
            del self._open[name]
        return self._call("revoke", self._revoke, self._prefix + key)

    def purge(self) -> "Deferred[int]":
        """Nothing to do: Redis drops each address when its hash's TTL runs out."""
        return succeed(0)

    def restore(self, logins: Iterable[Login]) -> "Deferred[int]":
        entries = [self._entry((l.client, l.user, l.protocol), l.when, l.tls, 0.0) for l in logins]
        if not entries:
            return succeed(0)
        return self._call("restore", self._write_many, entries, timeout=LIST_TIMEOUT).addCallback(len)

    # -- Redis calls (these run in the thread pool) ---------------------------------------

    def _entry(self, name: Name, when: float, tls: bool, open_until: float, only_if_present: bool = False) -> tuple[str, list[Any]]:
        key, user, protocol = name
        lives_ms = max(1, int((max(when + self.ttl, open_until) - self._clock.seconds()) * 1000) + 1000)
        value = json.dumps({"when": when, "tls": tls, "open_until": open_until})
        return self._prefix + key, [json.dumps([user, protocol]), value, lives_ms, "1" if only_if_present else "0"]

    def _write_many(self, entries: list[tuple[str, list[Any]]]) -> list[int]:
        pipe = self._redis.pipeline(transaction=False)
        for key, args in entries:
            self._write_script(keys=[key], args=args, client=pipe)
        return [int(result) for result in pipe.execute()]

    def _revoke(self, key: str) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hlen(key)
        pipe.delete(key)
        removed, _ = pipe.execute()
        return int(removed)

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
        now, live = self._clock.seconds(), []
        for name, value in fields.items():
            try:
                user, protocol = json.loads(name)
                entry = json.loads(value)
                when, open_until, tls = float(entry["when"]), float(entry["open_until"]), bool(entry["tls"])
            except (ValueError, KeyError, TypeError):
                self.log.warn("redis: ignoring a malformed entry {field!r} of {key}", field=name, key=key)
                continue
            if now < open_until:
                live.append(Login(key, user, protocol, when, 1, tls))
            elif now < when + self.ttl:
                live.append(Login(key, user, protocol, when, 0, tls))
        return live
