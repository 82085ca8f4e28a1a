"""CPU cost of the EPP's model-server metrics scraping at 64 and 256 pods.

Fake vLLM ``/metrics`` endpoints (one aiohttp app listening on N loopback ports) run in a second
thread with its own event loop; the scraper runs in the main thread at the EPP's default 50 ms
interval. ``time.thread_time()`` of the main thread is the scraper's CPU, so the fake servers'
work is not counted. Also compares the targeted parser with prometheus_client's parser on the
same page.

Usage: ``python -m benchmarks.epp_scrape [--seconds S] [--no-write]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import report
from epp.datastore import Datastore, EndpointSpec
from epp.scrape.parser import parse_metrics
from epp.scrape.scraper import MetricsScraper

INTERVAL = 0.05
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:time_per_output_token_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:iteration_tokens_total",
)


def vllm_page(waiting: int = 3, running: int = 12, kv: float = 0.42) -> str:
    """A page with vLLM's shape and size: gauges, counters and ten ~20-bucket histograms."""
    labels = 'engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"'
    lines = []
    for name, value in (
        ("vllm:num_requests_running", running),
        ("vllm:num_requests_waiting", waiting),
        ("vllm:kv_cache_usage_perc", kv),
    ):
        lines += [f"# HELP {name} {name}.", f"# TYPE {name} gauge", f"{name}{{{labels}}} {value}"]
    lines.append(
        'vllm:lora_requests_info{max_lora="0",running_lora_adapters="",waiting_lora_adapters=""} 1.7e9'
    )
    lines.append(f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="27000",{labels}}} 1.0')
    for name in (
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:num_preemptions_total",
    ):
        lines += [f"# TYPE {name} counter", f"{name}{{{labels}}} 1234567.0"]
    for name in HISTOGRAMS:
        lines += [f"# HELP {name} Histogram.", f"# TYPE {name} histogram"]
        for i in range(20):
            lines.append(f'{name}_bucket{{{labels},le="{0.001 * 2**i:g}"}} {i * 17}.0')
        lines += [
            f'{name}_bucket{{{labels},le="+Inf"}} 400.0',
            f"{name}_count{{{labels}}} 400.0",
            f"{name}_sum{{{labels}}} 987.6",
        ]
    return "\n".join(lines) + "\n"


class FakePods:
    """N listening ports served by one aiohttp app in a background thread."""

    def __init__(self, count: int, page: str) -> None:
        self.count, self.page = count, page.encode()
        self.ports: list[int] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="fake-pods", daemon=True)

    def __enter__(self) -> FakePods:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fake pods did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        body = self.page

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for _ in range(self.count):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


async def _scrape_for(ports: list[int], seconds: float) -> dict[str, float]:
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=INTERVAL, timeout=1.0)
    await scraper.start()
    datastore.replace_endpoints(
        EndpointSpec(f"pod-{i}", "127.0.0.1", 20000 + i, port) for i, port in enumerate(ports)
    )
    await asyncio.sleep(1.0)  # connections open, first-delay jitter done
    scrapes_before, cpu_before, wall_before = scraper.scrapes, time.thread_time(), time.monotonic()
    await asyncio.sleep(seconds)
    scrapes, cpu, wall = (
        scraper.scrapes - scrapes_before,
        time.thread_time() - cpu_before,
        time.monotonic() - wall_before,
    )
    failures = sum(e.scrape_failures for e in datastore.endpoints())
    await scraper.stop()
    pods = len(ports)
    return {
        "pods": pods,
        "scrapes": scrapes,
        "cpu_per_scrape_us": cpu / scrapes * 1e6,
        "cpu_per_cycle_ms": cpu / scrapes * pods * 1e3,
        "cpu_cores_used": cpu / wall,
        "achieved_interval_ms": wall / (scrapes / pods) * 1e3,
        "failing_endpoints_at_end": failures,
    }


def parser_cost(page: str, repeats: int = 300) -> dict[str, float]:
    started = time.process_time()
    for _ in range(repeats):
        parse_metrics(page, 0.0)
    targeted = (time.process_time() - started) / repeats * 1e6
    started = time.process_time()
    for _ in range(max(1, repeats // 10)):
        for family in text_string_to_metric_families(page):
            for _sample in family.samples:
                pass
    reference = (time.process_time() - started) / max(1, repeats // 10) * 1e6
    return {"page_bytes": len(page.encode()), "targeted_us": targeted, "prometheus_client_us": reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured scraping time per pool size")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    page = vllm_page()
    parsing = parser_cost(page)
    print(parsing, flush=True)
    rows: list[dict[str, Any]] = []
    for pods in (64, 256):
        with FakePods(pods, page) as fake:
            rows.append(asyncio.run(_scrape_for(fake.ports, args.seconds)))
        print(rows[-1], flush=True)
    if args.no_write:
        return
    table = report.markdown_table(
        [
            "pods",
            "scrapes",
            "CPU per scrape (us)",
            "CPU per cycle (ms)",
            "cores used",
            "achieved interval (ms)",
        ],
        [
            [
                r["pods"],
                r["scrapes"],
                round(r["cpu_per_scrape_us"]),
                round(r["cpu_per_cycle_ms"], 1),
                round(r["cpu_cores_used"], 2),
                round(r["achieved_interval_ms"], 1),
            ]
            for r in rows
        ],
    )
    load = os.getloadavg()[0]
    body = f"""
Scraper CPU (the main thread's `thread_time`; the fake pods are served from another thread, so
their work is not counted) at the EPP's default `--refresh-metrics-interval` of {INTERVAL * 1000:.0f} ms,
{args.seconds:.0f} s per row, a vLLM-shaped page of {parsing["page_bytes"]} bytes, plain HTTP (the
scraper's own keep-alive client, `epp/scrape/http.py`). "cycle" = one scrape of every pod.

{table}

"Achieved interval" is the mean time between two scrapes of one pod (50 ms when the scraper keeps
up). It is limited here by the fake pods sharing the process (and its GIL) and by the machine:
the 1-minute load average was {load:.1f} on 2 cores during this run. The CPU per scrape is the
number to plan with: 256 pods x 20 scrapes/s x that cost is the scraper's share of a core.

Parsing one page: targeted parser {parsing["targeted_us"]:.0f} us vs prometheus_client's parser
{parsing["prometheus_client_us"]:.0f} us ({parsing["prometheus_client_us"] / parsing["targeted_us"]:.0f}x).
"""
    report.write_section("epp-scrape", "EPP metrics scraping CPU", body, "python -m benchmarks.epp_scrape")
    report.write_json("epp_scrape", {"rows": rows, "parser": parsing})


if __name__ == "__main__":
    main()
