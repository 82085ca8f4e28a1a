"""Throughput under a TTFT SLO from light load to past saturation, and what flow control adds there.

``python -m benchmarks.saturation``: the same simulated pool (``--pods`` pods with the routing
benchmark's timing, restarted cold before every run) behind each router, open-loop Poisson arrivals
for ``--duration`` seconds per point, at offered rates given as multiples of ``--capacity`` (the
pool's saturation point, measured with ``python -m benchmarks.capacity`` and by this sweep's own
round-robin runs). Three parts:

* **sweep**: unique prompts (``random``: nothing to cache, only balance and admission help) and
  GIE's shared-prefix shape, for round-robin (Envoy), the EPP without flow control (llm-d's default
  profile), the EPP with flow control (the profile the stacks ship) and sglang-router cache-aware.
  Per point: served req/s, TTFT of the served requests, goodput within the SLO, what was shed
  (429/503 with a reason) and what was lost (anything else: must be 0).
* **tenants**: one tenant floods at several times the pool's capacity while another sends a modest
  rate; with round-robin fairness across fairness ids the quiet tenant keeps its SLO and its share.
* **priorities**: critical traffic (an InferenceObjective with priority 10) beside sheddable traffic
  (priority -1) that alone would saturate the pool; critical keeps its SLO, sheddable is shed first.

Writes BENCHMARKS.md's ``saturation`` section, ``benchmarks/results/saturation.json`` and two plots
per workload (TTFT p90 and goodput against offered load). ``--quick`` is a seconds-long smoke run
that writes only JSON under build/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks import podmetrics, report
from benchmarks.pool import SimPool, SimTiming
from benchmarks.routers import Kind, RouterSpec, start_router
from benchmarks.sweep import Point, describe, run_point, throughput_at_slo
from benchmarks.workloads import (
    AgenticWorkload,
    RandomWorkload,
    RequestSpec,
    SharedPrefixWorkload,
    poisson_offsets,
)
from epp.config.samples import IN_FLIGHT_AWARE_CONFIG

SECTION_ID = "saturation"
SECTION_TITLE = "Saturation: throughput under a TTFT SLO, flow control, tenants and priorities"
MODEL = "sim-llama"
FAIRNESS = "x-llm-d-inference-fairness-id"
OBJECTIVE = "x-llm-d-inference-objective"
OBJECTIVES = (("critical", 10), ("batch", -1))
QUICK_DIR = report.ROOT / "build" / "bench-saturation-quick"


def _with_flow_control(
    detector: dict[str, Any], section: dict[str, Any], *, detector_filter: bool = False
) -> str:
    """The stacks' profile (``IN_FLIGHT_AWARE_CONFIG``) with flow control: the feature gate, the
    detector plugin, round-robin fairness and the ``flowControl`` section."""
    document = yaml.safe_load(IN_FLIGHT_AWARE_CONFIG)
    document["featureGates"] = ["flowControl"]
    document["plugins"] += [detector, {"type": "round-robin-fairness-policy"}]
    if detector_filter:
        profile = document["schedulingProfiles"][0]
        profile["plugins"] = [{"pluginRef": detector["type"]}, *profile["plugins"]]
    document["flowControl"] = {**section, "saturationDetector": {"pluginRef": detector["type"]}}
    return yaml.safe_dump(document, sort_keys=False)


def fc_defaults_config() -> str:
    """The stacks' profile with ``llmd:epp.flowControl.enabled: true`` and nothing else set (a test
    keeps it equal to what pulumi_llmd's pickerconfig renders): llm-d's utilization detector as the
    gate, round-robin fairness, a 64-request sheddable queue, llm-d's 60 s TTL."""
    return _with_flow_control(
        {"type": "utilization-detector"},
        {
            "defaultRequestTTL": "60s",
            "defaultPriorityBand": {"fairnessPolicyRef": "round-robin-fairness-policy"},
            "defaultNegativePriorityBand": {
                "maxRequests": "64",
                "fairnessPolicyRef": "round-robin-fairness-policy",
            },
        },
    )


