"""``python -m benchmarks.lora_affinity``: several LoRA adapters on one pool, adapter affinity against
round-robin.

The pods are simulated vLLM servers with LoRA on (``simulator.lora``): each may run requests of at
most ``--max-loras`` different adapters at once (a request for a further adapter waits, as vLLM's
scheduler defers it) and puts an adapter into one of its ``max-loras`` GPU slots at a cost
(``--lora-load-time``), counted in ``simulator:lora_loads_total``. Requests name adapters with a
Zipf popularity (a few hot adapters, a long tail), unrelated prompts (no prefix sharing: only the
adapter can make a pod a better choice), streaming, open-loop Poisson arrivals. Three routers, the
pods restarted cold before each run:

* ``round-robin``: Envoy alone, ROUND_ROBIN over the pods (a plain Service);
* ``epp-default``: Envoy + the EPP with llm-d's default profile (queue, KV-cache, prefix), blind to
  adapters;
* ``epp-lora``: the same plus ``lora-affinity-scorer`` (weight 1): the profile the stack renders for
  a pool with adapters (``pulumi_llmd.components.pickerconfig``, tied to this text by a test).

Reported per run: TTFT p50/p90/p99, end-to-end p50, throughput, the adapter loads over all pods
(fewer loads = adapters stay where they are used), and how evenly requests spread.

The load cost is an assumption, not a measurement: swapping an adapter into a GPU slot is a copy of
its weights (a rank-16 adapter of an 8B model is tens of MB), a few to tens of milliseconds on a
GPU; on CPU with the tiny model it is below what this machine can time. The default here is 20 ms;
``--lora-load-time`` changes it, ``--max-loras`` the slots per pod.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import report
from benchmarks.loadgen import run_open_loop
from benchmarks.pool import SimPool, SimTiming
from benchmarks.routers import Kind, RouterSpec, router_by_name, start_router
from benchmarks.stats import Balance, summarize
from benchmarks.workloads import RequestSpec, poisson_offsets, random_text

SECTION_ID = "lora-affinity"
SECTION_TITLE = "LoRA: adapter affinity vs round-robin (several adapters on one pool)"
MODEL = "sim-llama"
LOADS = "simulator:lora_loads_total"
SUCCESS = "vllm:request_success_total"
QUICK_RESULTS_DIR = report.ROOT / "build" / "bench-quick"

# llm-d's default profile plus lora-affinity-scorer at weight 1: what the stack renders for a pool
# serving adapters (tests/benchmarks/test_lora_affinity.py holds the two equal).
LORA_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters:
    scheme: http
    path: /metrics
    insecureSkipVerify: true
- type: core-metrics-extractor
- type: lora-affinity-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: lora-affinity-scorer
    weight: 1
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors:
    - pluginRef: core-metrics-extractor
"""

ROUTERS = (
    router_by_name("round-robin"),
    router_by_name("epp-default"),
    RouterSpec(
        "epp-lora",
        Kind.EPP,
        "Envoy + EPP, llm-d's default profile plus lora-affinity-scorer (weight 1), as the stack "
        "renders it for a pool with adapters",
        epp_config=LORA_CONFIG,
    ),
)


@dataclass(frozen=True, slots=True)
class LoraTiming(SimTiming):
    """The routing benchmark's simulated pods with LoRA on: ``adapters`` served by every pod."""

    adapters: tuple[str, ...] = ()
    max_loras: int = 2
    lora_load_s: float = 0.02

    def flags(self) -> list[str]:
        modules = [f"{name}=/adapters/{name}" for name in self.adapters]
        return [
            *SimTiming.flags(self),  # not super(): slots=True dataclasses are new classes
            "--enable-lora",
            "--max-loras",
            str(self.max_loras),
            "--lora-load-time",
            f"{self.lora_load_s:g}",
            "--lora-modules",
            *modules,
        ]


