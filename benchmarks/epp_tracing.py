"""What ``--tracing`` costs a scheduling decision: ``SchedulingDirector.decide`` plain, and wrapped by
``epp.tracing.DecisionTracer`` at a 10 % parent-based ratio sample (the stack's default) and at 100 %.

One director (64 pods, llm-d's default config, 1k-token shared-prefix prompts as in
``benchmarks.epp_decision``) is timed in interleaved blocks of 200 decisions per variant, so load on
the machine falls on all variants alike; spans go through the SDK's BatchSpanProcessor to an
in-memory exporter (no network). Tracing off is the plain method itself: the director installs no
wrapper without a tracer (``benchmarks.epp_decision`` times that path).

Usage: ``python -m benchmarks.epp_tracing [--blocks N] [--no-write]``
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from collections.abc import Callable
from typing import Any

from benchmarks import report
from benchmarks.epp_decision import _pool, _requests
from epp.tracing import decision_tracer

BLOCK = 200


def _provider(ratio: float) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=1_000_000))
    return provider


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(blocks: int) -> dict[str, dict[str, float]]:
    rng = random.Random(64)
    director, _ = _pool(64, rng, "default")  # llm-d's default profile
    providers = {"10 %": _provider(0.1), "100 %": _provider(1.0)}
    plain = director.decide
    variants: dict[str, Callable[..., Any]] = {"off": plain}
    variants.update({f"on, {k} sampled": decision_tracer(p).wrap(plain) for k, p in providers.items()})
    requests = _requests(400 + blocks * len(variants) * BLOCK, 1024, rng)
    for request in requests[:400]:  # warm the prefix index
        plain(request)
        director.handle_response_complete(request, None, failed=False)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    position = 400
    gc.collect()
    gc.disable()
    try:
        for _ in range(blocks):
            for name, decide in variants.items():
                for request in requests[position : position + BLOCK]:
                    started = time.thread_time_ns()
                    decide(request)
                    cpu[name].append((time.thread_time_ns() - started) / 1000)
                    director.handle_response_complete(request, None, failed=False)
                position += BLOCK
    finally:
        gc.enable()
        for provider in providers.values():
            provider.shutdown()
    return {
        name: {"cpu_p50_us": _percentile(v, 0.5), "cpu_p99_us": _percentile(v, 0.99), "n": len(v)}
        for name, v in cpu.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="blocks of 200 decisions per variant")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = measure(args.blocks)
    load_after = os.getloadavg()[0]
    for name, row in rows.items():
        print(name, row, flush=True)
    if args.no_write:
        return
    table = report.markdown_table(
        ["tracing", "decisions", "CPU p50 (us)", "CPU p99 (us)"],
        [
            [name, int(r["n"]), round(r["cpu_p50_us"], 1), round(r["cpu_p99_us"], 1)]
            for name, r in rows.items()
        ],
    )
    body = f"""
What is timed: `SchedulingDirector.decide()` at 64 pods, llm-d's default config, 1k-token prompts
(the `epp-decision` workload), plain and wrapped by the EPP's decision tracer (SDK BatchSpanProcessor,
in-memory exporter), interleaved in blocks of {BLOCK} decisions. "off" is what the EPP runs without
`--tracing`: no wrapper is installed.

{table}

The 1-minute load average was {load_before:.1f} before and {load_after:.1f} after the run on this
{os.cpu_count()}-core machine.
"""
    report.write_section(
        "epp-tracing", "EPP decision cost of OTLP tracing", body, "python -m benchmarks.epp_tracing"
    )


if __name__ == "__main__":
    main()
