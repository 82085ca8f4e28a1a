"""Turn run records into BENCHMARKS.md tables, one PNG plot per workload, and a JSON file."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.results_model import RunRecord
from benchmarks.stats import throughput_at_slo

SECTION_ID = "routing"
SECTION_TITLE = "Routing: EPP profiles vs round-robin, random, sglang-router and vllm-router"
BASELINE = "round-robin"
EPP_DEFAULT = "epp-default"
PEERS = ("sglang-cache-aware", "vllm-router-cache-aware")


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}"


def _by_workload(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        grouped[record.workload].append(record)
    return grouped


def detail_table(records: Sequence[RunRecord]) -> str:
    headers = [
        "router",
        "rate (req/s)",
        "TTFT p50 (ms)",
        "TTFT p90",
        "TTFT p99",
        "E2E p50 (ms)",
        "E2E p99",
        "throughput (req/s)",
        "output tok/s",
        "prefix hit %",
        "pod max/mean",
        "goodput @SLO (req/s)",
        "failed",
    ]
    rows: list[list[Any]] = []
    for r in sorted(records, key=lambda r: (r.rate_rps, r.router)):
        s = r.stats
        rows.append(
            [
                r.router,
                f"{r.rate_rps:g}",
                _ms(s.ttft.p50 if s.ttft else None),
                _ms(s.ttft.p90 if s.ttft else None),
                _ms(s.ttft.p99 if s.ttft else None),
                _ms(s.latency.p50 if s.latency else None),
                _ms(s.latency.p99 if s.latency else None),
                f"{s.throughput_rps:.2f}",
                f"{s.output_tokens_per_s:.0f}",
                f"{r.prefix_hit_rate * 100:.0f}",
                f"{r.balance.max_over_mean:.2f}",
                f"{s.goodput_rps:.2f}",
                f"{s.failed}/{s.requests}",
            ]
        )
    return report.markdown_table(headers, rows)


def summary_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Per router on one workload: TTFT p50 at the highest rate, speed-up over round-robin, SLO throughput."""
    top_rate = max(r.rate_rps for r in records)
    at_top = {r.router: r for r in records if r.rate_rps == top_rate}
    baseline = at_top.get(BASELINE)
    baseline_p50 = baseline.stats.ttft.p50 if baseline and baseline.stats.ttft else None
    per_router: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        per_router[r.router].append(r)
    rows = []
    for router, runs in per_router.items():
        top = at_top.get(router)
        p50 = top.stats.ttft.p50 if top and top.stats.ttft else None
        rows.append(
            {
                "router": router,
                "rate_rps": top_rate,
                "ttft_p50_s": p50,
                "speedup_vs_round_robin": (baseline_p50 / p50) if baseline_p50 and p50 else None,
                "throughput_at_slo_rps": throughput_at_slo([(r.rate_rps, r.stats) for r in runs]),
                "ttft_slo_s": runs[0].stats.ttft_slo_s,
            }
        )
    return sorted(rows, key=lambda row: (row["ttft_p50_s"] is None, row["ttft_p50_s"] or 0.0))


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = [
        "router",
        "TTFT p50 at top rate (ms)",
        "x better than round-robin",
        "throughput at TTFT p90 SLO (req/s)",
    ]
    body = [
        [
            row["router"],
            _ms(row["ttft_p50_s"]),
            "n/a" if row["speedup_vs_round_robin"] is None else f"{row['speedup_vs_round_robin']:.2f}",
            "missed at every rate"
            if row["throughput_at_slo_rps"] is None
            else f"{row['throughput_at_slo_rps']:.2f}",
        ]
        for row in rows
    ]
    return report.markdown_table(headers, body)


def goal_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """The issue's goal, checked on the shared-prefix summary rows."""
    by_router = {row["router"]: row for row in rows}
    epp = by_router.get(EPP_DEFAULT)
    if epp is None or epp["ttft_p50_s"] is None:
        return "Goal not evaluated: the EPP default profile has no completed run on this workload."
    speedup = epp["speedup_vs_round_robin"]
    peers = [by_router[p] for p in PEERS if p in by_router and by_router[p]["ttft_p50_s"] is not None]
    best_peer = min(peers, key=lambda row: row["ttft_p50_s"]) if peers else None
    parts = [
        f"EPP default TTFT p50 is {speedup:.2f}x better than round-robin (goal: >= 3x): "
        f"{'met' if speedup is not None and speedup >= 3 else 'NOT met'}."
        if speedup is not None
        else "No round-robin baseline to compare with."
    ]
    if best_peer is not None:
        as_good = epp["ttft_p50_s"] <= best_peer["ttft_p50_s"]
        parts.append(
            f"Best peer {best_peer['router']}: {_ms(best_peer['ttft_p50_s'])} ms vs EPP "
            f"{_ms(epp['ttft_p50_s'])} ms (goal: at least as good): "
            f"{'met' if as_good else 'NOT met'}."
        )
    return " ".join(parts)


