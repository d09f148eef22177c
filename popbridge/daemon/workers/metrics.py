"""``/metrics`` and ``popbridge stats`` of a split daemon: the main process's numbers and its workers'.

Each worker's last report (Prometheus text, at most a second old) is parsed with
prometheus-client's own parser. Every sample then appears once as the sum over all processes,
with the labels it always had, so dashboards built on a single process keep working; and once
per worker with a ``worker`` label ("1", "2", ...), to see how the load spreads. (So a query
that sums a family over every series counts the workers twice: sum only series without a
``worker`` label, or only those with one.)

A worker that ends (a crash, or the previous generation at SIGHUP) takes its counts with it;
its last counters and histograms are kept here and stay in the sums, so a summed counter never
goes down (Prometheus would read a drop as a reset and `rate()` would spike). Its gauges (open
sessions) go with it, as its sessions did.
"""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# Kept by the main process alone: a worker's copies are never set and would only say 0.
MAIN_ONLY = frozenset({"popbridge_live_addresses", "popbridge_live_logins", "popbridge_ledger_not_stored"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
MONOTONIC = ("counter", "histogram")


class WorkerReports:
    """Each serving worker's last metrics, by label, and what ended workers had counted."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {}
        self.ended: list[Metric] = []  # one family per name, the sums of ended workers' samples

    def reported(self, worker: str, text: str) -> None:
        self.live[worker] = text

    def worker_ended(self, worker: str) -> None:
        text = self.live.pop(worker, None)
        if text is None:
            return
        kept = {family.name: family for family in self.ended}
        for family in text_string_to_metric_families(text):
            if family.type not in MONOTONIC or family.name in MAIN_ONLY:
                continue
            previous = kept.get(family.name)
            totals = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in previous.samples} if previous else {}
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    totals[key] = totals.get(key, 0.0) + sample.value
            summed = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, labels), value in totals.items():
                summed.add_sample(name, dict(labels), value)
            kept[family.name] = summed
        self.ended = list(kept.values())


class FleetRegistry(CollectorRegistry):
    def __init__(self, own: CollectorRegistry, reports: WorkerReports) -> None:
        """`own`: the main process's registry; `reports`: the workers'."""
        super().__init__(auto_describe=False)
        self._own, self._reports = own, reports

    def collect(self) -> Iterator[Metric]:
        templates: dict[str, Metric] = {}
        sums: dict[str, dict[SampleKey, float]] = {}
        labelled: dict[str, list[tuple[str, dict[str, str], float]]] = {}

        def add(family: Metric, worker: str | None) -> None:
            templates.setdefault(family.name, family)
            total = sums.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # creation times do not add up
                key = (sample.name, tuple(sorted(sample.labels.items())))
                total[key] = total.get(key, 0.0) + sample.value
                if worker is not None:
                    labelled.setdefault(family.name, []).append((sample.name, {**sample.labels, "worker": worker}, sample.value))

        for family in self._own.collect():
            add(family, None)
        for family in self._reports.ended:
            add(family, None)
        for worker, text in sorted(self._reports.live.items()):
            for family in text_string_to_metric_families(text):
                if family.name not in MAIN_ONLY:
                    add(family, worker)
        for name, template in templates.items():
            merged = Metric(name, template.documentation, template.type, template.unit)
            for (sample_name, labels), value in sums[name].items():
                merged.add_sample(sample_name, dict(labels), value)
            for sample_name, worker_labels, value in labelled.get(name, []):
                merged.add_sample(sample_name, worker_labels, value)
            yield merged
