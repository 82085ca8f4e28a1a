"""Statistics of a run, checked against timings worked out by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from benchmarks.loadgen import RequestResult
from benchmarks.podmetrics import PodCounters, delta, parse_counters
from benchmarks.stats import Balance, Distribution, RunStats, percentile, summarize, throughput_at_slo


def result(
    index: int,
    sent_at: float,
    ttft: float | None,
    latency: float | None,
    *,
    status: int = 200,
    tokens: int = 10,
    error: str | None = None,
) -> RequestResult:
    return RequestResult(index, "g", sent_at, sent_at, status, ttft, latency, tokens, error)


def test_percentile_interpolates_linearly() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    # rank = 9 * 0.9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert percentile(list(range(1, 11)), 90) == pytest.approx(9.1)
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_summarize_hand_made_run() -> None:
    results = [
        result(0, 0.0, 0.10, 0.50),
        result(1, 1.0, 0.20, 0.60),
        result(2, 2.0, 0.30, 1.00),  # ends at 3.0 s: the run's duration
        result(3, 2.5, 0.40, 0.40),
        result(4, 2.6, None, None, status=503, error="HTTP 503: no capacity"),
    ]
    stats = summarize(results, ttft_slo_s=0.25)
    assert (stats.requests, stats.completed, stats.failed) == (5, 4, 1)
    assert stats.duration_s == pytest.approx(3.0)
    assert stats.throughput_rps == pytest.approx(4 / 3.0)
    assert stats.output_tokens_per_s == pytest.approx(40 / 3.0)
    assert stats.ttft is not None and stats.latency is not None
    assert stats.ttft.p50 == pytest.approx(0.25)
    assert stats.ttft.p90 == pytest.approx(0.37)  # rank 2.7 -> 0.3 + 0.7 * 0.1
    assert stats.ttft.mean == pytest.approx(0.25)
    assert stats.ttft.max == pytest.approx(0.40)
    assert stats.latency.p50 == pytest.approx(0.55)
    # Two requests (TTFT 0.1 and 0.2) met the 250 ms SLO.
    assert stats.goodput_rps == pytest.approx(2 / 3.0)
    assert stats.slo_attainment == pytest.approx(2 / 5)


def test_summarize_all_failed() -> None:
    stats = summarize([result(0, 0.0, None, None, status=0, error="ClientConnectorError")], 1.0)
    assert stats.completed == 0 and stats.ttft is None and stats.throughput_rps == 0.0


def test_balance() -> None:
    even = Balance.of({"a": 5, "b": 5})
    assert even.max_over_mean == 1.0 and even.coefficient_of_variation == 0.0
    skewed = Balance.of({"a": 6, "b": 2, "c": 0, "d": 0})  # mean 2, std sqrt((16+0+4+4)/4)
    assert skewed.max_over_mean == pytest.approx(3.0)
    assert skewed.coefficient_of_variation == pytest.approx(math.sqrt(6) / 2)


def test_throughput_at_slo_takes_best_qualifying_rate() -> None:
    base = summarize([result(0, 0.0, 0.1, 1.0)], ttft_slo_s=0.5)

    def stats(ttft_p90: float, throughput: float, failed: int = 0) -> RunStats:
        ttft = Distribution(ttft_p90 / 2, ttft_p90, ttft_p90, ttft_p90, ttft_p90)
        return dataclasses.replace(base, ttft=ttft, throughput_rps=throughput, failed=failed)

    points = [
        (1.0, stats(0.2, 1.0)),
        (2.0, stats(0.4, 1.9)),
        (4.0, stats(0.9, 3.5)),
        (3.0, stats(0.3, 2.8, failed=1)),
    ]
    assert throughput_at_slo(points) == pytest.approx(1.9)  # 4 req/s missed the SLO, 3 req/s dropped one
    assert throughput_at_slo([(4.0, stats(0.9, 3.5))]) is None


METRICS = """\
# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 1000.0
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 640.0
# HELP vllm:request_success Count of successfully processed requests.
# TYPE vllm:request_success counter
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 7.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 3.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
"""


def test_pod_counters_and_hit_rate() -> None:
    after = parse_counters(METRICS)
    assert after == PodCounters(prefix_queries=1000.0, prefix_hits=640.0, requests=10.0)
    before = {"p0": PodCounters(200.0, 40.0, 2.0), "p1": PodCounters(0.0, 0.0, 0.0)}
    pool = delta(before, {"p0": after, "p1": PodCounters(200.0, 0.0, 4.0)})
    assert pool.requests_per_pod == {"p0": 8, "p1": 4}
    assert pool.prefix_hit_rate == pytest.approx(600 / 1000)
    with pytest.raises(ValueError, match="pod sets differ"):
        delta(before, {"p0": after})
