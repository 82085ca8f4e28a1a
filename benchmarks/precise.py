"""``python -m benchmarks.precise``: precise vs approximate prefix routing, and EPP replicas.

Two workloads on simulated pods that publish vLLM KV events (each with its own pool size):

* ``cache-churn``: prefixes that together need about twice the pool's KV cache, with Zipf(1)
  popularity (a few hot prefixes, a long tail), so pods evict all the time;
* ``multi-tenant``: llm-d's blog shape (tenants with 6,000-token contexts, 1,200-token queries,
  8 pods), scaled to this machine: fewer tenants, and the pods' KV sized below the tenants'
  contexts together.

Routers: round-robin (Envoy), ``epp-default`` (llm-d's default profile: approximate prefix),
``epp-precise`` (llm-d's precise-prefix-cache-aware guide: ``precise-prefix-cache-producer`` feeding
``prefix-cache-scorer`` 2, queue and KV-utilisation scorers 1, ``speculativeIndexing`` on), sglang-router
``cache_aware``, and the two EPP profiles as two active-active replicas behind one Envoy
(``epp-default-2x``, ``epp-precise-2x``; each replica sees half of the traffic).

Per cell: TTFT p50/p90, throughput at the TTFT SLO (p90 under ``--ttft-slo-ms``), and the pods'
own prefix-cache hit rate (prompt tokens served from cache). Results go to
``benchmarks/results/precise.json`` and the ``precise-prefix`` section of BENCHMARKS.md (not with
``--quick``, which runs tiny versions and writes under build/).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.pool import SimPool, SimTiming
from benchmarks.publish import detail_table
from benchmarks.results_model import RunRecord
from benchmarks.routers import router_by_name
from benchmarks.runner import Plan, run_plan, stderr_log
from benchmarks.stats import throughput_at_slo
from benchmarks.workloads import CacheChurnWorkload, MultiTenantWorkload, Workload, workload_fields

MODEL = "sim-llama"
SECTION = "precise-prefix"
TITLE = "Precise prefix routing (KV events) vs approximate, sglang-router and round-robin; EPP replicas"
ROUTERS = ("round-robin", "epp-default", "epp-precise", "sglang-cache-aware")
REPLICA_ROUTERS = ("epp-default-2x", "epp-precise-2x")
QUICK_RESULTS_DIR = report.ROOT / "build" / "bench-precise-quick"


# name -> (workload, the pods' timing, arrival rates). The pods keep the routing benchmark's timing
# (a prefill of 0.2 ms per token: a 3,000-token miss costs 600 ms, a 7,200-token one 1.4 s); only
# their KV capacity is sized per workload. The higher rate of each workload puts the pool's prefill
# near its capacity for a router that misses often: that is where a difference in hit rate becomes a
# difference in TTFT (at the lower one every router's p90 is one uncached prefill).
FULL: dict[str, tuple[Workload, SimTiming, tuple[float, ...]]] = {
    # 96 x 3,100 tokens = 298k tokens of prefixes, Zipf(1) popularity; 8 pods x 16k = 131k tokens
    # of KV: the hot prefixes can stay, the long tail keeps evicting.
    "cache-churn": (CacheChurnWorkload(zipf=1.0), SimTiming(kv_cache_tokens=16384), (10.0, 20.0)),
    # 32 tenants x 6,000 tokens = 192k tokens of contexts; 8 pods x 20k = 164k tokens of KV.
    "multi-tenant": (
        MultiTenantWorkload(tenants=32),
        SimTiming(kv_cache_tokens=20480, max_model_len=8192),
        (3.0, 6.0),
    ),
}
QUICK: dict[str, tuple[Workload, SimTiming, tuple[float, ...]]] = {
    "cache-churn": (
        CacheChurnWorkload(
            groups=6, prompts_per_group=3, prefix_tokens=200, question_tokens=20, output_tokens=4
        ),
        SimTiming(kv_cache_tokens=1024),
        (10.0,),
    ),
    "multi-tenant": (
        MultiTenantWorkload(
            tenants=4, requests_per_tenant=3, context_tokens=300, query_tokens=40, output_tokens=4
        ),
        SimTiming(kv_cache_tokens=2048),
        (10.0,),
    ),
}


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny workloads, 3 pods; JSON under build/ only")
    parser.add_argument("--workloads", type=_csv, help=f"subset of: {', '.join(FULL)}")
    parser.add_argument("--routers", type=_csv, help=f"subset of: {', '.join(ROUTERS + REPLICA_ROUTERS)}")
    parser.add_argument(
        "--replica-rates",
        choices=("lowest", "highest", "all", "none"),
        default="highest",
        help="which rates the 2-replica routers run at (default: the highest of each workload, nearest "
        "the pool's capacity, where stale routing costs the most)",
    )
    parser.add_argument("--rates", type=lambda v: tuple(float(x) for x in _csv(v)), help="override rates")
    parser.add_argument("--pods", type=int, help="simulated pods (default 8; 3 with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ttft-slo-ms", type=float, default=2000.0, help="TTFT p90 objective (default 2000)")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument(
        "--republish",
        type=Path,
        metavar="PRECISE_JSON",
        help="run nothing: rewrite the BENCHMARKS.md section from a saved precise.json",
    )
    return parser


def republish(path: Path) -> int:
    try:
        data = json.loads(path.read_text())
        records = [RunRecord.from_json(run) for run in data["runs"]]
        setup, command = data["setup"], data["command"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        stderr_log(f"cannot republish {path}: {type(exc).__name__}: {exc}")
        return 2
    report.write_section(SECTION, TITLE, markdown(records, setup), command)
    stderr_log(f"rewrote the {SECTION} section of BENCHMARKS.md from {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.republish is not None:
        return republish(args.republish)
    catalogue = QUICK if args.quick else FULL
    names = args.workloads or list(catalogue)
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(catalogue)}")
    try:
        chosen = [router_by_name(name) for name in (args.routers or ROUTERS + REPLICA_ROUTERS)]
    except ValueError as exc:
        parser.error(str(exc))
    pods = args.pods if args.pods is not None else (3 if args.quick else 8)
    if pods < 1 or args.ttft_slo_ms <= 0:
        parser.error("--pods must be >= 1 and --ttft-slo-ms > 0")
    results_dir = args.results_dir or (QUICK_RESULTS_DIR if args.quick else report.RESULTS_DIR)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-precise-"))
    stderr_log(f"process logs in {log_dir}")
    load_before = os.getloadavg()
    records: list[RunRecord] = []
    setup_workloads: dict[str, Any] = {}
    for name in names:
        workload, timing, default_rates = catalogue[name]
        rates = args.rates or default_rates
        setup_workloads[name] = {
            "description": workload.describe(),
            "fields": workload_fields(workload),
            "pods": timing.describe(),
            "rates": list(rates),
        }
        singles = [r for r in chosen if r.epp_replicas == 1]
        replicas = [r for r in chosen if r.epp_replicas > 1]
        ordered = sorted(rates)
        replica_rates = {"lowest": ordered[:1], "highest": ordered[-1:], "all": rates, "none": []}[
            args.replica_rates
        ]
        plans = [(singles, rates), (replicas, replica_rates)]
        with SimPool(pods, MODEL, timing, log_dir / name / "pods", kv_events=True) as pool:
            for routers, plan_rates in plans:
                if not routers or not plan_rates:
                    continue
                plan = Plan(
                    workloads=[(workload, plan_rates)],
                    routers=routers,
                    model=MODEL,
                    seed=args.seed,
                    ttft_slo_s=args.ttft_slo_ms / 1000,
                )
                records += run_plan(plan, pool, log_dir / name)
    load_after = os.getloadavg()
    setup = {
        "pods": pods,
        "workloads": setup_workloads,
        "ttft_slo_s": args.ttft_slo_ms / 1000,
        "load_average_1m": {"before": load_before[0], "after": load_after[0]},
        "seed": args.seed,
        "routers": {r.name: r.description for r in chosen},
    }
    command = "python -m benchmarks.precise" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    data = {
        "command": command,
        "setup": setup,
        "runs": [r.to_json() for r in records],
        "summary": summarize(records),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "precise.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    stderr_log(f"results: {results_dir / 'precise.json'}")
    if not (args.quick or args.no_markdown):
        report.write_section(SECTION, TITLE, markdown(records, setup), command)
    print(json.dumps(data["summary"], indent=1))
    return 0


def summarize(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Per workload and router: TTFT p50/p90 and hit rate per rate, throughput at the SLO; and the
    goal checks (precise >= approximate; >= 2x TTFT p90 under churn; replicas keep the hit rate)."""
    by_workload: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_workload[record.workload].append(record)
    out: dict[str, Any] = {}
    for workload, runs in by_workload.items():
        per_router: dict[str, dict[float, RunRecord]] = defaultdict(dict)
        for run in runs:
            per_router[run.router][run.rate_rps] = run
        rows = {}
        for router, by_rate in per_router.items():
            rows[router] = {
                "by_rate": {
                    f"{rate:g}": {
                        "ttft_p50_s": r.stats.ttft.p50 if r.stats.ttft else None,
                        "ttft_p90_s": r.stats.ttft.p90 if r.stats.ttft else None,
                        "prefix_hit_rate": r.prefix_hit_rate,
                        "throughput_rps": r.stats.throughput_rps,
                        "failed": r.stats.failed,
                    }
                    for rate, r in sorted(by_rate.items())
                },
                "throughput_at_slo_rps": throughput_at_slo([(r.rate_rps, r.stats) for r in by_rate.values()]),
            }
        out[workload] = {"routers": rows, "checks": _checks(workload, per_router)}
    return out


