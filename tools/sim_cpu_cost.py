"""Measure the simulator's own CPU cost per request (what many simulated pods on 2 cores pay).

    .venv/bin/python tools/sim_cpu_cost.py --requests 400 --concurrency 16
    .venv/bin/python tools/sim_cpu_cost.py --scrapes-per-second 20   # plus an EPP-like /metrics scraper

Starts ``python -m simulator`` with zero modelled latency, sends completions (half streaming) from
this process, and reads the server's user+system CPU time from /proc before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

import aiohttp

from localrun.process import ManagedProcess, free_port, http_ok


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scrape(session: aiohttp.ClientSession, url: str, per_second: float, done: asyncio.Event) -> int:
    """GET /metrics at a fixed rate until ``done`` (the EPP's --refresh-metrics-interval 0.05 is 20/s)."""
    scrapes = 0
    while not done.is_set():
        async with session.get(f"{url}/metrics") as response:
            response.raise_for_status()
            await response.read()
        scrapes += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1 / per_second)
    return scrapes


async def load(
    url: str, requests: int, concurrency: int, prompt_chars: int, max_tokens: int, scrapes_per_second: float
) -> tuple[float, int]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        body = {
            "model": "m",
            "prompt": f"{index % 8} " + "x" * prompt_chars,
            "max_tokens": max_tokens,
            "stream": index % 2 == 0,
        }
        async with semaphore, session.post(f"{url}/v1/completions", json=body) as response:
            response.raise_for_status()
            await response.read()

    started = time.perf_counter()
    done = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        scraper = (
            asyncio.create_task(scrape(session, url, scrapes_per_second, done))
            if scrapes_per_second > 0
            else None
        )
        await asyncio.gather(*(one(session, i) for i in range(requests)))
        done.set()
        scrapes = await scraper if scraper is not None else 0
    return time.perf_counter() - started, scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prompt-chars", type=int, default=4000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--scrapes-per-second", type=float, default=0.0, help="also scrape /metrics (0 = no)")
    args = parser.parse_args()
    port = free_port()
    zero = [
        "--request-overhead",
        "0",
        "--tokenize-per-token",
        "0",
        "--step-overhead",
        "0.001",
        "--prefill-per-token",
        "0",
        "--decode-per-seq",
        "0",
    ]
    with ManagedProcess(
        [
            sys.executable,
            "-m",
            "simulator",
            "--model",
            "m",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
            *zero,
        ],
        ready=http_ok(f"http://127.0.0.1:{port}/health"),
        name="sim",
    ) as sim:
        before = cpu_seconds(sim.pid)
        wall, scrapes = asyncio.run(
            load(
                f"http://127.0.0.1:{port}",
                args.requests,
                args.concurrency,
                args.prompt_chars,
                args.max_tokens,
                args.scrapes_per_second,
            )
        )
        used = cpu_seconds(sim.pid) - before
    print(
        json.dumps(
            {
                "requests": args.requests,
                "concurrency": args.concurrency,
                "prompt_chars": args.prompt_chars,
                "max_tokens": args.max_tokens,
                "scrapes": scrapes,
                "wall_s": round(wall, 3),
                "sim_cpu_s": round(used, 3),
                "sim_cpu_ms_per_request": round(1000 * used / args.requests, 3),
                "sim_cpu_us_per_output_token": round(1e6 * used / (args.requests * args.max_tokens), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
