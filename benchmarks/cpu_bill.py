"""The whole CPU bill per request: gateway + EPP + the pods' CPU spent answering the EPP's scrapes,
beside sglang-router and vllm-router, measured side by side on the same simulated pods.

For each rate and router the pods are restarted cold, the router is started, and the CPU time
(utime + stime from /proc, summed over each process's session) of every router process and of
every pod is read around two windows:

* an **idle** window (no requests): what the router costs a pool doing nothing, scrapes included;
* the **load** window: the shared-prefix workload of the routing benchmark at a Poisson rate.

The pods' CPU under sglang-router (which scrapes nothing) is the reference: what the pods spend
serving the requests themselves. A router's *scrape share* is its pods' CPU above that reference,
and its **bill** is its own processes' CPU plus that share, per request. The pods are the simulator
(aiohttp; it renders /metrics from cached text, so a scrape costs it about what any small HTTP
request does); real vLLM answers /metrics on its API server's event loop too.

Usage: ``python -m benchmarks.cpu_bill [--rates 5,8,11,16] [--idle 5] [--no-write]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import podmetrics, report
from benchmarks.loadgen import run_open_loop
from benchmarks.pool import SimPool, SimTiming
from benchmarks.routers import Kind, RouterSpec, router_by_name, start_router
from benchmarks.stats import summarize
from benchmarks.workloads import SharedPrefixWorkload, poisson_offsets

MODEL = "sim-llama"
SEED = 7
TTFT_SLO_S = 0.4
_TICK = os.sysconf("SC_CLK_TCK")

ROUTERS: tuple[RouterSpec, ...] = (
    RouterSpec(
        "epp-scrape-every-tick",
        Kind.EPP,
        "Envoy + EPP, llm-d's default profile, every pod scraped every 50 ms for its whole page "
        "(`--refresh-metrics-idle-interval 0 --metrics-name-filter=false`: upstream's behaviour)",
        epp_flags=("--refresh-metrics-idle-interval", "0", "--metrics-name-filter=false"),
    ),
    RouterSpec(
        "epp-full-page",
        Kind.EPP,
        "epp-default scraping the whole /metrics page (`--metrics-name-filter=false`, upstream's page), "
        "quiet pods every 500 ms",
        epp_flags=("--metrics-name-filter=false",),
    ),
    RouterSpec(
        "epp-default",
        Kind.EPP,
        "Envoy + EPP, llm-d's default profile, this EPP's defaults: busy pods every 50 ms, quiet "
        "pods every 500 ms (`--refresh-metrics-idle-interval 500ms`), the page filtered to the metrics read "
        "(`--metrics-name-filter`)",
    ),
    RouterSpec(
        "epp-default-released",
        Kind.EPP,
        "epp-default with `--release-stream-after-routing`: the ext_proc stream ends once the request "
        "is routed, so Envoy sends the EPP no response headers or body chunks (what skipping the response "
        "body would save at most; the EPP then sees no response, no usage and no in-flight counts)",
        epp_flags=("--release-stream-after-routing",),
    ),
    router_by_name("sglang-cache-aware"),
    router_by_name("vllm-router-cache-aware"),
    # Envoy alone (round-robin, no ext_proc): the floor of any bill with Envoy as the gateway. Its
    # pods' share is not a scrape share: round-robin's lower hit rate makes the pods prefill more.
    router_by_name("round-robin"),
)
# Two active-active replicas (the stack's default): each sees the other's requests on a quiet pod
# only at that pod's next idle scrape. Not in the default run; --routers picks them.
HA_ROUTERS: tuple[RouterSpec, ...] = (
    RouterSpec(
        "epp-2x-scrape-every-tick",
        Kind.EPP,
        "epp-scrape-every-tick as two active-active EPP replicas behind one Envoy",
        epp_flags=("--refresh-metrics-idle-interval", "0", "--metrics-name-filter=false"),
        epp_replicas=2,
    ),
    RouterSpec(
        "epp-2x",
        Kind.EPP,
        "epp-default as two active-active EPP replicas behind one Envoy (the stack's default replicas)",
        epp_replicas=2,
    ),
)
OPTIONAL_ROUTERS = HA_ROUTERS
REFERENCE = "sglang-cache-aware"


def session_cpu_seconds(leader: int) -> float:
    """utime + stime of every live process in ``leader``'s session (a router may fork helpers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[3]) == leader:  # fields[3] is the session id (field 6 of stat)
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