def gate_detector(settings: Settings) -> tuple[dict[str, Any], bool]:
    """The tuned config's dispatch gate: (detector plugin, also a scheduling filter?).

    ``utilization``: llm-d's utilization detector, whose queue term now counts the EPP's own
    unanswered dispatches (a queue that a scrape has not seen yet), at ``queue_depth`` requests
    waiting for their first byte per pod on average; its staleness bound is raised to 1 s so a
    late scrape on a loaded machine does not close the gate (it still fails closed past that).
    ``concurrency``: the concurrency detector in ``hybrid`` mode as gate and per-pod filter
    (headroom 0.25): prefill tokens not yet answered per pod, and requests in flight per pod as a
    backstop for cheap (cached) prompts."""
    if settings.gate == "utilization":
        parameters: dict[str, Any] = {
            "queueDepthThreshold": settings.queue_depth,
            "metricsStalenessThreshold": "1s",
        }
        return {"type": "utilization-detector", "parameters": parameters}, False
    parameters = {
        "concurrencyMode": "hybrid",
        "maxConcurrency": settings.max_concurrency,
        "maxTokenConcurrency": settings.max_token_concurrency,
        "headroom": 0.25,
    }
    return {"type": "concurrency-detector", "parameters": parameters}, True


def tuned_config(settings: Settings) -> str:
    """Flow control tuned to the pool the way an operator would after measuring it: a gate that
    closes where the pods' queue for the first token would outgrow the TTFT SLO
    (:func:`gate_detector`), a queue TTL that leaves room in the SLO for the service time, and
    priority holdback, so that lower bands stop short of the gate (sheddable at 75% of it) and a
    critical request finds a free slot instead of waiting for a completion."""
    detector, detector_filter = gate_detector(settings)
    ttl, sheddable_queue = settings.ttl, settings.sheddable_queue
    text = _with_flow_control(
        detector,
        {
            "defaultRequestTTL": ttl,
            "defaultPriorityBand": {"fairnessPolicyRef": "round-robin-fairness-policy"},
            "defaultNegativePriorityBand": {
                "maxRequests": str(sheddable_queue),
                "fairnessPolicyRef": "round-robin-fairness-policy",
            },
            "usageLimitPolicyPluginRef": "priority-holdback-policy",
        },
        detector_filter=detector_filter,
    )
    document = yaml.safe_load(text)
    document["plugins"].append({"type": "priority-holdback-policy", "parameters": {"minCeiling": 0.75}})
    return yaml.safe_dump(document, sort_keys=False)


@dataclass(frozen=True, slots=True)
class Settings:
    pods: int = 4
    capacity_rps: float = 20.0  # the pool's knee (TTFT p90 within the SLO), measured
    # finer around the knee (1x), where throughput at the SLO is decided
    multiples: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
    duration_s: float = 20.0
    ttft_slo_s: float = 1.0
    # The dispatch gate (gate_detector): "utilization" or "concurrency".
    gate: str = "utilization"
    # utilization: requests per pod waiting for their first byte, on average, at which the pool is
    # full. 3 unique 800-token prompts are ~0.5 s of prefill at the pool's 200 us/token, which
    # leaves the TTL inside the SLO (measured: at 4, served TTFT p90 was 1.03-1.07 s past 1x).
    queue_depth: int = 3
    # concurrency: prefill tokens not yet answered per pod (3 unique prompts) ...
    max_token_concurrency: int = 2400
    # ... and requests in flight per pod (decode included), the backstop for cached prompts. On
    # unique prompts a pod carries ~16 at 1x capacity (decode steps share the engine with
    # prefill chunks, so a request spends seconds in decode); the request-only gate at 4 closed
    # far below capacity and shed 0.13x of the load at 1x.
    max_concurrency: int = 24
    # Queue-wait budget: the SLO minus the service TTFT p90 at the gate, and long enough for a
    # quiet tenant or a critical request to wait its turn behind a few first tokens.
    ttl: str = "300ms"
    sheddable_queue: int = 8
    timing: SimTiming = field(default_factory=SimTiming)
    seed: int = 1


def gate_text(settings: Settings) -> str:
    if settings.gate == "utilization":
        return (
            f"utilization-detector gate (queueDepthThreshold {settings.queue_depth}: requests not yet "
            "answered per pod, the EPP's own count or the scraped queue; staleness 1 s)"
        )
    return (
        f"concurrency-detector hybrid (maxTokenConcurrency {settings.max_token_concurrency} prefill "
        f"tokens/pod, maxConcurrency {settings.max_concurrency}/pod, headroom 0.25) as gate and filter"
    )


