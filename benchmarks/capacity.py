"""Where a model server saturates: rate sweeps of unique prompts straight at one server, no router.

"Capacity" here is measured, not assumed: the best served req/s whose TTFT p90 stays within the SLO
(the knee), with the concurrency the server carried there (Little's law), which is what a
``concurrency-detector`` should be allowed per pod. Three targets, the same procedure:

* ``vllm``: real vLLM 0.32 on CPU (``.venv-vllm``, built by ``./dev vllm-env``) serving the tiny
  2-layer model of ``tools/build_tiny_model.py``, with ``--max-num-seqs 8``;
* ``sim-cpu``: the simulator with the timing measured on that same vLLM (its defaults) and the same
  batch limit and block size: does the simulator's model saturate where vLLM does?
* ``sim-pod``: one pod of the routing/saturation benchmarks' pool (``benchmarks.pool.SimTiming``,
  GPU-like prefill), whose knee times the pod count places the pool's saturation point.

Usage: ``python -m benchmarks.capacity --targets vllm,sim-cpu,sim-pod [--duration 15] [--no-write]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.pool import SimTiming
from benchmarks.sweep import Point, describe, sweep, throughput_at_slo
from benchmarks.workloads import RandomWorkload
from localrun import ManagedProcess, free_port, http_ok

SECTION_ID = "capacity"
SECTION_TITLE = "Capacity: where one model server saturates (real vLLM CPU, the simulator, a pool pod)"
ROOT = report.ROOT
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
TINY_MODEL = ROOT / "build" / "tiny-llama"
SERVED = "tiny"
VLLM_MAX_NUM_SEQS = 8


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    description: str
    rates: tuple[float, ...]
    prompt_tokens: int
    output_tokens: int
    ttft_slo_s: float


TARGETS = {
    "vllm": Target(
        "vllm",
        f"real vLLM 0.32 CPU, tiny 2-layer Llama, bf16, --max-num-seqs {VLLM_MAX_NUM_SEQS}, "
        "--max-num-batched-tokens 2048, --enforce-eager, prefix caching on",
        (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0),
        800,
        24,
        0.25,
    ),
    "sim-cpu": Target(
        "sim-cpu",
        "`python -m simulator` with its defaults (the timing measured on the vLLM above), "
        f"--max-num-seqs {VLLM_MAX_NUM_SEQS}, --block-size 128",
        (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0),
        800,
        24,
        0.25,
    ),
    "sim-pod": Target(
        "sim-pod",
        f"one `python -m simulator` pod with the benchmarks' pool timing: {SimTiming().describe()}",
        (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
        800,
        24,
        1.0,  # the saturation benchmark's SLO
    ),
}


# The same server settings as the real-vLLM tests (tests/support/vllm_server.py), batch limit aside.
VLLM_ENV = {
    "VLLM_USE_SPINLOOP_EXT": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "auto",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def vllm_command(port: int) -> list[str]:
    return [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(TINY_MODEL),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        SERVED,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--enable-prefix-caching",
        "--max-num-seqs",
        str(VLLM_MAX_NUM_SEQS),
        "--max-num-batched-tokens",
        "2048",
        "--enforce-eager",
    ]


def start(target: str, log_dir: Path) -> tuple[str, ManagedProcess]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if target == "vllm":
        if not VLLM_PYTHON.exists():
            raise SystemExit("no .venv-vllm: build it with `./dev vllm-env`")
        if not (TINY_MODEL / "config.json").exists():
            import subprocess

            subprocess.run(
                [str(VLLM_PYTHON), str(ROOT / "tools" / "build_tiny_model.py"), str(TINY_MODEL)],
                check=True,
                timeout=300,
            )
        process = ManagedProcess(
            vllm_command(port),
            ready=http_ok(f"{url}/health"),
            name="vllm",
            env=VLLM_ENV,
            ready_timeout=300.0,
            stop_timeout=20.0,
            log_dir=log_dir,
        )
        return url, process.start()
    flags = ["--model", SERVED, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    if target == "sim-cpu":
        flags += ["--max-num-seqs", str(VLLM_MAX_NUM_SEQS), "--block-size", "128"]
    else:
        flags += SimTiming().flags()
    process = ManagedProcess(
        [sys.executable, "-m", "simulator", *flags],
        ready=http_ok(f"{url}/health"),
        name=target,
        log_dir=log_dir,
    )
    return url, process.start()


def measure(target: Target, duration_s: float, log_dir: Path) -> list[Point]:
    url, process = start(target.name, log_dir)
    try:
        counter = iter(range(1000))

        def requests_for(rate: float) -> Any:
            # A new seed per point: unique prompts every time, so no point reuses another's cache.
            count = max(8, round(rate * duration_s))
            workload = RandomWorkload(
                count=count, prompt_tokens=target.prompt_tokens, output_tokens=target.output_tokens
            )
            return workload.requests(SERVED, seed=1000 + next(counter))

        print(f"{target.name}: {target.description}", file=sys.stderr)
        return sweep(
            url, requests_for, target.rates, target.ttft_slo_s, log=lambda s: print(s, file=sys.stderr)
        )
    finally:
        process.stop()


def table(points: Sequence[Point]) -> str:
    rows = []
    for p in points:
        rows.append(
            [
                f"{p.rate_rps:g}",
                f"{p.throughput_rps:.2f}",
                f"{p.ttft.p50 * 1000:.0f}" if p.ttft else "n/a",
                f"{p.ttft.p90 * 1000:.0f}" if p.ttft else "n/a",
                f"{p.latency.p50 * 1000:.0f}" if p.latency else "n/a",
                f"{p.in_flight:.1f}",
                f"{p.goodput_rps:.2f}",
                f"{p.lost}/{p.requests}",
                "yes" if p.meets_slo else "no",
            ]
        )
    return report.markdown_table(
        [
            "offered (req/s)",
            "served (req/s)",
            "TTFT p50 (ms)",
            "TTFT p90 (ms)",
            "E2E p50 (ms)",
            "in flight",
            "goodput (req/s)",
            "lost",
            "meets SLO",
        ],
        rows,
    )


def knee_text(target: Target, points: Sequence[Point]) -> str:
    best = throughput_at_slo(points)
    peak = max((p.throughput_rps for p in points), default=0.0)
    if best is None:
        return f"No point met the TTFT p90 SLO of {target.ttft_slo_s * 1000:.0f} ms; peak {peak:.2f} req/s."
    return (
        f"Knee: **{best.throughput_rps:.2f} req/s** with TTFT p90 {best.ttft.p90 * 1000:.0f} ms "  # type: ignore[union-attr]
        f"(SLO {target.ttft_slo_s * 1000:.0f} ms) and **{best.in_flight:.1f} requests in flight**; "
        f"peak served throughput {peak:.2f} req/s."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__)
    parser.add_argument("--targets", default="vllm,sim-cpu,sim-pod")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals per point")
    parser.add_argument("--rates", help="override every target's rates (req/s, comma-separated)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    load_before = os.getloadavg()[0]
    results: dict[str, list[Point]] = {}
    for name in names:
        target = TARGETS[name]
        if args.rates:
            target = dataclasses.replace(target, rates=tuple(float(r) for r in args.rates.split(",")))
            TARGETS[name] = target
        results[name] = measure(target, args.duration, log_dir / name)
        print(knee_text(target, results[name]), file=sys.stderr)
    load_after = os.getloadavg()[0]
    command = "python -m benchmarks.capacity " + " ".join(argv if argv is not None else sys.argv[1:])
    data = {
        "command": command.strip(),
        "machine": report.machine_description(),
        "load_average_1m": {"before": load_before, "after": load_after},
        "duration_s": args.duration,
        "targets": {
            name: {"description": TARGETS[name].description, "points": [p.to_json() for p in points]}
            for name, points in results.items()
        },
    }
    if args.no_write:
        print(json.dumps({n: [describe(p) for p in ps] for n, ps in results.items()}, indent=1))
        return 0
    report.write_json("capacity", data)
    lines = [
        "Unique prompts (nothing to cache) of 800 tokens in the simulator's units (4 characters), 24 output "
        f"tokens, streamed, Poisson arrivals for {args.duration:g} s per point, sent straight to one server "
        "(no router, no gateway). A point meets the SLO when the TTFT p90 of the served requests is within "
        'it and no request was lost; "in flight" is served req/s x mean latency (Little\'s law).',
        "",
        f"Machine load (1-minute load average) before / after: {load_before:.1f} / {load_after:.1f} "
        "(2 shared cores: a real vLLM on CPU competes with the load generator for them).",
    ]
    for name, points in results.items():
        target = TARGETS[name]
        lines += [
            "",
            f"### `{name}`",
            "",
            target.description,
            "",
            table(points),
            "",
            knee_text(target, points),
        ]
    lines += ["", "Raw results: `benchmarks/results/capacity.json`."]
    report.write_section(SECTION_ID, SECTION_TITLE, "\n".join(lines), command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