@dataclass(frozen=True, slots=True)
class Snapshot:
    router: dict[str, float]
    pods: float

    @classmethod
    def take(cls, router_pids: dict[str, int], pod_pids: list[int]) -> Snapshot:
        return cls(
            {name: session_cpu_seconds(pid) for name, pid in router_pids.items()},
            sum(session_cpu_seconds(pid) for pid in pod_pids),
        )

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(
            {name: cpu - earlier.router[name] for name, cpu in self.router.items()}, self.pods - earlier.pods
        )


@dataclass(frozen=True, slots=True)
class Cell:
    router: str
    rate_rps: float
    requests: int
    failed: int
    load_s: float  # wall time of the load window
    idle_s: float
    router_cpu_s: dict[str, float]  # load window, by process
    pods_cpu_s: float  # load window, all pods
    idle_router_cpu_s: float
    idle_pods_cpu_s: float
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    prefix_hit_rate: float


def _simplify(name: str) -> str:
    """Process names as the table shows them: ``epp`` (``epp-0``, ``epp-1`` with replicas), ``envoy``."""
    if name.startswith("epp-"):
        return f"epp-{name[-1]}" if name[-2:] in ("-0", "-1") else "epp"
    return name


def run_cell(pool: SimPool, spec: RouterSpec, rate: float, idle_s: float, log_dir: Path) -> Cell:
    workload = SharedPrefixWorkload()
    specs = workload.requests(MODEL, SEED)
    offsets = poisson_offsets(len(specs), rate, SEED)
    pool.restart()
    running = start_router(spec, pool.names, pool.endpoints, log_dir / spec.name)
    try:
        pids = {_simplify(name): pid for name, pid in running.pids().items()}
        time.sleep(1.0)  # let start-up work (first scrapes, connection set-up) settle
        idle_start = Snapshot.take(pids, pool.pids)
        time.sleep(idle_s)
        idle = Snapshot.take(pids, pool.pids) - idle_start

        async def load() -> tuple[Any, Any, Any]:
            async with aiohttp.ClientSession() as session:
                before = await podmetrics.scrape(session, pool.metrics_urls)
            results = await run_open_loop(running.url, specs, offsets, request_timeout_s=60.0)
            async with aiohttp.ClientSession() as session:
                after = await podmetrics.scrape(session, pool.metrics_urls)
            return before, results, after

        start = Snapshot.take(pids, pool.pids)
        started = time.monotonic()
        before, results, after = asyncio.run(load())
        load_s = time.monotonic() - started
        used = Snapshot.take(pids, pool.pids) - start
    finally:
        running.stop()
    stats = summarize(results, TTFT_SLO_S)
    return Cell(
        router=spec.name,
        rate_rps=rate,
        requests=stats.requests,
        failed=stats.failed,
        load_s=load_s,
        idle_s=idle_s,
        router_cpu_s=used.router,
        pods_cpu_s=used.pods,
        idle_router_cpu_s=sum(idle.router.values()),
        idle_pods_cpu_s=idle.pods,
        ttft_p50_ms=stats.ttft.p50 * 1000 if stats.ttft else None,
        ttft_p90_ms=stats.ttft.p90 * 1000 if stats.ttft else None,
        prefix_hit_rate=podmetrics.delta(before, after).prefix_hit_rate,
    )


def bill(cell: Cell, reference: Cell) -> dict[str, float]:
    """Per request, in ms of CPU: the router's processes, the pods' CPU above the reference's, the sum."""
    served = max(1, cell.requests - cell.failed)
    own = sum(cell.router_cpu_s.values()) * 1000 / served
    # Both runs send the same requests at the same times, so their load windows last about as long.
    scrape_share = (cell.pods_cpu_s - reference.pods_cpu_s) * 1000 / served
    return {"router_ms": own, "pods_share_ms": scrape_share, "bill_ms": own + scrape_share}


