"""The lookup metrics, counted in plain integers and turned into Prometheus families per scrape.

A policy lookup is answered in about 20 µs; prometheus-client's `Counter.inc` and
`Histogram.observe` take a lock per call and cost a quarter of that. Lookups are answered on the
reactor thread only, so plain counters are enough, and a scrape builds the same families
(``popbridge_lookups_total``, ``popbridge_lookup_seconds``) a `Counter` and a `Histogram` would.
"""

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LookupTally(Collector):
    """Answers by (protocol, answer) and latency by protocol, in the buckets given."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = buckets
        self._answers: dict[tuple[str, str], int] = {}
        self._counts: dict[str, list[int]] = {}  # per protocol: one count per bucket, then +Inf
        self._sums: dict[str, float] = {}

    def add(self, protocol: str, answer: str, seconds: float) -> None:
        key = (protocol, answer)
        self._answers[key] = self._answers.get(key, 0) + 1
        counts = self._counts.get(protocol)
        if counts is None:
            counts = self._counts[protocol] = [0] * (len(self._bounds) + 1)
            self._sums[protocol] = 0.0
        counts[bisect_left(self._bounds, seconds)] += 1  # a bucket holds values <= its bound
        self._sums[protocol] += seconds

    def collect(self) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            "popbridge_lookups", "Lookups answered, by protocol and answer", labels=["protocol", "answer"]
        )
        for labels, count in sorted(self._answers.items()):
            answers.add_metric(list(labels), count)
        yield answers
        seconds = HistogramMetricFamily(
            "popbridge_lookup_seconds", "Time a lookup took to answer, from when its turn came", labels=["protocol"]
        )
        for protocol, counts in sorted(self._counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), counts):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            seconds.add_metric([protocol], buckets, self._sums[protocol])
        yield seconds