def _checks(workload: str, per_router: dict[str, dict[float, RunRecord]]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    # One EPP, and two active-active replicas (llm-d's precise guide runs two by default).
    for key, (approx_name, precise_name) in {
        "precise_vs_approx": ("epp-default", "epp-precise"),
        "precise_vs_approx_2_replicas": ("epp-default-2x", "epp-precise-2x"),
    }.items():
        approx, precise = per_router.get(approx_name, {}), per_router.get(precise_name, {})
        shared = sorted(set(approx) & set(precise))
        if shared:
            checks[key] = {
                f"{rate:g}": {
                    "ttft_p90_ratio_approx_over_precise": _ratio(approx[rate], precise[rate]),
                    "hit_rate_approx": approx[rate].prefix_hit_rate,
                    "hit_rate_precise": precise[rate].prefix_hit_rate,
                }
                for rate in shared
            }
    for single, double in (("epp-default", "epp-default-2x"), ("epp-precise", "epp-precise-2x")):
        one, two = per_router.get(single, {}), per_router.get(double, {})
        for rate in sorted(set(one) & set(two)):
            checks.setdefault("replicas", {})[f"{single} @ {rate:g}"] = {
                "hit_rate_1_replica": one[rate].prefix_hit_rate,
                "hit_rate_2_replicas": two[rate].prefix_hit_rate,
            }
    return checks


def _ratio(approx: RunRecord, precise: RunRecord) -> float | None:
    if approx.stats.ttft is None or precise.stats.ttft is None or precise.stats.ttft.p90 <= 0:
        return None
    return approx.stats.ttft.p90 / precise.stats.ttft.p90


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}"