def section(cells: list[Cell], load: tuple[float, float], pods: int, idle_s: float) -> str:
    rates = sorted({c.rate_rps for c in cells})
    by = {(c.router, c.rate_rps): c for c in cells}
    rows = []
    for rate in rates:
        reference = by[(REFERENCE, rate)]
        ref_bill = bill(reference, reference)["bill_ms"]
        for spec in (*ROUTERS, *OPTIONAL_ROUTERS):
            cell = by.get((spec.name, rate))
            if cell is None:
                continue
            b = bill(cell, reference)
            processes = ", ".join(
                f"{name} {cpu * 1000 / max(1, cell.requests):.1f}" for name, cpu in cell.router_cpu_s.items()
            )
            rows.append(
                [
                    spec.name,
                    f"{rate:g}",
                    f"{b['router_ms']:.1f} ({processes})",
                    f"{cell.pods_cpu_s:.2f}",
                    f"{b['pods_share_ms']:+.1f}",
                    f"**{b['bill_ms']:.1f}**",
                    f"{b['bill_ms'] / ref_bill:.1f}x" if ref_bill > 0 else "-",
                    f"{cell.idle_router_cpu_s / cell.idle_s * 1000:.0f} / "
                    f"{cell.idle_pods_cpu_s / cell.idle_s * 1000:.0f}",
                    f"{cell.ttft_p50_ms:.0f}" if cell.ttft_p50_ms is not None else "-",
                    f"{cell.ttft_p90_ms:.0f}" if cell.ttft_p90_ms is not None else "-",
                    f"{cell.prefix_hit_rate:.0%}",
                    f"{cell.failed}/{cell.requests}",
                ]
            )
    table = report.markdown_table(
        [
            "router",
            "rate (req/s)",
            "router CPU (ms/req, by process)",
            "pods' CPU in the run (s)",
            f"pods' CPU above {REFERENCE}'s (ms/req)",
            "bill (ms/req)",
            f"bill vs {REFERENCE}",
            "idle: router / pods CPU (ms per s)",
            "TTFT p50 (ms)",
            "TTFT p90 (ms)",
            "prefix hit %",
            "failed",
        ],
        rows,
    )
    ran = {c.router for c in cells}
    notes_text = notes(cells, pods)
    routers = "\n".join(
        f"- `{spec.name}`: {spec.description}" for spec in (*ROUTERS, *OPTIONAL_ROUTERS) if spec.name in ran
    )
    return f"""
Workload: the routing benchmark's `shared-prefix` ({SharedPrefixWorkload().describe()}), Poisson
arrivals, {pods} simulated pods restarted cold for every run, seed {SEED}. Before each load window the
router runs {idle_s:g} s idle ("idle" column: CPU milliseconds per second of wall time).

Machine load (1-minute load average) before / after the run: {load[0]:.1f} / {load[1]:.1f} (2 cores,
shared: above 2 means other work competed; CPU seconds are less sensitive to that than latencies).

Routers:

{routers}

CPU is utime + stime from /proc of every process in each router process's session (Envoy and the
EPP separately) and of all pods, over the load window (first send to last answer). **Bill** = the
router's own CPU + its pods' CPU above what the pods spent under `{REFERENCE}` (which scrapes
nothing) in the same rate's run, per request: the pods' share of the router's scrapes. The
reference's share is 0 by definition; a negative share is run-to-run noise in the pods' own work.

{table}

How to read it:

{notes_text}
"""


def _floor_notes(cells: list[Cell]) -> list[str]:
    """Envoy's own share of the bill: alone (round-robin) and with the EPP's ext_proc attached."""
    by = {(c.router, c.rate_rps): c for c in cells}
    lines = []
    for rate in sorted({c.rate_rps for c in cells}):
        alone, with_epp, reference = (
            by.get((name, rate)) for name in ("round-robin", "epp-default", REFERENCE)
        )
        if alone is None or with_epp is None or reference is None:
            continue
        ref_ms = bill(reference, reference)["bill_ms"]
        alone_ms = sum(alone.router_cpu_s.values()) * 1000 / max(1, alone.requests)
        envoy_ms = with_epp.router_cpu_s.get("envoy", 0.0) * 1000 / max(1, with_epp.requests)
        if ref_ms <= 0:
            continue
        lines.append(
            f"- At {rate:g} req/s Envoy alone (`round-robin`) spent {alone_ms:.1f} ms per request, "
            f"{alone_ms / ref_ms:.1f}x {REFERENCE}'s whole bill ({ref_ms:.1f}); in front of the EPP "
            f"Envoy spent {envoy_ms:.1f} ms ({envoy_ms - alone_ms:+.1f} ms for its side of ext_proc), "
            f"{envoy_ms / ref_ms:.1f}x: what the bill would be if the EPP and its scrapes cost nothing."
        )
    return lines


