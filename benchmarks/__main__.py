"""``./dev bench`` (``python -m benchmarks``): the routing comparison on simulated pods.

A full run (12-15 minutes on 2 cores, more on a loaded machine) writes the BENCHMARKS.md section,
one PNG per workload and ``benchmarks/results/routing.json``. ``--quick`` runs a tiny version of
everything in seconds and only writes JSON (under build/ unless ``--results-dir`` says otherwise),
which is what the harness test uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import publish, report
from benchmarks.pool import SimPool, SimTiming
from benchmarks.results_model import RunRecord
from benchmarks.routers import ROUTERS, router_by_name
from benchmarks.runner import Plan, run_plan, stderr_log
from benchmarks.workloads import (
    MultiTurnChatWorkload,
    RandomWorkload,
    SharedPrefixWorkload,
    Workload,
    workload_fields,
)

MODEL = "sim-llama"
# A --quick run is a smoke test: its results go under build/, never over the committed ones.
QUICK_RESULTS_DIR = report.ROOT / "build" / "bench-quick"

FULL: dict[str, tuple[Workload, tuple[float, ...]]] = {
    "shared-prefix": (SharedPrefixWorkload(), (8.0, 16.0, 24.0)),
    "multi-turn-chat": (MultiTurnChatWorkload(), (4.0, 8.0, 16.0)),
    "random": (RandomWorkload(), (8.0, 16.0, 24.0)),
}
QUICK: dict[str, tuple[Workload, tuple[float, ...]]] = {
    "shared-prefix": (
        SharedPrefixWorkload(
            groups=2, prompts_per_group=3, system_prompt_tokens=200, question_tokens=20, output_tokens=4
        ),
        (10.0,),
    ),
    "multi-turn-chat": (
        MultiTurnChatWorkload(
            conversations=2,
            turns=2,
            system_prompt_tokens=100,
            user_turn_tokens=20,
            assistant_turn_tokens=20,
            output_tokens=4,
        ),
        (10.0,),
    ),
    "random": (RandomWorkload(count=4, prompt_tokens=100, output_tokens=4), (10.0,)),
}
QUICK_ROUTERS = ("round-robin", "epp-default")
QUICK_TIMING = SimTiming(kv_cache_tokens=4096)


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _rates(value: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(item) for item in _csv(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"rates must be numbers separated by commas: {value!r}") from exc
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be > 0 requests/s: {value!r}")
    return rates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./dev bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny workloads, 3 pods, round-robin and epp-default only; JSON only",
    )
    parser.add_argument(
        "--routers", type=_csv, help=f"comma-separated subset of: {', '.join(r.name for r in ROUTERS)}"
    )
    parser.add_argument("--workloads", type=_csv, help=f"comma-separated subset of: {', '.join(FULL)}")
    parser.add_argument("--rates", type=_rates, help="arrival rates (req/s) for every workload, e.g. 4,8")
    parser.add_argument("--pods", type=int, help="number of simulated pods (default 8; 3 with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ttft-slo-ms",
        type=float,
        default=400.0,
        help="TTFT p90 objective for goodput and throughput-at-SLO (default 400)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help=f"where routing.json goes (default benchmarks/results; with --quick {QUICK_RESULTS_DIR}, "
        "so a smoke run never overwrites the committed results)",
    )
    parser.add_argument(
        "--no-markdown", action="store_true", help="do not write BENCHMARKS.md or plots (implied by --quick)"
    )
    parser.add_argument("--log-dir", type=Path, help="process logs (default: a new temporary directory)")
    parser.add_argument(
        "--republish",
        type=Path,
        metavar="ROUTING_JSON",
        help="run nothing: rewrite BENCHMARKS.md and the plots from a saved routing.json",
    )
    return parser


def republish(path: Path) -> int:
    """Rewrite the BENCHMARKS.md section and plots from saved results, under their original command."""
    try:
        data = json.loads(path.read_text())
        records = [RunRecord.from_json(run) for run in data["runs"]]
        setup, command = data["setup"], data["command"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        stderr_log(f"cannot republish {path}: {type(exc).__name__}: {exc}")
        return 2
    publish.publish(records, setup, command, write_markdown=True, results_dir=path.parent)
    stderr_log(f"rewrote the BENCHMARKS.md section and plots from {path}")
    return 0


def results_dir(quick: bool, given: Path | None) -> Path:
    """Where routing.json goes: as given, else the committed results, or build/ for --quick."""
    if given is not None:
        return given
    return QUICK_RESULTS_DIR if quick else report.RESULTS_DIR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.republish is not None:
        return republish(args.republish)
    args.results_dir = results_dir(args.quick, args.results_dir)
    catalogue = QUICK if args.quick else FULL
    workload_names = args.workloads or list(catalogue)
    unknown = [name for name in workload_names if name not in catalogue]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(catalogue)}")
    try:
        routers = [
            router_by_name(name)
            for name in (args.routers or (QUICK_ROUTERS if args.quick else [r.name for r in ROUTERS]))
        ]
    except ValueError as exc:
        parser.error(str(exc))
    pods = args.pods if args.pods is not None else (3 if args.quick else 8)
    if pods < 1:
        parser.error(f"--pods must be >= 1, got {pods}")
    if args.ttft_slo_ms <= 0:
        parser.error(f"--ttft-slo-ms must be > 0, got {args.ttft_slo_ms}")
    timing = QUICK_TIMING if args.quick else SimTiming()
    plan = Plan(
        workloads=[(catalogue[name][0], args.rates or catalogue[name][1]) for name in workload_names],
        routers=routers,
        model=MODEL,
        seed=args.seed,
        ttft_slo_s=args.ttft_slo_ms / 1000,
    )
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-"))
    stderr_log(
        f"{plan.cells} runs: {len(plan.workloads)} workload(s) x rates x {len(routers)} router(s) on "
        f"{pods} simulated pods; process logs in {log_dir}"
    )
    load_before = os.getloadavg()
    with SimPool(pods, MODEL, timing, log_dir / "pods") as pool:
        records = run_plan(plan, pool, log_dir)
    load_after = os.getloadavg()
    setup = {
        "pods": pods,
        "pool_description": f"{pods} `python -m simulator` processes; {timing.describe()}.",
        "sim_timing": {name: getattr(timing, name) for name in timing.__slots__},
        "ttft_slo_s": plan.ttft_slo_s,
        # Other work on the machine skews every figure; the 1-minute load average says how much there was.
        "load_average_1m": {"before": load_before[0], "after": load_after[0]},
        "seed": plan.seed,
        "routers": {r.name: r.description for r in routers},
        "workloads": {w.name: w.describe() for w, _ in plan.workloads},
        "workload_fields": {w.name: workload_fields(w) for w, _ in plan.workloads},
        "rates": {w.name: list(rates) for w, rates in plan.workloads},
    }
    command = "./dev bench" + (
        "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    )
    data = publish.publish(
        records,
        setup,
        command,
        write_markdown=not (args.quick or args.no_markdown),
        results_dir=args.results_dir,
    )
    stderr_log(f"results: {args.results_dir / 'routing.json'}")
    for workload, rows in data["summary"].items():
        top = rows[0]["by_rate"][-1]["rate_rps"] if rows else 0
        stderr_log(
            f"{workload} @ {top:g} req/s: "
            + ", ".join(f"{row['router']} p50 {_ms(row['by_rate'][-1]['ttft_p50_s'])}" for row in rows)
        )
    print(json.dumps(data["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
