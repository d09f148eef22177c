"""Counters since start, shared by the proxies and lookups and reported by the control socket.

`events` are the plain counts ``popbridge stats`` has always shown; `metrics` holds the labelled
counters, gauges and histograms that ``/metrics`` serves (`popbridge.metrics`). Both travel in
this one object because every part of the daemon already receives it.
"""

from collections import Counter
from dataclasses import dataclass, field

from popbridge.metrics import Metrics


@dataclass
class Counters:
    """Event counts by name, e.g. ``login_succeeded``, ``login_failed``, ``lookup_policy``."""

    started: float
    events: Counter[str] = field(default_factory=Counter)
    metrics: Metrics = field(default_factory=Metrics, repr=False)
    elsewhere: dict[str, Counter[str]] = field(default_factory=dict)  # other processes' counts (proxy workers)

    def count(self, event: str) -> None:
        self.events[event] += 1

    def totals(self) -> Counter[str]:
        """This process's counts plus those its proxy workers last reported."""
        total = Counter(self.events)
        for counts in self.elsewhere.values():
            total.update(counts)
        return total
