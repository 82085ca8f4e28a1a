"""The loop metrics (epp.metrics.LoopCounter/LoopGauge/LoopHistogram, used by ServerMetrics on the
request path) expose exactly the series prometheus_client's Counter/Gauge/Histogram expose for the
same updates, so dashboards, rules and the observability tests read the same page."""

from __future__ import annotations

import math
import re

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.metrics import LoopCollector, LoopCounter, LoopGauge, LoopHistogram, ServerMetrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Exactly on a bound (Prometheus buckets are "less than or equal"), between, below all, above all.
OBSERVED = (0.0, 0.001, 0.0010001, 0.01, 0.05, 0.1, 1.0, 1.5, 1e9, -2.0)


def page(registry: CollectorRegistry) -> list[str]:
    """The exposition without the ``_created`` timestamps (wall-clock times of construction)."""
    text = prometheus_client.generate_latest(registry).decode()
    return [re.sub(r"(_created(\{[^}]*\})?) .*", r"\1 T", line) for line in text.splitlines()]


def loop_registry(*metrics: LoopCounter | LoopGauge | LoopHistogram) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(LoopCollector(list(metrics)))
    return registry


def test_counters_match_prometheus_client() -> None:
    reference = CollectorRegistry()
    plain, labelled = (
        Counter("c", "A counter.", registry=reference),
        Counter("l", "By code.", ["code", "reason"], registry=reference),
    )
    loop_plain, loop_labelled = (
        LoopCounter("c", "A counter."),
        LoopCounter("l", "By code.", ("code", "reason")),
    )
    for counter in (plain, loop_plain):
        counter.inc()
        counter.inc(2.5)
    for counter in (labelled, loop_labelled):
        counter.labels("503", "queue").inc()
        counter.labels("200", "").inc(3)
        counter.labels("503", "queue").inc()
    assert page(loop_registry(loop_plain, loop_labelled)) == page(reference)
    assert 'l_total{code="503",reason="queue"} 2.0' in page(reference)


def test_gauge_matches_prometheus_client() -> None:
    reference = CollectorRegistry()
    gauge, loop_gauge = Gauge("g", "A gauge.", registry=reference), LoopGauge("g", "A gauge.")
    for g in (gauge, loop_gauge):
        g.inc()
        g.inc(3)
        g.dec()
        g.dec(0.5)
    assert page(loop_registry(loop_gauge)) == page(reference)
    gauge.set(7)
    loop_gauge.set(7)
    assert page(loop_registry(loop_gauge)) == page(reference)


@pytest.mark.parametrize("observed", [(), OBSERVED])
def test_histogram_matches_prometheus_client(observed: tuple[float, ...]) -> None:
    reference = CollectorRegistry()
    histogram = Histogram("h_seconds", "A histogram.", buckets=BUCKETS, registry=reference)
    # Bounds given out of order still end up sorted, as prometheus_client requires them to be.
    loop_histogram = LoopHistogram("h_seconds", "A histogram.", tuple(reversed(BUCKETS)))
    for value in observed:
        histogram.observe(value)
        loop_histogram.observe(value)
    assert page(loop_registry(loop_histogram)) == page(reference)


def test_histogram_bucket_bounds_are_inclusive() -> None:
    histogram = LoopHistogram("h", "A histogram.", BUCKETS)
    histogram.observe(0.01)
    registry = loop_registry(histogram)
    assert registry.get_sample_value("h_bucket", {"le": "0.001"}) == 0
    assert registry.get_sample_value("h_bucket", {"le": "0.01"}) == 1
    assert registry.get_sample_value("h_bucket", {"le": "+Inf"}) == 1
    assert registry.get_sample_value("h_sum") == 0.01
    assert registry.get_sample_value("h_count") == 1
    assert not math.isnan(registry.get_sample_value("h_created") or math.nan)


def test_wrong_label_count_is_refused_and_unlabelled_inc_needs_no_labels() -> None:
    counter = LoopCounter("l", "By code.", ("code",))
    with pytest.raises(ValueError, match=r"l: expected labels \('code',\)"):
        counter.labels("200", "extra")
    with pytest.raises(ValueError, match="has labels"):
        counter.inc()


def test_server_metrics_page_lists_every_series_once() -> None:
    """ServerMetrics registers one collector for all its metrics; the names are those of the
    prometheus_client metrics it replaced (epp_requests_total, epp_request_duration_seconds_bucket...)."""
    metrics = ServerMetrics(CollectorRegistry(auto_describe=True))
    metrics.requests.labels("200").inc()
    metrics.rejections.labels("429", "queue").inc()
    metrics.in_flight.inc()
    metrics.duration.observe(0.02)
    metrics.tokens.labels("prompt").inc(5)
    metrics.stream_errors.inc()
    registry = metrics.registry
    assert registry.get_sample_value("epp_requests_total", {"code": "200"}) == 1
    assert registry.get_sample_value("epp_rejected_requests_total", {"code": "429", "reason": "queue"}) == 1
    assert registry.get_sample_value("epp_requests_in_flight") == 1
    assert registry.get_sample_value("epp_request_duration_seconds_count") == 1
    assert registry.get_sample_value("epp_tokens_total", {"kind": "prompt"}) == 5
    assert registry.get_sample_value("epp_stream_errors_total") == 1
    types = [line.split(" ", 2)[2] for line in page(registry) if line.startswith("# TYPE")]
    assert [t for t in types if "_created" not in t] == [
        "epp_requests_total counter",
        "epp_rejected_requests_total counter",
        "epp_requests_in_flight gauge",
        "epp_request_duration_seconds histogram",
        "epp_scheduling_duration_seconds histogram",
        "epp_time_to_first_token_seconds histogram",
        "epp_request_body_bytes histogram",
        "epp_response_body_bytes histogram",
        "epp_tokens_total counter",
        "epp_stream_errors_total counter",
    ]
