"""Counters since start, shared by the proxies and lookups and reported by the control socket.

`metrics` holds the labelled counters, gauges and histograms that ``/metrics`` serves
(`popbridge.metrics`); `events`, the plain counts ``popbridge stats`` has always shown, are read
off them. It travels in this one object because every part of the daemon already receives it.
"""

from collections import Counter
from dataclasses import dataclass, field

from popbridge.metrics import Metrics


@dataclass
class Counters:
    """What this process counted since `started`, and what its proxy workers last reported."""

    started: float
    metrics: Metrics = field(default_factory=Metrics, repr=False)
    elsewhere: dict[str, Counter[str]] = field(default_factory=dict)  # other processes' counts (proxy workers)

    @property
    def events(self) -> Counter[str]:
        """Event counts by name, e.g. ``login_succeeded``, ``lookup_policy`` (`Metrics.events`)."""
        return self.metrics.events()

    def totals(self) -> Counter[str]:
        """This process's counts plus those its proxy workers last reported."""
        total = Counter(self.events)
        for counts in self.elsewhere.values():
            total.update(counts)
        return total
