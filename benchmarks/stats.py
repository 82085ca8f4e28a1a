"""Statistics of one benchmark run: latency distributions, throughput, SLO goodput, pod balance.

Percentiles interpolate linearly between order statistics (numpy's default "linear" method), so
p50 of [1, 2, 3, 4] is 2.5 and results can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchmarks.loadgen import RequestResult


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of a non-empty sequence, linearly interpolated."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    p50: float
    p90: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution | None:
        if not values:
            return None
        return cls(
            percentile(values, 50),
            percentile(values, 90),
            percentile(values, 99),
            sum(values) / len(values),
            max(values),
        )


@dataclass(frozen=True, slots=True)
class RunStats:
    requests: int
    completed: int
    failed: int
    duration_s: float  # from the first scheduled send to the last completion
    throughput_rps: float  # completed requests per second
    output_tokens_per_s: float
    ttft: Distribution | None
    latency: Distribution | None
    ttft_slo_s: float
    # Requests per second that completed with TTFT within the SLO, and their share of all requests.
    goodput_rps: float
    slo_attainment: float


def summarize(results: Sequence[RequestResult], ttft_slo_s: float) -> RunStats:
    if ttft_slo_s <= 0:
        raise ValueError(f"TTFT SLO must be > 0 s, got {ttft_slo_s}")
    completed = [r for r in results if r.ok and r.ttft is not None and r.latency is not None]
    ends = [r.sent_at + r.latency for r in completed if r.latency is not None]
    duration = max(ends) if ends else 0.0
    within_slo = sum(1 for r in completed if r.ttft is not None and r.ttft <= ttft_slo_s)
    per_second = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    return RunStats(
        requests=len(results),
        completed=len(completed),
        failed=len(results) - len(completed),
        duration_s=duration,
        throughput_rps=per_second(len(completed)),
        output_tokens_per_s=per_second(sum(r.output_tokens for r in completed)),
        ttft=Distribution.of([r.ttft for r in completed if r.ttft is not None]),
        latency=Distribution.of([r.latency for r in completed if r.latency is not None]),
        ttft_slo_s=ttft_slo_s,
        goodput_rps=per_second(within_slo),
        slo_attainment=within_slo / len(results) if results else 0.0,
    )


@dataclass(frozen=True, slots=True)
class Balance:
    """How evenly requests spread over the pods (by the pods' own success counters)."""

    per_pod: Mapping[str, int]
    max_over_mean: float  # 1.0 = perfectly even; N = everything on one of N pods
    coefficient_of_variation: float  # population standard deviation / mean

    @classmethod
    def of(cls, per_pod: Mapping[str, int]) -> Balance:
        counts = list(per_pod.values())
        total = sum(counts)
        if not counts or total == 0:
            return cls(dict(per_pod), 0.0, 0.0)
        mean = total / len(counts)
        variance = sum((c - mean) ** 2 for c in counts) / len(counts)
        return cls(dict(per_pod), max(counts) / mean, math.sqrt(variance) / mean)


def throughput_at_slo(points: Sequence[tuple[float, RunStats]], quantile: int = 90) -> float | None:
    """The best throughput among runs whose TTFT p{quantile} met their SLO, or None if none did.

    ``points`` are (offered rate, stats) pairs of one router on one workload. A run with failures
    does not qualify: dropping requests is not meeting an SLO.
    """
    if quantile not in (50, 90, 99):
        raise ValueError(f"quantile must be 50, 90 or 99, got {quantile}")
    qualifying = [
        stats.throughput_rps
        for _, stats in points
        if stats.ttft is not None
        and stats.failed == 0
        and getattr(stats.ttft, f"p{quantile}") <= stats.ttft_slo_s
    ]
    return max(qualifying) if qualifying else None