def markdown(records: Sequence[RunRecord], setup: dict[str, Any]) -> str:
    summary = summarize(records)
    parts = [
        "Simulated vLLM pods (`python -m simulator`, 0.2 ms of prefill per uncached prompt token, "
        "16-token KV blocks) that publish their KV-cache events as vLLM does (`--kv-events-config`, "
        "`sha256_cbor` block keys, `PYTHONHASHSEED` 0); the EPP's precise producer subscribes to "
        "every pod and computes the same keys from the prompt (the token-producer's simulator "
        "backend). `epp-default` is llm-d's default profile (approximate prefix 3, queue 2, KV 2), "
        "`epp-precise` llm-d's precise guide profile (precise prefix 2, queue 1, KV 1, speculative "
        "indexing on). Hit rate is the pods' own: prompt tokens served from their prefix cache. Why "
        "one approximate EPP ties with precise under churn, and where they part: "
        "[docs/precise-prefix.md](docs/precise-prefix.md#why-cache-churn-alone-does-not-separate-"
        "precise-from-approximate). "
        f"TTFT SLO for the throughput column: p90 <= {setup['ttft_slo_s'] * 1000:g} ms. "
        f"{setup['pods']} pods; the 1-minute load average was {setup['load_average_1m']['before']:.1f} "
        f"before and {setup['load_average_1m']['after']:.1f} after, on {os.cpu_count()} cores shared "
        "with the pods, routers and client."
        + (
            " **Other work was running on the machine: the figures are indicative; repeat the run "
            "on a quiet machine before quoting them.**"
            if max(setup["load_average_1m"].values()) > (os.cpu_count() or 1)
            else ""
        ),
    ]
    by_workload: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_workload[record.workload].append(record)
    for workload, runs in by_workload.items():
        info = setup["workloads"][workload]
        parts.append(f"### Workload `{workload}`\n\n{info['description']}. Pods: {info['pods']}.")
        rows = summary[workload]["routers"]
        rates = sorted({r.rate_rps for r in runs})
        headers = ["router"]
        for rate in rates:
            headers += [f"TTFT p50 @ {rate:g}/s (ms)", f"p90 @ {rate:g}/s", f"hit % @ {rate:g}/s"]
        headers.append("throughput at SLO (req/s)")
        table = []
        for router, row in rows.items():
            cells: list[Any] = [router]
            for rate in rates:
                entry = row["by_rate"].get(f"{rate:g}")
                if entry is None:
                    cells += ["-", "-", "-"]
                else:
                    cells += [
                        _ms(entry["ttft_p50_s"]),
                        _ms(entry["ttft_p90_s"]),
                        f"{entry['prefix_hit_rate'] * 100:.0f}",
                    ]
            slo = row["throughput_at_slo_rps"]
            cells.append("none met" if slo is None else f"{slo:.2f}")
            table.append(cells)
        parts.append(report.markdown_table(headers, table))
        parts.append("<details><summary>All figures</summary>\n\n" + detail_table(runs) + "\n\n</details>")
        parts.append(_verdict(summary[workload]["checks"], workload))
    return "\n\n".join(parts)


def _verdict(checks: dict[str, Any], workload: str) -> str:
    lines = []
    labels = {"precise_vs_approx": "one EPP", "precise_vs_approx_2_replicas": "two EPP replicas"}
    for key, label in labels.items():
        for rate, entry in checks.get(key, {}).items():
            ratio = entry["ttft_p90_ratio_approx_over_precise"]
            lines.append(
                f"- {label} @ {rate} req/s: approximate TTFT p90 / precise TTFT p90 = "
                f"{'n/a' if ratio is None else f'{ratio:.2f}x'}; hit rate "
                f"{entry['hit_rate_approx'] * 100:.0f}% (approximate) vs "
                f"{entry['hit_rate_precise'] * 100:.0f}% (precise)"
            )
    for name, entry in checks.get("replicas", {}).items():
        lines.append(
            f"- {name}: hit rate {entry['hit_rate_1_replica'] * 100:.0f}% with one EPP, "
            f"{entry['hit_rate_2_replicas'] * 100:.0f}% with two active-active replicas"
        )
    return f"Checks ({workload}):\n\n" + "\n".join(lines) if lines else ""


if __name__ == "__main__":
    sys.exit(main())
