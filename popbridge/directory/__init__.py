"""The directory: per-user facts from LDAP (is this user exempt? which mail host is theirs?).

Why it looks like this:

- ldap3 blocks, so every query runs through an injected `run_blocking` (a bounded thread pool
  in production, a direct call in tests) on a pooled, already-bound connection
  (`popbridge.directory.ldap_search`). The reactor thread never waits on LDAP.
- Answers are cached with the injected clock: an existing user's for `cache_ttl`, "no such
  user" for `negative_cache_ttl`, so a busy relay does not put a search behind every request.
  Concurrent look-ups of one user share one query.
- The directory never fails its caller. When LDAP is down, or slower than `timeout`, the last
  answer serves if it is at most `stale_ttl` past its freshness, else FALLBACK: not exempt,
  the default backend. So a failure never grants anything that LDAP did not recently grant.
- An outage costs one timeout, not one per look-up (issue 16): a relay asks once per
  recipient, and a hung directory (accepting connections, never answering) would otherwise
  make every uncached look-up wait the whole `timeout`. After the first failure the directory
  is *down*: look-ups answer at once, from the cache or FALLBACK, and send no query; one probe
  at a time looks up the user last asked for, on a back-off (`PROBE_BACKOFF`), and the first
  answer LDAP gives (that probe's, or a query from before the outage landing late) ends the
  outage. The outage is logged once when it starts and once when it ends.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from cachetools import TTLCache
from ldap3.core.exceptions import LDAPException
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from popbridge.directory.ldap_search import ConnectionPool, Found, UserFacts, ldap_connector, search_user
from popbridge.metrics import Metrics
from popbridge.settings import LdapConfig

__all__ = ["FALLBACK", "NOT_FOUND", "IDirectory", "LdapDirectory", "MemoryDirectory", "UserFacts", "ldap_directory"]

# What a directory that cannot answer gives. `answered=False` lets a caller that must not guess
# (sender ownership) tell "LDAP could not say" from NOT_FOUND, a user without an entry.
FALLBACK = UserFacts(answered=False)
NOT_FOUND = UserFacts()
LDAP_THREADS = 4  # worker threads, and so at most this many LDAP connections
MAX_CACHED_USERS = 100_000
# seconds before probe n of an outage (n = 0, 1, ...): 1, 2, 4 ... at most 30, plus up to 1 s of
# jitter, so a directory that is back is noticed within about 30 s plus one `timeout`
PROBE_BACKOFF = backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0)

RunBlocking = Callable[..., "Deferred[Any]"]  # run_blocking(f, *args) fires with f(*args)


class IDirectory(Interface):
    """Per-user facts. Implementations: LdapDirectory, MemoryDirectory (the test twin)."""

    def facts(user: str) -> "Deferred[UserFacts]":
        """What the directory says about `user`. Never fails: FALLBACK when it cannot tell."""

    def is_exempt(user: str) -> "Deferred[bool]":
        """Whether `user`'s outbound mail may skip filtering; False when unknown or in doubt."""

    def backend_for(user: str) -> "Deferred[str | None]":
        """`user`'s mail host as ``host`` or ``host:port``; None means the default backend."""


class _FromFacts:
    """`is_exempt` and `backend_for`, derived from `facts` the same way for every directory."""

    def facts(self, user: str) -> "Deferred[UserFacts]":
        raise NotImplementedError

    def is_exempt(self, user: str) -> "Deferred[bool]":
        return self.facts(user).addCallback(lambda facts: facts.exempt)

    def backend_for(self, user: str) -> "Deferred[str | None]":
        return self.facts(user).addCallback(lambda facts: facts.backend)


@implementer(IDirectory)
class MemoryDirectory(_FromFacts):
    """Facts from a dict: the twin that tests (and a directory-less setup) use."""

    def __init__(self, users: dict[str, UserFacts] | None = None) -> None:
        self.users = dict(users or {})

    def facts(self, user: str) -> "Deferred[UserFacts]":
        return succeed(self.users.get(user, NOT_FOUND) if user else FALLBACK)


@dataclass(frozen=True)
class _Cached:
    facts: UserFacts
    fresh_until: float


@dataclass(frozen=True)
class _Unavailable:
    """A query failed; travels down the shared query Deferred instead of a Failure."""

    reason: str


class DirectoryUnavailable(Exception):
    """LDAP did not answer in time or at all; callers serve the cache or FALLBACK."""