def routers(settings: Settings) -> list[RouterSpec]:
    return [
        RouterSpec(
            "round-robin", Kind.ENVOY_LB, "Envoy, lb_policy ROUND_ROBIN", envoy_lb_policy="ROUND_ROBIN"
        ),
        RouterSpec(
            "epp-default",
            Kind.EPP,
            "Envoy + EPP, llm-d's default profile (queue 2, KV 2, prefix 3), no flow control "
            "(legacy admission: sheddable requests dropped while saturated)",
            epp_objectives=OBJECTIVES,
        ),
        RouterSpec(
            "epp-in-flight",
            Kind.EPP,
            "Envoy + EPP as the stacks ship it: llm-d's default + active-request-scorer 2, flow control off",
            epp_config=IN_FLIGHT_AWARE_CONFIG,
            epp_objectives=OBJECTIVES,
        ),
        RouterSpec(
            "epp-fc-defaults",
            Kind.EPP,
            "Envoy + EPP, the stacks' profile with `llmd:epp.flowControl.enabled: true` and nothing else: "
            "llm-d's utilization-detector gate, round-robin fairness, TTL 60 s, sheddable queue 64",
            epp_config=fc_defaults_config(),
            epp_objectives=OBJECTIVES,
        ),
        RouterSpec(
            "epp-flow-control",
            Kind.EPP,
            f"Envoy + EPP, the stacks' profile + flow control tuned to this pool: {gate_text(settings)}, "
            f"TTL {settings.ttl}, round-robin fairness, priority holdback (lowest band at 0.75 of the "
            f"gate), sheddable queue {settings.sheddable_queue}",
            epp_config=tuned_config(settings),
            epp_objectives=OBJECTIVES,
        ),
        RouterSpec("sglang-cache-aware", Kind.SGLANG, "`sglang-router launch --policy cache_aware` (0.3.2)"),
    ]


# ---- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    """One class of traffic: a workload at a rate, tagged (group) and with its headers."""

    name: str
    rate: float
    make: Callable[[int, int], list[RequestSpec]]  # (count, seed) -> requests
    headers: tuple[tuple[str, str], ...] = ()


def random_requests(count: int, seed: int) -> list[RequestSpec]:
    return RandomWorkload(count=count, prompt_tokens=800, output_tokens=24).requests(MODEL, seed)


def shared_prefix_requests(count: int, seed: int) -> list[RequestSpec]:
    groups = 16
    workload = SharedPrefixWorkload(groups=groups, prompts_per_group=max(1, math.ceil(count / groups)))
    return workload.requests(MODEL, seed)[:count]


def agentic_requests(count: int, seed: int) -> list[RequestSpec]:
    turns = 6
    return AgenticWorkload(sessions=max(1, math.ceil(count / turns)), turns=turns).requests(MODEL, seed)[
        :count
    ]


WORKLOADS: dict[str, Callable[[int, int], list[RequestSpec]]] = {
    "random": random_requests,
    "shared-prefix": shared_prefix_requests,
    "agentic": agentic_requests,
}
WORKLOAD_TEXT = {
    "random": "unique prompts of 800 tokens, 24 output tokens (nothing to cache)",
    "shared-prefix": "16 groups sharing a 1,500-token system prompt, 60-token questions, 24 output tokens",
    "agentic": AgenticWorkload().describe().replace("16 sessions", "sessions"),
}


def mixture(streams: Sequence[Stream], duration_s: float, seed: int) -> tuple[list[RequestSpec], list[float]]:
    """Merge independent Poisson streams into one send schedule."""
    tagged: list[tuple[float, RequestSpec]] = []
    for index, stream in enumerate(streams):
        count = max(1, round(stream.rate * duration_s))
        specs = stream.make(count, seed * 100 + index)
        offsets = poisson_offsets(count, stream.rate, seed * 100 + index + 50)
        for spec, offset in zip(specs, offsets, strict=True):
            tagged.append((offset, replace(spec, group=stream.name, headers=dict(stream.headers))))
    tagged.sort(key=lambda entry: entry[0])
    return [spec for _, spec in tagged], [offset for offset, _ in tagged]