@dataclass(frozen=True, slots=True)
class AdapterWorkload:
    """Unrelated prompts, each naming one of ``adapters`` adapters drawn with Zipf popularity."""

    count: int = 160
    adapters: int = 8
    zipf_s: float = 1.0
    prompt_tokens: int = 400
    output_tokens: int = 32
    name: str = field(default="adapters", init=False)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(f"adapter-{i}" for i in range(self.adapters))

    def describe(self) -> str:
        return (
            f"{self.count} unrelated prompts of {self.prompt_tokens} tokens, {self.output_tokens} output "
            f"tokens, each naming one of {self.adapters} adapters (Zipf s={self.zipf_s:g}: the most "
            f"popular gets {self.shares()[0]:.0%} of requests), /v1/completions streaming"
        )

    def shares(self) -> list[float]:
        weights = [1 / (rank + 1) ** self.zipf_s for rank in range(self.adapters)]
        total = sum(weights)
        return [w / total for w in weights]

    def requests(self, model: str, seed: int) -> list[RequestSpec]:
        rng = random.Random(seed)
        names = rng.choices(self.adapter_names, weights=self.shares(), k=self.count)
        specs = []
        for index, adapter in enumerate(names):
            body = {
                "model": adapter,
                "prompt": random_text(rng, self.prompt_tokens),
                "max_tokens": self.output_tokens,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            specs.append(
                RequestSpec("/v1/completions", body, f"r{index}", self.prompt_tokens, self.output_tokens)
            )
        return specs


async def _counters(urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """(adapter loads, requests) per pod from its /metrics."""

    async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            text = await response.text()
        loads = requests = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LOADS:
                    loads += sample.value
                elif sample.name == SUCCESS:
                    requests += sample.value
        return loads, requests

    async with aiohttp.ClientSession() as session:
        values = await asyncio.gather(*(one(session, url) for url in urls.values()))
    return dict(zip(urls, values, strict=True))


@dataclass(frozen=True)
class Run:
    router: str
    rate_rps: float
    requests: int
    failed: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    throughput_rps: float
    adapter_loads: int
    requests_per_pod: dict[str, int]
    pod_max_over_mean: float
    load_average: tuple[float, float]  # 1-minute load average before and after
    errors: tuple[str, ...] = ()


def run_one(
    pool: SimPool, router: RouterSpec, workload: AdapterWorkload, rate: float, seed: int, log_dir: Path
) -> Run:
    specs = workload.requests(MODEL, seed)
    offsets = poisson_offsets(len(specs), rate, seed)
    load_before = _load_average()
    pool.restart()
    running = start_router(router, pool.names, pool.endpoints, log_dir / router.name)
    try:
        before = asyncio.run(_counters(pool.metrics_urls))
        results = asyncio.run(run_open_loop(running.url, specs, offsets, request_timeout_s=120.0))
        after = asyncio.run(_counters(pool.metrics_urls))
    finally:
        running.stop()
    loads = sum(after[name][0] - before[name][0] for name in pool.names)
    per_pod = {name: int(after[name][1] - before[name][1]) for name in pool.names}
    stats = summarize(results, ttft_slo_s=1.0)
    return Run(
        router=router.name,
        rate_rps=rate,
        requests=stats.requests,
        failed=stats.failed,
        ttft_p50_s=stats.ttft.p50 if stats.ttft else None,
        ttft_p90_s=stats.ttft.p90 if stats.ttft else None,
        ttft_p99_s=stats.ttft.p99 if stats.ttft else None,
        e2e_p50_s=stats.latency.p50 if stats.latency else None,
        throughput_rps=stats.throughput_rps,
        adapter_loads=int(loads),
        requests_per_pod=per_pod,
        pod_max_over_mean=Balance.of(per_pod).max_over_mean,
        load_average=(load_before, _load_average()),
        errors=tuple(dict.fromkeys(r.error for r in results if r.error))[:3],
    )


def _load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}"


def section(runs: Sequence[Run], workload: AdapterWorkload, timing: LoraTiming, pods: int) -> str:
    rows = [
        [
            run.router,
            f"{run.rate_rps:g}",
            _ms(run.ttft_p50_s),
            _ms(run.ttft_p90_s),
            _ms(run.ttft_p99_s),
            _ms(run.e2e_p50_s),
            f"{run.throughput_rps:.2f}",
            str(run.adapter_loads),
            f"{run.adapter_loads / max(1, run.requests - run.failed):.2f}",
            f"{run.pod_max_over_mean:.2f}",
            str(run.failed),
            f"{run.load_average[0]:.1f} / {run.load_average[1]:.1f}",
        ]
        for run in runs
    ]
    table = report.markdown_table(
        [
            "router",
            "rate (req/s)",
            "TTFT p50 (ms)",
            "TTFT p90",
            "TTFT p99",
            "E2E p50 (ms)",
            "throughput (req/s)",
            "adapter loads",
            "loads per request",
            "pod max/mean",
            "failed",
            "load avg before / after",
        ],
        rows,
    )
    routers = "\n".join(f"- `{spec.name}`: {spec.description}" for spec in ROUTERS)
    return (
        f"{pods} simulated pods, every one serving {len(timing.adapters)} adapters with "
        f"`--max-loras {timing.max_loras}` (requests of at most {timing.max_loras} adapters run at once "
        f"on a pod; one for a further adapter waits) and an assumed `--lora-load-time "
        f"{timing.lora_load_s * 1000:g}` ms per adapter put into a slot. Pods: {timing.describe()}.\n\n"
        f"Workload: {workload.describe()}. Poisson arrivals, the same requests and send times for "
        f"every router; the pods are restarted (empty slots) before each run.\n\n{routers}\n\n{table}\n\n"
        "Adapter loads are the simulator's count of adapters put into a GPU slot "
        "(`simulator:lora_loads_total`, summed over the pods); a router that keeps each adapter's "
        "requests where it already runs needs fewer. The load-average column is the machine's "
        "1-minute load before and after each run: runs on a busy shared machine are noisy."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lora_affinity", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--rates", default="6,12", help="arrival rates, requests/s, comma-separated")
    parser.add_argument("--max-loras", type=int, default=2)
    parser.add_argument("--lora-load-time", type=float, default=0.02, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--routers", default=",".join(s.name for s in ROUTERS))
    parser.add_argument("--quick", action="store_true", help="a tiny run in seconds; JSON under build/ only")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    workload = AdapterWorkload(count=args.requests, adapters=args.adapters)
    if args.quick:
        rates, workload = [10.0], AdapterWorkload(count=12, adapters=3, prompt_tokens=80, output_tokens=4)
    timing = LoraTiming(
        adapters=workload.adapter_names,
        max_loras=args.max_loras,
        lora_load_s=args.lora_load_time,
        kv_cache_tokens=4096 if args.quick else SimTiming().kv_cache_tokens,
    )
    wanted = {name.strip() for name in args.routers.split(",")}
    routers = [spec for spec in ROUTERS if spec.name in wanted]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    runs: list[Run] = []
    started = time.monotonic()
    with SimPool(args.pods, MODEL, timing, log_dir / "pods", ready_timeout_s=90.0) as pool:
        for rate in rates:
            for router in routers:
                print(f"{router.name} @ {rate:g} req/s ({time.monotonic() - started:.0f}s)", file=sys.stderr)
                run = run_one(pool, router, workload, rate, args.seed, log_dir)
                print(
                    f"    TTFT p50 {_ms(run.ttft_p50_s)} ms p90 {_ms(run.ttft_p90_s)} ms, "
                    f"{run.adapter_loads} adapter loads, {run.failed} failed",
                    file=sys.stderr,
                )
                runs.append(run)
    document = {
        "workload": asdict(workload),
        "timing": asdict(timing),
        "pods": args.pods,
        "seed": args.seed,
        "runs": [asdict(run) for run in runs],
    }
    if args.quick or args.results_dir is not None:
        out = args.results_dir or QUICK_RESULTS_DIR
        out.mkdir(parents=True, exist_ok=True)
        (out / "lora-affinity.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return 0 if all(run.failed == 0 for run in runs) else 1
    report.write_json("lora-affinity", document)
    command = "python -m benchmarks.lora_affinity " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    report.write_section(
        SECTION_ID, SECTION_TITLE, section(runs, workload, timing, args.pods), command.strip()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
