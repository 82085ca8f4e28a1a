"""Run the comparison matrix: every workload x arrival rate x router, against the same pods.

For each cell the pods are restarted cold, the router is started in front of them, the same requests
are sent at the same Poisson times, the pods' counters are read before and after, and the router is
stopped. Progress goes to stderr as the run proceeds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks import podmetrics
from benchmarks.loadgen import run_open_loop
from benchmarks.pool import SimPool
from benchmarks.results_model import RunRecord
from benchmarks.routers import RouterSpec, start_router
from benchmarks.stats import Balance, summarize
from benchmarks.workloads import Workload, poisson_offsets

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Plan:
    workloads: Sequence[tuple[Workload, Sequence[float]]]  # each workload with its arrival rates
    routers: Sequence[RouterSpec]
    model: str
    seed: int
    ttft_slo_s: float
    request_timeout_s: float = 60.0

    @property
    def cells(self) -> int:
        return sum(len(rates) for _, rates in self.workloads) * len(self.routers)


async def _scrape(metrics_urls: dict[str, str]) -> dict[str, podmetrics.PodCounters]:
    async with aiohttp.ClientSession() as session:
        return await podmetrics.scrape(session, metrics_urls)


def _ticker(log: Log, label: str) -> Callable[[int, int], None]:
    """Report progress at most every two seconds and at the end."""
    last = [0.0]

    def tick(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 2.0:
            last[0] = now
            log(f"    {label}: {done}/{total} requests finished")

    return tick


def run_cell(
    pool: SimPool, router: RouterSpec, workload: Workload, rate: float, plan: Plan, log_dir: Path, log: Log
) -> RunRecord:
    specs = workload.requests(plan.model, plan.seed)
    offsets = poisson_offsets(len(specs), rate, plan.seed)
    pool.restart()
    running = start_router(
        router,
        pool.names,
        pool.endpoints,
        log_dir / router.name,
        kv_events=pool.kv_events,
        block_size=pool.timing.block_size,
    )
    try:
        before = asyncio.run(_scrape(pool.metrics_urls))
        results = asyncio.run(
            run_open_loop(
                running.url,
                specs,
                offsets,
                request_timeout_s=plan.request_timeout_s,
                progress=_ticker(log, router.name),
            )
        )
        after = asyncio.run(_scrape(pool.metrics_urls))
    finally:
        running.stop()
    pods = podmetrics.delta(before, after)
    errors = tuple(dict.fromkeys(r.error for r in results if r.error))[:5]
    return RunRecord(
        workload=workload.name,
        router=router.name,
        rate_rps=rate,
        stats=summarize(results, plan.ttft_slo_s),
        prefix_hit_rate=pods.prefix_hit_rate,
        balance=Balance.of(pods.requests_per_pod),
        error_samples=errors,
    )


def run_plan(plan: Plan, pool: SimPool, log_dir: Path, log: Log = stderr_log) -> list[RunRecord]:
    records: list[RunRecord] = []
    started = time.monotonic()
    cell = 0
    for workload, rates in plan.workloads:
        for rate in rates:
            for router in plan.routers:
                cell += 1
                log(
                    f"[{cell}/{plan.cells}] {workload.name} @ {rate:g} req/s -> {router.name} "
                    f"({time.monotonic() - started:.0f}s elapsed)"
                )
                record = run_cell(pool, router, workload, rate, plan, log_dir, log)
                s = record.stats
                ttft = (
                    f"TTFT p50 {s.ttft.p50 * 1000:.0f} ms p90 {s.ttft.p90 * 1000:.0f} ms"
                    if s.ttft
                    else "no TTFT"
                )
                log(
                    f"    {ttft}, {s.throughput_rps:.2f} req/s, prefix hits {record.prefix_hit_rate:.0%}, "
                    f"failed {s.failed}/{s.requests}"
                )
                if record.error_samples:
                    log(f"    errors: {'; '.join(record.error_samples)}")
                records.append(record)
    log(f"done: {plan.cells} runs in {time.monotonic() - started:.0f}s")
    return records