# ---- running ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    part: str  # sweep | tenants | priorities | placement
    workload: str
    router: str
    multiple: float  # offered load as a multiple of the pool's capacity
    point: Point
    prefix_hit_rate: float = 0.0  # from the pods' own counters
    per_pod: dict[str, int] = field(default_factory=dict)  # requests each pod served

    @property
    def idle_pods(self) -> int:
        """Pods that served less than a quarter of the mean: left (nearly) idle."""
        counts = list(self.per_pod.values())
        if not counts or not sum(counts):
            return 0
        mean = sum(counts) / len(counts)
        return sum(1 for c in counts if c < 0.25 * mean)

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "workload": self.workload,
            "router": self.router,
            "multiple": self.multiple,
            "point": self.point.to_json(),
            "prefix_hit_rate": self.prefix_hit_rate,
            "per_pod": self.per_pod,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(
            data["part"],
            data["workload"],
            data["router"],
            data["multiple"],
            Point.from_json(data["point"]),
            data.get("prefix_hit_rate", 0.0),
            dict(data.get("per_pod", {})),
        )


async def _scrape(urls: dict[str, str]) -> dict[str, podmetrics.PodCounters]:
    async with aiohttp.ClientSession() as session:
        return await podmetrics.scrape(session, urls)


def run_streams(
    pool: SimPool,
    router: RouterSpec,
    streams: Sequence[Stream],
    settings: Settings,
    log_dir: Path,
) -> tuple[Point, podmetrics.PoolDelta]:
    specs, offsets = mixture(streams, settings.duration_s, settings.seed)
    pool.restart()
    running = start_router(router, pool.names, pool.endpoints, log_dir / router.name)
    try:
        before = asyncio.run(_scrape(pool.metrics_urls))
        total = sum(s.rate for s in streams)
        point = run_point(running.url, specs, total, settings.ttft_slo_s, offsets=offsets)
        after = asyncio.run(_scrape(pool.metrics_urls))
        return point, podmetrics.delta(before, after)
    finally:
        running.stop()


def plan(
    settings: Settings, parts: Sequence[str], workloads: Sequence[str], names: Sequence[str]
) -> list[tuple[str, str, str, float, list[Stream]]]:
    chosen = [r for r in routers(settings) if r.name in names]
    cells: list[tuple[str, str, str, float, list[Stream]]] = []
    capacity = settings.capacity_rps
    if "sweep" in parts:
        for workload in workloads:
            for multiple in settings.multiples:
                for router in chosen:
                    stream = Stream("all", capacity * multiple, WORKLOADS[workload])
                    cells.append(("sweep", workload, router.name, multiple, [stream]))
    # Fairness and priority need the EPP (round-robin knows neither): compared with round-robin.
    contrast = [r.name for r in chosen if r.name in ("round-robin", "epp-fc-defaults", "epp-flow-control")]
    if "tenants" in parts:
        quiet = Stream("quiet", 0.3 * capacity, random_requests, ((FAIRNESS, "quiet"),))
        flood = Stream("flood", 2.0 * capacity, random_requests, ((FAIRNESS, "flood"),))
        for name in contrast:
            cells.append(("tenants", "random", name, 2.3, [quiet, flood]))
    if "placement" in parts:
        # Agent sessions sharing a system prompt, below capacity: does anyone leave pods idle?
        for name in names:
            stream = Stream("all", 0.6 * capacity, agentic_requests)
            cells.append(("placement", "agentic", name, 0.6, [stream]))
    if "priorities" in parts:
        critical = Stream("critical", 0.5 * capacity, random_requests, ((OBJECTIVE, "critical"),))
        batch = Stream("sheddable", 1.5 * capacity, random_requests, ((OBJECTIVE, "batch"),))
        for name in [*contrast, "epp-default"]:
            if name in names:
                cells.append(("priorities", "random", name, 2.0, [critical, batch]))
    return cells


def execute(
    settings: Settings, cells: Sequence[tuple[str, str, str, float, list[Stream]]], log_dir: Path
) -> list[Run]:
    by_name = {r.name: r for r in routers(settings)}
    runs: list[Run] = []
    with SimPool(settings.pods, MODEL, settings.timing, log_dir / "pods") as pool:
        for index, (part, workload, router, multiple, streams) in enumerate(cells, 1):
            print(
                f"[{index}/{len(cells)}] {part} {workload} x{multiple:g} -> {router}",
                file=sys.stderr,
                flush=True,
            )
            point, pods = run_streams(pool, by_name[router], streams, settings, log_dir)
            run = Run(part, workload, router, multiple, point, pods.prefix_hit_rate, pods.requests_per_pod)
            print(describe(point), file=sys.stderr, flush=True)
            print(
                f"    prefix hits {run.prefix_hit_rate:.0%}, per pod {sorted(run.per_pod.values())}",
                file=sys.stderr,
                flush=True,
            )
            if point.by_group and part not in ("sweep", "placement"):
                print(f"    by class: {json.dumps(point.by_group)}", file=sys.stderr, flush=True)
            runs.append(run)
    return runs


