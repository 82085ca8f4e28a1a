"""Rate sweeps: one open-loop run per offered rate against one URL, and what a sweep says.

A point's numbers separate three kinds of request: **served** (200 with tokens), **shed** (the
router refused on purpose: a 429, or a 503 naming its reason in ``x-llm-d-request-dropped-reason``)
and **lost** (anything else: a timeout, a reset, a bare 5xx). TTFT percentiles are over the served
requests; a point *meets the SLO* when their TTFT p90 is within it and nothing was lost (shedding is
allowed: it is the answer a router gives on purpose).

* **throughput at SLO**: the best served req/s among the points that meet the SLO.
* **goodput**: served requests whose TTFT met the SLO, per second.
* **in flight** (Little's law): served req/s x mean end-to-end latency, the concurrency the
  model servers carried at that point; at the knee it is what a ``concurrency-detector``'s
  ``maxConcurrency`` should allow.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.loadgen import RequestResult, run_open_loop
from benchmarks.stats import Distribution, percentile, summarize
from benchmarks.workloads import RequestSpec, poisson_offsets


@dataclass(frozen=True, slots=True)
class Point:
    rate_rps: float  # offered
    duration_s: float  # from the first send to the last answer
    requests: int
    served: int
    shed: dict[str, int]  # by "status reason"
    lost: int
    ttft: Distribution | None  # served requests only
    latency: Distribution | None
    throughput_rps: float  # served per second
    goodput_rps: float  # served within the TTFT SLO, per second
    ttft_slo_s: float
    in_flight: float  # Little's law: throughput x mean latency
    by_group: dict[str, dict[str, Any]] = field(default_factory=dict)
    lost_samples: tuple[str, ...] = ()

    @property
    def shed_total(self) -> int:
        return sum(self.shed.values())

    @property
    def meets_slo(self) -> bool:
        return self.ttft is not None and self.lost == 0 and self.ttft.p90 <= self.ttft_slo_s

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lost_samples"] = list(self.lost_samples)
        data["meets_slo"] = self.meets_slo
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Point:
        data = {k: v for k, v in data.items() if k != "meets_slo"}
        for key in ("ttft", "latency"):
            data[key] = Distribution(**data[key]) if data[key] is not None else None
        data["lost_samples"] = tuple(data.get("lost_samples", ()))
        return cls(**data)


def point_of(results: Sequence[RequestResult], rate: float, ttft_slo_s: float) -> Point:
    stats = summarize(results, ttft_slo_s)
    served = [r for r in results if r.ok and r.ttft is not None and r.latency is not None]
    shed = Counter(f"{r.status} {r.dropped_reason or ''}".strip() for r in results if r.shed)
    lost = [r for r in results if r.lost]
    # The run lasts until its last answer of any kind (a shed request is answered too).
    ends = [r.sent_at + (r.latency or 0.0) for r in served]
    duration = max(ends) if ends else 0.0
    mean_latency = stats.latency.mean if stats.latency else 0.0
    return Point(
        rate_rps=rate,
        duration_s=duration,
        requests=len(results),
        served=len(served),
        shed=dict(shed),
        lost=len(lost),
        ttft=stats.ttft,
        latency=stats.latency,
        throughput_rps=stats.throughput_rps,
        goodput_rps=stats.goodput_rps,
        ttft_slo_s=ttft_slo_s,
        in_flight=stats.throughput_rps * mean_latency,
        by_group=_by_group(results, ttft_slo_s, duration),
        lost_samples=tuple(dict.fromkeys(r.error or f"HTTP {r.status}" for r in lost))[:5],
    )


def _by_group(results: Sequence[RequestResult], slo: float, duration: float) -> dict[str, dict[str, Any]]:
    """Per request class (a tenant, a priority): sent, served, shed, TTFT p90, goodput."""
    groups: dict[str, list[RequestResult]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    if len(groups) > 16:  # per-request groups (random prompts): not a class, nothing to report
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, members in sorted(groups.items()):
        served = [r for r in members if r.ok and r.ttft is not None]
        ttfts = [r.ttft for r in served if r.ttft is not None]
        within = sum(1 for t in ttfts if t <= slo)
        out[name] = {
            "sent": len(members),
            "served": len(served),
            "shed": sum(1 for r in members if r.shed),
            "lost": sum(1 for r in members if r.lost),
            "ttft_p90_s": percentile(ttfts, 90) if ttfts else None,
            "throughput_rps": len(served) / duration if duration > 0 else 0.0,
            "goodput_rps": within / duration if duration > 0 else 0.0,
        }
    return out


def run_point(
    url: str,
    specs: Sequence[RequestSpec],
    rate: float,
    ttft_slo_s: float,
    *,
    seed: int = 1,
    offsets: Sequence[float] | None = None,
    request_timeout_s: float = 120.0,
) -> Point:
    times = list(offsets) if offsets is not None else poisson_offsets(len(specs), rate, seed)
    results = asyncio.run(run_open_loop(url, specs, times, request_timeout_s=request_timeout_s))
    return point_of(results, rate, ttft_slo_s)


def throughput_at_slo(points: Sequence[Point]) -> Point | None:
    """The point with the best served throughput among those that meet the SLO."""
    meeting = [p for p in points if p.meets_slo]
    return max(meeting, key=lambda p: p.throughput_rps) if meeting else None


def sweep(
    url: str,
    requests_for: Callable[[float], Sequence[RequestSpec]],
    rates: Sequence[float],
    ttft_slo_s: float,
    *,
    before_each: Callable[[], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[Point]:
    points = []
    for rate in rates:
        if before_each is not None:
            before_each()
        point = run_point(url, requests_for(rate), rate, ttft_slo_s)
        log(describe(point))
        points.append(point)
    return points


def describe(point: Point) -> str:
    ttft = point.ttft
    timing = f"TTFT p50/p90 {ttft.p50 * 1000:.0f}/{ttft.p90 * 1000:.0f} ms" if ttft else "no TTFT"
    shed = f", shed {point.shed}" if point.shed else ""
    lost = f", LOST {point.lost} ({'; '.join(point.lost_samples)})" if point.lost else ""
    return (
        f"  {point.rate_rps:g} req/s offered: {point.served}/{point.requests} served, "
        f"{point.throughput_rps:.2f} req/s, {timing}, goodput {point.goodput_rps:.2f} req/s, "
        f"in flight {point.in_flight:.1f}{shed}{lost}"
    )
