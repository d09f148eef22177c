"""What popbridge measures, in one Prometheus registry per daemon.

Why it looks like this:

- One `CollectorRegistry` per `Metrics`, never prometheus-client's global default: two daemons
  (or two unit tests) in one process must not add to each other's numbers.
- Call sites say what happened (`login`, `lookup_answered`, `store_call`) and never touch
  prometheus objects, so names and labels live here, in one place, and stay a stable contract
  for dashboards.
- Nothing here runs per proxied chunk: sessions add their byte counts once, when they end.
- Lookups, session events and store calls, the hottest paths, are tallied in plain numbers (`metrics_tally`)
  and exported per scrape; what other threads touch (LDAP) stays prometheus-client's.
- `samples()` is what ``popbridge stats`` prints: the same registry, so the control socket and
  ``/metrics`` cannot disagree.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from popbridge.metrics.tally import TallyCounter, TallyGauge, TallyHistogram

# Lookups and store calls are usually well under a millisecond; buckets reach into the seconds
# that a stalled Redis, SQLite fsync or LDAP server would take.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every popbridge metric, registered in a registry of its own.

    `now` is the timer latencies are measured with (seconds; `time.perf_counter` by default).
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._logins = TallyCounter(
            "popbridge_logins", "Logins judged by the backend, by protocol, method and outcome", ("protocol", "method", "outcome")
        )
        self._sessions = TallyGauge("popbridge_sessions_open", "Proxied client connections open now", ("protocol",))
        self._bytes = TallyCounter(
            "popbridge_proxied_bytes", "Bytes moved after the login, counted when a session ends", ("protocol", "direction")
        )
        self._connect_errors = TallyCounter(
            "popbridge_backend_connect_errors", "Backend connections that failed or timed out", ("protocol",)
        )
        self._connect_seconds = TallyHistogram(
            "popbridge_backend_connect_seconds", "Time to connect to the backend", ("protocol",), CONNECT_BUCKETS
        )
        self._lookups = TallyCounter("popbridge_lookups", "Lookups answered, by protocol and answer", ("protocol", "answer"))
        self._lookup_seconds = TallyHistogram(
            "popbridge_lookup_seconds", "Time a lookup took to answer, from when its turn came", ("protocol",), FAST_BUCKETS
        )
        for tally in (self._logins, self._sessions, self._bytes, self._connect_errors, self._connect_seconds,
                      self._lookups, self._lookup_seconds):
            r.register(tally)
        self._live_addresses = Gauge("popbridge_live_addresses", "Client addresses authorised now", registry=r)
        self._live_logins = Gauge("popbridge_live_logins", "Live logins now (several may share an address)", registry=r)
        self._store_errors = TallyCounter("popbridge_store_errors", "Ledger store calls that failed", ("operation",))
        self._store_seconds = TallyHistogram(
            "popbridge_store_seconds", "Time a ledger store call took", ("operation",), FAST_BUCKETS
        )
        r.register(self._store_errors)
        self._feed = TallyCounter(
            "popbridge_feed_requests", "Dovecot auth-policy requests, by command and what became of them", ("command", "outcome")
        )
        r.register(self._feed)
        r.register(self._store_seconds)
        self._not_stored = Counter(
            "popbridge_ledger_not_stored", "Logins kept in memory only after a failed durable write", registry=r
        )
        self._ldap = Counter(
            "popbridge_ldap_lookups", "Directory look-ups by result: hit (fresh cache), miss (asked LDAP), "
            "error (LDAP failed or timed out; a stale answer or the fallback served)", ["result"], registry=r,
        )

    # -- what happened -------------------------------------------------------------------

    def login(self, protocol: str, method: str, outcome: str) -> None:
        self._logins.inc((protocol, method or "unknown", outcome))

    def session_opened(self, protocol: str) -> None:
        self._sessions.add((protocol,), 1)

    def session_closed(self, protocol: str, to_backend: int = 0, to_client: int = 0) -> None:
        self._sessions.add((protocol,), -1)
        if to_backend:
            self._bytes.inc((protocol, "client_to_backend"), to_backend)
        if to_client:
            self._bytes.inc((protocol, "backend_to_client"), to_client)

    def backend_connected(self, protocol: str, seconds: float) -> None:
        self._connect_seconds.observe((protocol,), seconds)

    def backend_unreachable(self, protocol: str) -> None:
        self._connect_errors.inc((protocol,))

    def lookup_answered(self, protocol: str, answer: str, started: float) -> None:
        """`answer`: authorised, exempt, unknown, tempfail, refused (bad request, unknown map) or
        mismatch (a policy request whose sender no user logged in there owns)."""
        self._lookups.inc((protocol, answer))
        self._lookup_seconds.observe((protocol,), self.now() - started)

    def feed_request(self, command: str, outcome: str) -> None:
        """`outcome`: recorded, or why not (see popbridge.feed.rules and the README)."""
        self._feed.inc((command, outcome))

    def store_call(self, operation: str, started: float, failed: bool) -> None:
        self._store_seconds.observe((operation,), self.now() - started)
        if failed:
            self._store_errors.inc((operation,))

    def not_stored(self, logins: int) -> None:
        self._not_stored.inc(logins)

    def ldap(self, result: str) -> None:
        """`result`: hit, miss, or error (a failed query, or a look-up answered during an outage)."""
        self._ldap.labels(result).inc()  # LDAP answers are cached: not a hot path

    def live(self, logins: int, addresses: int) -> None:
        self._live_logins.set(logins)
        self._live_addresses.set(addresses)

    async def refresh_live(self, ledger: Any) -> None:
        """Set the live gauges from `ledger.logins()`; done per scrape, so they are never stale.

        A store that cannot answer leaves the last values (its failure is counted as a store
        error by `MeasuredLedger`) and raises, so the caller can say so.
        """
        logins = await ledger.logins()
        self.live(len(logins), len({login.client for login in logins}))

    # -- reading -------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    def samples(self) -> Iterator[tuple[str, float]]:
        """Every sample as ``('name{label="value"}', value)``, as /metrics shows it."""
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # creation timestamps: noise for a person reading `popbridge stats`
                labels = ",".join(f'{name}="{value}"' for name, value in sorted(sample.labels.items()))
                yield (f"{sample.name}{{{labels}}}" if labels else sample.name), sample.value
