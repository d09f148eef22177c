"""LookupTally exports exactly what prometheus-client's own Counter and Histogram would."""

from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from popbridge.metrics import FAST_BUCKETS
from popbridge.metrics_lookups import LookupTally

lookups = st.lists(
    st.tuples(
        st.sampled_from(["policy", "socketmap", "whoson"]),
        st.sampled_from(["authorised", "unknown", "tempfail"]),
        st.one_of(st.sampled_from(FAST_BUCKETS), st.floats(min_value=0, max_value=20)),
    ),
    max_size=30,
)


def without_created(exposition: bytes) -> list[bytes]:
    return [line for line in exposition.splitlines() if b"_created" not in line]


@given(lookups)
def test_exposition_matches_a_prometheus_counter_and_histogram(observed: list[tuple[str, str, float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = LookupTally(FAST_BUCKETS)
    ours.register(tally)
    counter = Counter("popbridge_lookups", "Lookups answered, by protocol and answer", ["protocol", "answer"], registry=theirs)
    histogram = Histogram(
        "popbridge_lookup_seconds", "Time a lookup took to answer, from when its turn came", ["protocol"],
        buckets=FAST_BUCKETS, registry=theirs,
    )
    for protocol, answer, seconds in observed:
        tally.add(protocol, answer, seconds)
        counter.labels(protocol, answer).inc()
        histogram.labels(protocol).observe(seconds)
    assert sorted(without_created(generate_latest(ours))) == sorted(without_created(generate_latest(theirs)))


def test_a_latency_on_a_bucket_bound_counts_in_that_bucket() -> None:
    registry, tally = CollectorRegistry(), LookupTally((0.001, 0.01))
    registry.register(tally)
    tally.add("policy", "unknown", 0.001)
    assert registry.get_sample_value("popbridge_lookup_seconds_bucket", {"protocol": "policy", "le": "0.001"}) == 1