# ---- reporting --------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}"


def sweep_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in sorted(runs, key=lambda r: (r.multiple, r.router)):
        p = run.point
        rows.append(
            [
                run.router,
                f"{p.rate_rps:.1f} ({run.multiple:g}x)",
                f"{p.throughput_rps:.2f}",
                _ms(p.ttft.p50 if p.ttft else None),
                _ms(p.ttft.p90 if p.ttft else None),
                f"{p.goodput_rps:.2f}",
                ", ".join(f"{n} {k}" for k, n in sorted(p.shed.items())) or "0",
                str(p.lost),
                "yes" if p.meets_slo else "no",
            ]
        )
    return report.markdown_table(
        [
            "router",
            "offered req/s",
            "served req/s",
            "TTFT p50 (ms)",
            "TTFT p90 (ms)",
            "goodput (req/s)",
            "shed",
            "lost",
            "meets SLO",
        ],
        rows,
    )


def summary(runs: Sequence[Run]) -> list[dict[str, Any]]:
    per_router: dict[str, list[Run]] = {}
    for run in runs:
        per_router.setdefault(run.router, []).append(run)
    base = per_router.get("round-robin", [])
    base_best = throughput_at_slo([r.point for r in base])
    top = max((r.multiple for r in runs), default=0.0)
    base_top = next((r.point for r in base if r.multiple == top), None)
    rows = []
    for router, mine in sorted(per_router.items()):
        best = throughput_at_slo([r.point for r in mine])
        at_top = next((r.point for r in mine if r.multiple == top), None)
        rows.append(
            {
                "router": router,
                "throughput_at_slo_rps": best.throughput_rps if best else None,
                "at_offered_rps": best.rate_rps if best else None,
                "vs_round_robin": (best.throughput_rps / base_best.throughput_rps)
                if best and base_best and base_best.throughput_rps
                else None,
                "goodput_at_top_rps": at_top.goodput_rps if at_top else None,
                "goodput_at_top_vs_round_robin": (at_top.goodput_rps / base_top.goodput_rps)
                if at_top and base_top and base_top.goodput_rps
                else None,
                "top_multiple": top,
                "shed_at_top": at_top.shed_total if at_top else None,
                "lost": sum(r.point.lost for r in mine),
            }
        )
    return rows


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    def fmt(value: float | None, pattern: str = "{:.2f}") -> str:
        return "n/a" if value is None else pattern.format(value)

    body = [
        [
            row["router"],
            fmt(row["throughput_at_slo_rps"]),
            fmt(row["vs_round_robin"], "{:.2f}x"),
            fmt(row["goodput_at_top_rps"]),
            fmt(row["goodput_at_top_vs_round_robin"], "{:.2f}x"),
            str(row["shed_at_top"]),
            str(row["lost"]),
        ]
        for row in rows
    ]
    top = rows[0]["top_multiple"] if rows else 0
    return report.markdown_table(
        [
            "router",
            "throughput at SLO (req/s)",
            "vs round-robin",
            f"goodput at {top:g}x capacity (req/s)",
            "vs round-robin",
            f"shed at {top:g}x",
            "lost (all points)",
        ],
        body,
    )


def class_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        for name, data in run.point.by_group.items():
            rows.append(
                [
                    run.router,
                    name,
                    str(data["sent"]),
                    str(data["served"]),
                    f"{data['throughput_rps']:.2f}",
                    _ms(data["ttft_p90_s"]),
                    f"{data['goodput_rps']:.2f}",
                    str(data["shed"]),
                    str(data["lost"]),
                ]
            )
    return report.markdown_table(
        [
            "router",
            "class",
            "sent",
            "served",
            "served req/s",
            "TTFT p90 (ms)",
            "goodput (req/s)",
            "shed",
            "lost",
        ],
        rows,
    )