@dataclass
class _Outage:
    """LDAP is down: look-ups answer without it while one probe at a time asks again."""

    since: float
    user: str  # whom the next probe looks up: the user last asked for, so its answer is of use
    probes: int = 0  # probes sent so far; the back-off grows with it
    next_probe: IDelayedCall | None = None  # while the probe waits for its time


@implementer(IDirectory)
class LdapDirectory(_FromFacts):
    log = Logger()

    def __init__(
        self,
        config: LdapConfig,
        pool: ConnectionPool,
        run_blocking: RunBlocking,
        clock: IReactorTime,
        max_users: int = MAX_CACHED_USERS,
        metrics: Metrics | None = None,
        probe_backoff: Callable[[int], float] = PROBE_BACKOFF,
        address_attributes: tuple[str, ...] = (),
    ) -> None:
        self._config, self._pool, self._run_blocking, self._clock = config, pool, run_blocking, clock
        self._probe_backoff = probe_backoff
        self._search = partial(search_user, address_attributes=address_attributes)  # [senders] ldap_attributes
        self._metrics = metrics or Metrics()  # cache hits, misses and errors for /metrics
        # entries outlive their freshness by stale_ttl: kept only to serve during outages
        self._found: TTLCache[str, _Cached] = TTLCache(max_users, config.cache_ttl + config.stale_ttl, clock.seconds)
        self._missing: TTLCache[str, _Cached] = TTLCache(
            max_users, config.negative_cache_ttl + config.stale_ttl, clock.seconds
        )
        self._queries: dict[str, Deferred[Any]] = {}  # Deferred[Found] until `_landed` makes it UserFacts | _Unavailable
        self._outage: _Outage | None = None

    def facts(self, user: str) -> "Deferred[UserFacts]":
        return Deferred.fromCoroutine(self._facts(user))

    def close(self) -> None:
        """Drop the idle connections (the service calls this after the thread pool stopped)."""
        if self._outage is not None and self._outage.next_probe is not None:
            self._outage.next_probe.cancel()
            self._outage.next_probe = None
        self._pool.close()

    async def _facts(self, user: str) -> UserFacts:
        if not user:  # GSSAPI/EXTERNAL logins have no name to look up
            return FALLBACK
        cached = self._cached(user)
        if cached is not None and self._clock.seconds() < cached.fresh_until:
            self._metrics.ldap("hit")
            return cached.facts
        if self._outage is not None:  # no query: the probe finds out when LDAP is back
            self._outage.user = user
            self._metrics.ldap("error")
            return cached.facts if cached is not None else FALLBACK
        self._metrics.ldap("miss")
        try:
            return await self._asked(user)
        except Exception as e:  # defer.TimeoutError or DirectoryUnavailable: never the caller's problem
            self._metrics.ldap("error")
            self._went_down(_why(e, self._config.timeout), user)
            cached = self._cached(user)  # may have expired, or been refreshed, meanwhile
            self.log.debug("LDAP look-up of {user!r} failed; serving {source}", user=user,
                           source="the cached answer" if cached else "the fallback")
            return cached.facts if cached is not None else FALLBACK

    def _asked(self, user: str) -> "Deferred[UserFacts]":
        """`user`'s facts from LDAP, failing after `timeout`."""
        return self._query(user).addTimeout(self._config.timeout, self._clock)

    def _cached(self, user: str) -> _Cached | None:
        return self._found.get(user) or self._missing.get(user)

    def _query(self, user: str) -> "Deferred[UserFacts]":
        """A Deferred of its own for this caller, fed by the one query running for `user`."""
        shared = self._queries.get(user)
        if shared is None:
            shared = self._run_blocking(self._pool.run, partial(self._search, self._config, user))
            self._queries[user] = shared  # before _landed, which may run at once (tests)
            shared.addBoth(self._landed, user)
        mine: Deferred[UserFacts] = Deferred()
        shared.addCallback(_hand_over, mine)
        return mine

    def _landed(self, result: "Found | Failure", user: str) -> "UserFacts | _Unavailable":
        """Every query ends here on the reactor thread: cache, log, and never leave a Failure."""
        self._queries.pop(user, None)
        if isinstance(result, Failure):
            if not result.check(LDAPException, OSError):  # not an outage: our bug; still no grant
                self.log.failure("LDAP look-up of {user!r} failed", result, user=user)
            reason = self._scrub(result.getErrorMessage()) or type(result.value).__name__
            self._went_down(reason, user)
            return _Unavailable(reason)
        self._came_back()
        if result.note:
            self.log.warn("LDAP entry for {user!r}: {note}", user=user, note=result.note)
        now = self._clock.seconds()
        if result.facts is None:
            self._found.pop(user, None)
            self._missing[user] = _Cached(NOT_FOUND, now + self._config.negative_cache_ttl)
            return NOT_FOUND
        self._missing.pop(user, None)
        self._found[user] = _Cached(result.facts, now + self._config.cache_ttl)
        return result.facts

    def _went_down(self, reason: str, user: str) -> None:
        if self._outage is not None:
            self.log.debug("LDAP still unavailable: {reason}", reason=reason)
            return
        self._outage = _Outage(self._clock.seconds(), user)
        self.log.error(
            "LDAP directory unavailable ({reason}); answering at once from the cache (up to {stale} s stale), "
            "else not exempt and the default backend, while one probe retries with back-off",
            reason=reason, stale=self._config.stale_ttl,
        )
        self._schedule_probe(self._outage)

    def _schedule_probe(self, outage: _Outage) -> None:
        delay = self._probe_backoff(outage.probes)
        outage.probes += 1
        outage.next_probe = self._clock.callLater(delay, self._probe, outage)

    def _probe(self, outage: _Outage) -> None:
        """Ask LDAP once; an answer ends the outage (in `_landed`), a failure waits longer."""
        outage.next_probe = None
        self.log.debug("LDAP probe {count}: looking up {user!r}", count=outage.probes, user=outage.user)
        self._asked(outage.user).addErrback(self._probe_failed, outage)

    def _probe_failed(self, failure: Failure, outage: _Outage) -> None:
        """A timeout or DirectoryUnavailable (`_landed` turns every other error into one)."""
        self.log.debug("LDAP probe failed: {reason}", reason=_why(failure.value, self._config.timeout))
        if self._outage is outage:  # not ended meanwhile by a late answer
            self._schedule_probe(outage)

    def _came_back(self) -> None:
        outage, self._outage = self._outage, None
        if outage is None:
            return
        if outage.next_probe is not None:
            outage.next_probe.cancel()
        self.log.info("LDAP directory answers again after {seconds:.1f} s and {probes} probe(s)",
                      seconds=self._clock.seconds() - outage.since, probes=outage.probes)

    def _scrub(self, text: str) -> str:
        """Error texts come from ldap3 and the network: make sure the password is not in one."""
        password = self._config.bind_password
        return text.replace(password, "********") if password else text


