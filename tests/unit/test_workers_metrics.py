"""/metrics and `popbridge stats` of a split daemon: each sample summed over the processes, and
again per worker with a `worker` label."""

from popbridge.daemon.workers.metrics import FleetRegistry, WorkerReports
from popbridge.metrics import Metrics


def worker_text(logins: int, open_sessions: int) -> str:
    metrics = Metrics()
    for _ in range(logins):
        metrics.login("pop3", "USER", "succeeded")
    for _ in range(open_sessions):
        metrics.session_opened("pop3")
    metrics.backend_connected("pop3", 0.002)
    return metrics.exposition().decode()


def reports_of(texts: dict[str, str]) -> WorkerReports:
    reports = WorkerReports()
    for worker, text in texts.items():
        reports.reported(worker, text)
    return reports


def merged(reports: dict[str, str] | WorkerReports) -> dict[str, float]:
    main = Metrics()
    main.lookup_answered("policy", "authorised", main.now())
    main.live(logins=5, addresses=4)
    main.registry = FleetRegistry(main.registry, reports if isinstance(reports, WorkerReports) else reports_of(reports))
    return dict(main.samples())


def test_every_worker_sample_is_summed_and_labelled_per_worker():
    samples = merged({"1": worker_text(2, 1), "2": worker_text(3, 0)})
    logins = 'popbridge_logins_total{method="USER",outcome="succeeded",protocol="pop3"'
    assert samples[logins + "}"] == 5
    assert samples[logins + ',worker="1"}'] == 2 and samples[logins + ',worker="2"}'] == 3
    assert samples['popbridge_sessions_open{protocol="pop3"}'] == 1
    assert samples['popbridge_backend_connect_seconds_bucket{le="0.005",protocol="pop3"}'] == 2
    assert samples['popbridge_backend_connect_seconds_count{protocol="pop3",worker="2"}'] == 1


def test_what_only_the_main_process_keeps_is_not_taken_from_the_workers():
    samples = merged({"1": worker_text(1, 0)})
    assert samples["popbridge_live_logins"] == 5 and samples["popbridge_live_addresses"] == 4
    assert not any(name.startswith("popbridge_live_") and "worker" in name for name in samples)
    assert samples['popbridge_lookups_total{answer="authorised",protocol="policy"}'] == 1


def test_the_merged_exposition_names_each_family_once():
    main = Metrics()
    main.registry = FleetRegistry(main.registry, reports_of({"1": worker_text(1, 1), "2": worker_text(1, 1)}))
    types = [line for line in main.exposition().decode().splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))


def test_an_ended_workers_counts_stay_in_the_sums_but_its_open_sessions_do_not():
    reports = reports_of({"1": worker_text(2, 1), "2": worker_text(3, 1)})
    reports.worker_ended("1")
    reports.reported("1", worker_text(1, 0))  # its successor, counting from zero
    reports.worker_ended("2")
    reports.worker_ended("2")  # nothing more to keep
    samples = merged(reports)
    logins = 'popbridge_logins_total{method="USER",outcome="succeeded",protocol="pop3"'
    assert samples[logins + "}"] == 6 and samples[logins + ',worker="1"}'] == 1
    assert logins + ',worker="2"}' not in samples
    assert samples.get('popbridge_sessions_open{protocol="pop3"}', 0) == 0
    assert samples['popbridge_backend_connect_seconds_count{protocol="pop3"}'] == 3