def notes(cells: list[Cell], pods: int) -> str:
    """What the table says about scrape costs, computed from its idle windows."""
    lines = []
    every = [c for c in cells if c.router == "epp-scrape-every-tick"]
    quiet = [c for c in cells if c.router == "epp-default"]
    if every and quiet:
        scrapes_per_s = pods / 0.05
        pods_every = sum(c.idle_pods_cpu_s / c.idle_s for c in every) / len(every) * 1000
        epp_every = sum(c.idle_router_cpu_s / c.idle_s for c in every) / len(every) * 1000
        pods_quiet = sum(c.idle_pods_cpu_s / c.idle_s for c in quiet) / len(quiet) * 1000
        epp_quiet = sum(c.idle_router_cpu_s / c.idle_s for c in quiet) / len(quiet) * 1000
        lines.append(
            f"- Idle, scraping every pod every 50 ms ({scrapes_per_s:.0f} scrapes/s) costs the pods "
            f"{pods_every:.0f} ms of CPU per second (about {pods_every / scrapes_per_s:.2f} ms per scrape, "
            f"the simulator's aiohttp handling one GET) and the EPP {epp_every:.0f} ms/s; with quiet pods "
            f"scraped every 500 ms, {pods_quiet:.0f} and {epp_quiet:.0f} ms/s."
        )
    full = {c.rate_rps: c for c in cells if c.router == "epp-full-page"}
    for cell in quiet:
        other = full.get(cell.rate_rps)
        if other is None:
            continue
        pods_saved = (other.pods_cpu_s - cell.pods_cpu_s) / cell.requests * 1000
        epp_cpu = other.router_cpu_s.get("epp", 0.0) - cell.router_cpu_s.get("epp", 0.0)
        epp_saved = epp_cpu / cell.requests * 1000
        lines.append(
            f"- At {cell.rate_rps:g} req/s the filtered page (`epp-default` against `epp-full-page`) changed "
            f"the pods' CPU by {-pods_saved:+.1f} ms and the EPP's by {-epp_saved:+.1f} ms per request. The "
            "simulator renders its 22 KB page from cached text: on real vLLM a full page costs 6.6-9 ms "
            "of CPU and a filtered one under 1 ms (section `vllm-scrape`)."
        )
    lines += _floor_notes(cells)
    lines += [
        "- Under load, busy pods are still scraped every 50 ms, so the pods' share shrinks less than at "
        "idle; what remains of the bill is mostly the EPP's ext_proc work per request and Envoy's.",
        "- `epp-default-released` bounds what not processing the response in the EPP would save (Envoy "
        "stops sending it response headers and body chunks); it is not a recommended setting: the EPP then "
        "has no in-flight counts, usage or response metrics.",
        "- vllm-router's pods' share is its own calls to the pods besides the routed requests; sglang-router "
        "makes none that cost the pods measurable CPU.",
        "- TTFT and prefix-hit columns are the routing-quality check: the same workload and send times for "
        "every router. On a loaded machine TTFT differences of a few ms are noise; prefix hit % is not.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="5,8,11,16", help="comma-separated req/s")
    parser.add_argument("--routers", default=",".join(s.name for s in ROUTERS))
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--idle", type=float, default=5.0, help="idle window per run, seconds")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    parser.add_argument("--json", default="cpu_bill", help="results file name under benchmarks/results")
    parser.add_argument("--republish", type=Path, help="rewrite the section from a results file")
    args = parser.parse_args(argv)
    if args.republish is not None:
        data = json.loads(args.republish.read_text())
        loaded = [Cell(**cell) for cell in data["cells"]]
        write(section(loaded, tuple(data["load"]), data.get("pods", 8), loaded[0].idle_s))
        return 0
    rates = [float(r) for r in args.rates.split(",")]
    wanted = args.routers.split(",")
    known = {s.name: s for s in (*ROUTERS, *OPTIONAL_ROUTERS)}
    unknown = [name for name in wanted if name not in known]
    if unknown:  # dropped silently, a run measured fewer routers than asked for
        parser.error(f"--routers: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    specs = [known[name] for name in known if name in wanted]
    if REFERENCE not in wanted:
        parser.error(f"--routers must include the reference {REFERENCE}")
    log_dir = Path("/tmp") / f"cpu-bill-{os.getpid()}"
    load_before = os.getloadavg()[0]
    cells: list[Cell] = []
    with SimPool(args.pods, MODEL, SimTiming(), log_dir / "pods") as pool:
        for rate in rates:
            for spec in specs:
                cell = run_cell(pool, spec, rate, args.idle, log_dir)
                cells.append(cell)
                print(
                    f"{spec.name} @ {rate:g}: router {cell.router_cpu_s} pods {cell.pods_cpu_s:.2f}s "
                    f"TTFT p50 {cell.ttft_p50_ms} p90 {cell.ttft_p90_ms} failed {cell.failed} "
                    f"load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    load = (load_before, os.getloadavg()[0])
    body = section(cells, load, args.pods, args.idle)
    if args.no_write:
        print(body)
    else:
        report.write_json(args.json, {"load": load, "pods": args.pods, "cells": [asdict(c) for c in cells]})
        write(body)
    return 0


def write(body: str) -> None:
    report.write_section(
        "cpu-bill",
        "The whole CPU bill per request: gateway + EPP + the pods' scrape share, "
        "vs sglang-router and vllm-router",
        body,
        "python -m benchmarks.cpu_bill",
    )


if __name__ == "__main__":
    raise SystemExit(main())