def _why(error: BaseException | None, timeout: float) -> str:
    return f"no answer within {timeout:g} s" if isinstance(error, defer.TimeoutError) else str(error)


def _hand_over(result: "UserFacts | _Unavailable", mine: "Deferred[UserFacts]") -> "UserFacts | _Unavailable":
    """Pass the shared answer to one caller, unless that caller timed out already."""
    if not mine.called:
        if isinstance(result, _Unavailable):
            mine.errback(DirectoryUnavailable(result.reason))
        else:
            mine.callback(result)
    return result


class ThreadPoolService(Service):
    """Runs the LDAP thread pool while the daemon runs; closes idle connections at the end."""

    def __init__(self, pool: ThreadPool, on_stop: Callable[[], None]) -> None:
        self._threads, self._on_stop = pool, on_stop

    def startService(self) -> None:
        super().startService()
        self._threads.start()

    def stopService(self) -> None:
        super().stopService()
        self._threads.stop()  # waits for running queries: each is bounded by `timeout`
        self._on_stop()


def ldap_directory(
    config: LdapConfig, reactor: Any, metrics: Metrics | None = None, address_attributes: tuple[str, ...] = ()
) -> tuple[LdapDirectory, Service]:
    """The production directory and the service that owns its threads."""
    threads = ThreadPool(minthreads=0, maxthreads=LDAP_THREADS, name="popbridge-ldap")
    connections = ConnectionPool(ldap_connector(config), LDAP_THREADS)
    directory = LdapDirectory(
        config, connections, partial(deferToThreadPool, reactor, threads), reactor, metrics=metrics,
        address_attributes=address_attributes,
    )
    return directory, ThreadPoolService(threads, directory.close)
