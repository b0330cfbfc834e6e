"""The loop-thread collectors expose what prometheus_client's own Counter and Histogram expose for the same
observations (their ``_created`` samples aside)."""

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import LoopCounter, LoopHistogram

BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 2.5)


def _samples(registry: CollectorRegistry) -> set[tuple[str, tuple, float]]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _observations() -> list[tuple[tuple[str, str], float]]:
    rng = random.Random(3)
    # Every bound exactly (a bucket counts values <= its bound), below the first, above the last, and in between.
    values = [*BOUNDS, 0.0, 1e-9, 3.0, 1e6] + [rng.expovariate(100.0) for _ in range(300)]
    labels = [("/predict", "200"), ("/predict", "503"), ("/ready", "200")]
    return [(rng.choice(labels), value) for value in values]


def test_labelled_histogram_and_its_counter_match_prometheus_client() -> None:
    ours, reference = CollectorRegistry(), CollectorRegistry()
    histogram = LoopHistogram("latency_seconds", "Latency", ("endpoint", "status"), BOUNDS, counter=("hits", "Hits"))
    ours.register(histogram)
    expected_histogram = Histogram(
        "latency_seconds", "Latency", ["endpoint", "status"], buckets=BOUNDS, registry=reference
    )
    expected_counter = Counter("hits", "Hits", ["endpoint", "status"], registry=reference)
    for labels, value in _observations():
        histogram.observe(labels, value)
        expected_histogram.labels(*labels).observe(value)
        expected_counter.labels(*labels).inc()
    assert _samples(ours) == _samples(reference)


def test_unlabelled_histogram_is_exposed_before_any_observation() -> None:
    ours, reference = CollectorRegistry(), CollectorRegistry()
    histogram = LoopHistogram("probability", "P", (), (0.5, 1.0))
    ours.register(histogram)
    expected = Histogram("probability", "P", buckets=(0.5, 1.0), registry=reference)
    assert _samples(ours) == _samples(reference)
    for value in (0.2, 0.5, 0.7, 1.0):
        histogram.observe((), value)
        expected.observe(value)
    assert _samples(ours) == _samples(reference)


def test_counter_matches_prometheus_client() -> None:
    ours, reference = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("bands", "Bands", ("band",))
    ours.register(counter)
    expected = Counter("bands", "Bands", ["band"], registry=reference)
    for band in ("low", "high", "low", "medium", "low"):
        counter.inc((band,))
        expected.labels(band).inc()
    assert _samples(ours) == _samples(reference)
