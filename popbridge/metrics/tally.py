"""Counters, gauges and histograms kept in plain Python numbers, exported per scrape.

Lookups (20,000 a second and more) and session events (several per POP3 or IMAP session) are
popbridge's hottest paths. prometheus-client's `Counter.inc` and `Histogram.observe` take a lock
per call and resolve label children by dictionary; for a lookup answered in 30 µs that was a
sixth of its cost. These run on the reactor thread only, so a dict of numbers is enough, and a
scrape builds the same families (names, labels, ``_total``/``_bucket``/``_sum``/``_count``)
prometheus-client's own classes would (tests/unit/test_metrics_tally.py).

Metrics touched from other threads (LDAP) stay prometheus-client's.
"""

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class _TallyValues(Collector):
    """One number per label set, exported as `family` (a counter or a gauge)."""

    family: type[CounterMetricFamily] | type[GaugeMetricFamily]

    def __init__(self, name: str, documentation: str, labels: Labels) -> None:
        self._name, self._documentation, self._labels = name, documentation, labels
        self._values: dict[Labels, float] = {}

    def _add(self, labels: Labels, amount: float) -> None:
        self._values[labels] = self._values.get(labels, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = self.family(self._name, self._documentation, labels=list(self._labels))
        for labels, value in sorted(self._values.items()):
            family.add_metric(list(labels), value)
        yield family


class TallyCounter(_TallyValues):
    family = CounterMetricFamily

    def inc(self, labels: Labels, amount: float = 1) -> None:
        self._add(labels, amount)


class TallyGauge(_TallyValues):
    family = GaugeMetricFamily

    def add(self, labels: Labels, amount: float) -> None:
        self._add(labels, amount)


class TallyHistogram(Collector):
    def __init__(self, name: str, documentation: str, labels: Labels, buckets: tuple[float, ...]) -> None:
        self._name, self._documentation, self._labels, self._bounds = name, documentation, labels, buckets
        self._counts: dict[Labels, list[int]] = {}  # one count per bucket, then +Inf
        self._sums: dict[Labels, float] = {}

    def observe(self, labels: Labels, value: float) -> None:
        counts = self._counts.get(labels)
        if counts is None:
            counts = self._counts[labels] = [0] * (len(self._bounds) + 1)
            self._sums[labels] = 0.0
        counts[bisect_left(self._bounds, value)] += 1  # a bucket holds values <= its bound
        self._sums[labels] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=list(self._labels))
        for labels, counts in sorted(self._counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), counts):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(labels), buckets, self._sums[labels])
        yield family
