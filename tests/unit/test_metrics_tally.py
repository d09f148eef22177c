"""The tallies export exactly what prometheus-client's own Counter, Gauge and Histogram would."""

from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from popbridge.metrics import FAST_BUCKETS
from popbridge.metrics.tally import TallyCounter, TallyGauge, TallyHistogram

labels = st.tuples(st.sampled_from(["policy", "pop3", "imap4"]), st.sampled_from(["authorised", "unknown", 'q"uote\\d']))
amounts = st.one_of(st.integers(min_value=0, max_value=10**12), st.floats(min_value=0, max_value=1e6))
values = st.one_of(st.sampled_from(FAST_BUCKETS), st.floats(min_value=0, max_value=20))


def without_created(exposition: bytes) -> list[bytes]:
    return sorted(line for line in exposition.splitlines() if b"_created" not in line)


def registries() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


@given(st.lists(st.tuples(labels, amounts), max_size=20))
def test_counter_exposition_matches_prometheus(incs: list) -> None:
    ours, theirs = registries()
    tally = TallyCounter("x_events", "Events", ("protocol", "answer"))
    ours.register(tally)
    counter = Counter("x_events", "Events", ["protocol", "answer"], registry=theirs)
    for label_values, amount in incs:
        tally.inc(label_values, amount)
        counter.labels(*label_values).inc(amount)
    assert without_created(generate_latest(ours)) == without_created(generate_latest(theirs))


@given(st.lists(st.tuples(labels, st.sampled_from([1, -1, 5])), max_size=20))
def test_gauge_exposition_matches_prometheus(changes: list) -> None:
    ours, theirs = registries()
    tally = TallyGauge("x_open", "Open", ("protocol", "answer"))
    ours.register(tally)
    gauge = Gauge("x_open", "Open", ["protocol", "answer"], registry=theirs)
    for label_values, amount in changes:
        tally.add(label_values, amount)
        gauge.labels(*label_values).inc(amount)
    assert without_created(generate_latest(ours)) == without_created(generate_latest(theirs))


@given(st.lists(st.tuples(labels, values), max_size=30))
def test_histogram_exposition_matches_prometheus(observed: list) -> None:
    ours, theirs = registries()
    tally = TallyHistogram("x_seconds", "Seconds", ("protocol", "answer"), FAST_BUCKETS)
    ours.register(tally)
    histogram = Histogram("x_seconds", "Seconds", ["protocol", "answer"], buckets=FAST_BUCKETS, registry=theirs)
    for label_values, value in observed:
        tally.observe(label_values, value)
        histogram.labels(*label_values).observe(value)
    assert without_created(generate_latest(ours)) == without_created(generate_latest(theirs))


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    registry, tally = CollectorRegistry(), TallyHistogram("x_seconds", "Seconds", ("protocol",), (0.001, 0.01))
    registry.register(tally)
    tally.observe(("policy",), 0.001)
    assert registry.get_sample_value("x_seconds_bucket", {"protocol": "policy", "le": "0.001"}) == 1