def plot_workload(workload: str, records: Sequence[RunRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_router: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        per_router[r.router].append(r)
    figure, (ax_p50, ax_p90, ax_hit) = plt.subplots(1, 3, figsize=(15, 4.5))
    for router, runs in sorted(per_router.items()):
        runs = sorted(runs, key=lambda r: r.rate_rps)
        rates = [r.rate_rps for r in runs]
        ax_p50.plot(
            rates,
            [r.stats.ttft.p50 * 1000 if r.stats.ttft else float("nan") for r in runs],
            marker="o",
            label=router,
        )
        ax_p90.plot(
            rates,
            [r.stats.ttft.p90 * 1000 if r.stats.ttft else float("nan") for r in runs],
            marker="o",
            label=router,
        )
        ax_hit.plot(rates, [r.prefix_hit_rate * 100 for r in runs], marker="o", label=router)
    for axis, title in ((ax_p50, "TTFT p50 (ms)"), (ax_p90, "TTFT p90 (ms)")):
        axis.set_yscale("log")
        axis.set_title(title)
    ax_hit.set_title("prefix-cache hit rate (% of prompt tokens)")
    ax_hit.set_ylim(0, 100)
    for axis in (ax_p50, ax_p90, ax_hit):
        axis.set_xlabel("offered rate (req/s, Poisson)")
        axis.grid(True, alpha=0.3)
    ax_p50.legend(fontsize=8)
    figure.suptitle(f"workload: {workload}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def publish(
    records: Sequence[RunRecord],
    setup: dict[str, Any],
    command: str,
    *,
    write_markdown: bool,
    results_dir: Path = report.RESULTS_DIR,
    results_name: str = "routing",
) -> dict[str, Any]:
    """Write the JSON (always) and, if asked, the plots and the BENCHMARKS.md section; return the JSON."""
    grouped = _by_workload(records)
    summaries = {workload: summary_rows(runs) for workload, runs in grouped.items()}
    data = {
        "setup": setup,
        "command": command,
        "machine": report.machine_description(),
        "runs": [r.to_json() for r in records],
        "summary": summaries,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{results_name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if not write_markdown:
        return data
    lines = [
        "All routers drive the same simulated vLLM pods (restarted cold before every run), with the same "
        "requests at the same Poisson send times.",
        "",
        f"Pods and simulator timing: {setup['pool_description']}",
        "",
        f"Machine load (1-minute load average) before / after the run: "
        f"{setup['load_average_1m']['before']:.1f} / {setup['load_average_1m']['after']:.1f} "
        "(the machine is shared; anything above 2 means other work competed for the 2 cores).",
        "",
        f"TTFT SLO for goodput and throughput-at-SLO: p90 <= {setup['ttft_slo_s'] * 1000:.0f} ms. "
        "Prefix hit % is the share of prompt tokens the pods served from their prefix cache "
        "(`vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`); pod max/mean is the busiest "
        "pod's request count over the mean (1.00 = even).",
        "",
        "Routers:",
        "",
    ]
    lines += [f"- `{name}`: {description}" for name, description in setup["routers"].items()]
    for workload, runs in grouped.items():
        plot_path = report.RESULTS_DIR / f"routing-{workload}.png"
        plot_workload(workload, runs, plot_path)
        lines += ["", f"### Workload `{workload}`", "", setup["workloads"][workload], ""]
        if workload == "shared-prefix":
            lines += [f"**Goal check:** {goal_verdict(summaries[workload])}", ""]
        lines += [
            summary_table(summaries[workload]),
            "",
            detail_table(runs),
            "",
            f"![{workload}](benchmarks/results/{plot_path.name})",
        ]
    lines += ["", f"Raw results: `benchmarks/results/{results_name}.json`."]
    report.write_section(SECTION_ID, SECTION_TITLE, "\n".join(lines), command)
    return data