def placement_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in sorted(runs, key=lambda r: r.router):
        p = run.point
        rows.append(
            [
                run.router,
                _ms(p.ttft.p50 if p.ttft else None),
                _ms(p.ttft.p90 if p.ttft else None),
                f"{run.prefix_hit_rate * 100:.0f}",
                " / ".join(str(c) for c in sorted(run.per_pod.values(), reverse=True)),
                str(run.idle_pods),
                f"{p.served}/{p.requests}",
            ]
        )
    return report.markdown_table(
        [
            "router",
            "TTFT p50 (ms)",
            "TTFT p90 (ms)",
            "prefix hit %",
            "requests per pod",
            "idle pods",
            "served",
        ],
        rows,
    )


def plot(workload: str, runs: Sequence[Run], path: Path, slo_s: float, capacity: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_router: dict[str, list[Run]] = {}
    for run in runs:
        per_router.setdefault(run.router, []).append(run)
    figure, (ax_ttft, ax_good) = plt.subplots(1, 2, figsize=(12, 4.5))
    for router, mine in sorted(per_router.items()):
        mine = sorted(mine, key=lambda r: r.multiple)
        offered = [r.point.rate_rps for r in mine]
        ax_ttft.plot(
            offered,
            [r.point.ttft.p90 * 1000 if r.point.ttft else float("nan") for r in mine],
            marker="o",
            label=router,
        )
        ax_good.plot(offered, [r.point.goodput_rps for r in mine], marker="o", label=router)
    ax_ttft.axhline(slo_s * 1000, color="grey", linestyle="--", linewidth=1, label="SLO")
    ax_ttft.set_yscale("log")
    ax_ttft.set_title("TTFT p90 of served requests (ms)")
    ax_good.set_title(f"goodput: served within the {slo_s * 1000:.0f} ms SLO (req/s)")
    for axis in (ax_ttft, ax_good):
        axis.axvline(capacity, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("offered load (req/s, Poisson; dotted line = capacity)")
        axis.grid(True, alpha=0.3)
    ax_ttft.legend(fontsize=8)
    figure.suptitle(f"saturation sweep: {workload}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


GOAL_ROUTER = "epp-flow-control"


def goal_check(workload: str, rows: Sequence[dict[str, Any]]) -> str:
    """The issue's goal on one workload: at least 2x round-robin's throughput at the SLO, and what
    that means past saturation (goodput at the highest offered load)."""
    by_router = {row["router"]: row for row in rows}
    mine, base = by_router.get(GOAL_ROUTER), by_router.get("round-robin")
    if mine is None or base is None:
        return f"Goal not evaluated on `{workload}`: needs round-robin and {GOAL_ROUTER} runs."
    ratio = mine["vs_round_robin"]
    met = "met" if ratio is not None and ratio >= 2 else "NOT met"
    best = "none" if mine["throughput_at_slo_rps"] is None else f"{mine['throughput_at_slo_rps']:.2f} req/s"
    base_best = (
        "none" if base["throughput_at_slo_rps"] is None else f"{base['throughput_at_slo_rps']:.2f} req/s"
    )
    good = mine["goodput_at_top_vs_round_robin"]
    return (
        f"**Goal check (`{workload}`):** throughput at the SLO, {GOAL_ROUTER} {best} against round-robin "
        f"{base_best} ({'n/a' if ratio is None else f'{ratio:.2f}x'}: {met}); goodput at "
        f"{mine['top_multiple']:g}x capacity {'n/a' if good is None else f'{good:.1f}x'} round-robin's."
    )


NOTES = (
    "Capacity is measured, not assumed: BENCHMARKS.md's capacity section has one pool pod's knee, and "
    "this sweep's own round-robin rows show the pool's (the offered rate whose TTFT p90 is still within "
    "the SLO). Real vLLM on this machine's CPU is in the capacity section too: it saturates where its "
    "API server and engine run out of CPU, which the simulator does not model, so the pool here uses "
    "GPU-like timing whose capacity sits well below what the machine can drive.",
    "Past capacity, round-robin and the EPP without flow control accept everything: the pods' queues "
    "grow for the whole run, so TTFT grows with the run's length and goodput collapses. With flow "
    "control the excess waits at most the TTL and is then shed with a 429; what is served keeps its "
    "latency. Under one flow's overload, FCFS means every served request waited about the TTL, which "
    "is why the tuned TTL is short.",
    "`epp-fc-defaults` is flow control switched on with llm-d's defaults: its utilization detector "
    "closes the gate at 5 requests per pod waiting for their first byte (the scraped queue, or the "
    "EPP's own count of unanswered dispatches when larger), too late for a 1 s SLO, and then lets "
    "requests wait up to 60 s. `epp-flow-control` is the tuning docs/flow-control.md describes: the "
    "same detector at this pool's first-token queue at the SLO (3 per pod) and a 300 ms TTL. A gate "
    "on requests in flight does not work here: a request spends seconds in decode (decode steps share "
    "the engine with prefill chunks), so ~16 per pod are in flight at 1x capacity; at 4 per pod it "
    "closed far below capacity.",
    "The EPP without flow control used to trail round-robin on unique prompts even at 1x: its load "
    "scorers read metrics up to 50 ms old, so a burst herded onto the pod that looked emptiest. Its "
    "queue now counts its own unanswered dispatches (docs/flow-control.md).",
    "Everything shares 2 cores: the EPP's CPU per request (mostly its ext_proc path and scrapes: the "
    "transport and cpu-bill sections) rises with the offered rate, shed requests included, and a "
    "loaded machine delays the EPP's dispatches and scrapes; compare rows of one run, and re-run on a "
    "quiet machine before quoting absolute figures.",
)


def publish(
    runs: Sequence[Run],
    settings: Settings,
    setup: dict[str, Any],
    command: str,
    results_dir: Path,
    markdown: bool,
) -> dict[str, Any]:
    sweeps = [r for r in runs if r.part == "sweep"]
    workloads = sorted({r.workload for r in sweeps})
    summaries = {w: summary([r for r in sweeps if r.workload == w]) for w in workloads}
    data = {
        "setup": setup,
        "command": command,
        "machine": report.machine_description(),
        "runs": [r.to_json() for r in runs],
        "summary": summaries,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "saturation.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if not markdown:
        return data
    lines = [
        f"Pool: {settings.pods} `python -m simulator` pods, {setup['timing']}; restarted "
        "cold before every run. Capacity (the pool's knee with TTFT p90 within the SLO, from "
        "`python -m benchmarks.capacity` and this sweep's round-robin runs): "
        f"**{settings.capacity_rps:g} req/s**; offered loads are multiples of it. Each point: "
        f"{settings.duration_s:g} s of Poisson arrivals. TTFT SLO: p90 <= "
        f"{settings.ttft_slo_s * 1000:.0f} ms.",
        "",
        f"Machine load (1-minute load average) before / after: {setup['load_average_1m']['before']:.1f} / "
        f"{setup['load_average_1m']['after']:.1f} (2 shared cores; above 2, other work competed).",
        "",
        "Served = 200 with tokens; shed = refused on purpose (429, or 503 with "
        "`x-llm-d-request-dropped-reason`); lost = anything else (must be 0). TTFT percentiles are over "
        "served requests; a point meets the SLO when their p90 is within it and nothing was lost. "
        "Throughput at SLO = the best served req/s among points that meet it; goodput = served within "
        "the SLO per second.",
        "",
        "Routers:",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in setup["routers"].items()]
    for workload in workloads:
        mine = [r for r in sweeps if r.workload == workload]
        plot_path = report.RESULTS_DIR / f"saturation-{workload}.png"
        plot(workload, mine, plot_path, settings.ttft_slo_s, settings.capacity_rps)
        lines += [
            "",
            f"### Sweep: `{workload}` ({WORKLOAD_TEXT[workload]})",
            "",
            goal_check(workload, summaries[workload]),
            "",
            summary_table(summaries[workload]),
            "",
            sweep_table(mine),
            "",
            f"![saturation {workload}](benchmarks/results/{plot_path.name})",
        ]
    for part, title, text in (
        (
            "tenants",
            "Two tenants, one flooding",
            f"`quiet` sends {0.3 * settings.capacity_rps:g} req/s, "
            f"`flood` {2.0 * settings.capacity_rps:g} req/s "
            f"(fairness ids in `{FAIRNESS}`), unique prompts.",
        ),
        (
            "priorities",
            "Critical beside sheddable traffic",
            f"`critical` (objective priority 10) at {0.5 * settings.capacity_rps:g} req/s, `sheddable` "
            f"(priority -1) at {1.5 * settings.capacity_rps:g} req/s, unique prompts.",
        ),
    ):
        mine = [r for r in runs if r.part == part]
        if mine:
            lines += ["", f"### {title}", "", text, "", class_table(mine)]
    placement = [r for r in runs if r.part == "placement"]
    if placement:
        lines += [
            "",
            "### Placement: agent sessions sharing a system prompt",
            "",
            f"{WORKLOAD_TEXT['agentic']}, at {0.6 * settings.capacity_rps:g} req/s (0.6x capacity). "
            "Idle pods: pods that served under a quarter of the mean.",
            "",
            placement_table(placement),
        ]
    lines += ["", "How to read these numbers:", ""]
    lines += [f"- {note}" for note in NOTES]
    lines += ["", "Raw results: `benchmarks/results/saturation.json`."]
    report.write_section(SECTION_ID, SECTION_TITLE, "\n".join(lines), command)
    return data


def republish(path: Path) -> int:
    data = json.loads(path.read_text())
    saved = dict(data["setup"]["settings"])
    saved["multiples"] = tuple(saved["multiples"])
    settings = Settings(**saved)
    runs = [Run.from_json(run) for run in data["runs"]]
    publish(runs, settings, data["setup"], data["command"], path.parent, markdown=True)
    print(f"rewrote the saturation section from {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.saturation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Settings()
    parser.add_argument("--parts", default="sweep,tenants,priorities,placement")
    parser.add_argument("--workloads", default="random,shared-prefix")
    parser.add_argument("--routers", default=",".join(r.name for r in routers(defaults)))
    parser.add_argument("--pods", type=int, default=defaults.pods)
    parser.add_argument(
        "--capacity", type=float, default=defaults.capacity_rps, help="the pool's knee (req/s)"
    )
    parser.add_argument("--multiples", default=",".join(f"{m:g}" for m in defaults.multiples))
    parser.add_argument("--duration", type=float, default=defaults.duration_s)
    parser.add_argument("--ttft-slo-ms", type=float, default=defaults.ttft_slo_s * 1000)
    parser.add_argument("--gate", choices=("utilization", "concurrency"), default=defaults.gate)
    parser.add_argument("--queue-depth", type=int, default=defaults.queue_depth)
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency)
    parser.add_argument("--max-token-concurrency", type=int, default=defaults.max_token_concurrency)
    parser.add_argument("--ttl", default=defaults.ttl)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run; JSON under build/ only")
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument(
        "--republish",
        type=Path,
        metavar="SATURATION_JSON",
        help="run nothing: rewrite the section from saved results",
    )
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.republish is not None:
        return republish(args.republish)
    settings = Settings(
        pods=args.pods,
        capacity_rps=args.capacity,
        multiples=tuple(float(m) for m in args.multiples.split(",")),
        duration_s=args.duration,
        ttft_slo_s=args.ttft_slo_ms / 1000,
        gate=args.gate,
        queue_depth=args.queue_depth,
        max_concurrency=args.max_concurrency,
        max_token_concurrency=args.max_token_concurrency,
        ttl=args.ttl,
    )
    if args.quick:
        settings = replace(
            settings,
            pods=2,
            capacity_rps=4.0,
            multiples=(0.5, 2.0),
            duration_s=2.0,
            timing=SimTiming(kv_cache_tokens=16384),
        )
    parts = [p for p in args.parts.split(",") if p]
    workloads = [w for w in args.workloads.split(",") if w]
    names = [n for n in args.routers.split(",") if n]
    known = {r.name for r in routers(settings)}
    if bad := [n for n in names if n not in known] + [w for w in workloads if w not in WORKLOADS]:
        parser.error(f"unknown router/workload {bad}")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-saturation-"))
    cells = plan(settings, parts, workloads, names)
    print(f"{len(cells)} runs; logs in {log_dir}", file=sys.stderr)
    load_before = os.getloadavg()[0]
    runs = execute(settings, cells, log_dir)
    load_after = os.getloadavg()[0]
    setup = {
        "settings": {
            k: getattr(settings, k)
            for k in (
                "pods",
                "capacity_rps",
                "multiples",
                "duration_s",
                "ttft_slo_s",
                "gate",
                "queue_depth",
                "max_concurrency",
                "max_token_concurrency",
                "ttl",
                "sheddable_queue",
                "seed",
            )
        },
        "timing": settings.timing.describe(),
        "load_average_1m": {"before": load_before, "after": load_after},
        "routers": {r.name: r.description for r in routers(settings) if r.name in names},
    }
    command = "python -m benchmarks.saturation" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    results_dir = QUICK_DIR if args.quick else report.RESULTS_DIR
    data = publish(runs, settings, setup, command, results_dir, markdown=not (args.quick or args.no_markdown))
    print(json.dumps(data["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
