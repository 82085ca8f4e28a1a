"""What one metrics scrape costs a real vLLM and the EPP: the full ``/metrics`` page, which the
upstream EPP GETs every 50 ms from every pod, against the page filtered to the metrics the EPP reads
(``/metrics/?name[]=...``), which the bundled EPP scrapes once it has checked it against the full one
(``epp.scrape.scraper``, ``--metrics-name-filter``).

Real vLLM 0.32 on CPU (``.venv-vllm``, the tiny model, as ``benchmarks.capacity`` starts it) first
serves some completions, so its histograms hold samples as a serving pod's do. Then, in interleaved
rounds, this process GETs each page kind ``--scrapes`` times over one keep-alive connection, one
after another (the EPP's lean client, ``epp.scrape.http``) and parses every page
(``parse_metrics``). Measured per scrape:

* the vLLM API server's CPU: user + system time of its process (``/proc/<pid>/stat``), the process
  whose event loop renders ``/metrics`` and also streams tokens;
* the EPP side's CPU: this process's ``time.process_time()`` around the GETs and parses;
* the wall time of a GET, and the page's size.

    python -m benchmarks.vllm_scrape                      # 3 rounds of 400 scrapes per page kind
    python -m benchmarks.vllm_scrape --rounds 1 --scrapes 100 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.capacity import SERVED, start
from epp.scrape.http import KeepAliveGetter
from epp.scrape.parser import VLLM, parse_metrics
from epp.scrape.scraper import filtered_paths

FULL = "/metrics"
FILTERED = filtered_paths(FULL, VLLM)[1]  # what the scraper settles on against vLLM 0.32
PAGES = {"full": FULL, "filtered": FILTERED}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_up(url: str, requests: int) -> None:
    """Completions, so the latency and token histograms are populated as on a serving pod."""
    for i in range(requests):
        body = json.dumps({"model": SERVED, "prompt": f"request {i}: tell me a story", "max_tokens": 8})
        request = urllib.request.Request(
            url + "/v1/completions", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


async def measure(port: int, path: str, scrapes: int, server_pid: int) -> dict[str, float]:
    getter = KeepAliveGetter()
    try:
        status, body = await getter.get("127.0.0.1", port, path)  # connect outside the window
        assert status == 200, status
        server_before = process_cpu(server_pid)
        client_before, wall_before = time.process_time(), time.perf_counter()
        size = 0
        for _ in range(scrapes):
            status, body = await getter.get("127.0.0.1", port, path)
            if status != 200:
                raise SystemExit(f"GET {path} answered {status}")
            parse_metrics(body.decode("utf-8", "replace"), time.monotonic(), VLLM)
            size = len(body)
        wall = time.perf_counter() - wall_before
        client = time.process_time() - client_before
        server = process_cpu(server_pid) - server_before
    finally:
        await getter.close()
    return {
        "bytes": size,
        "server_us": server / scrapes * 1e6,
        "epp_us": client / scrapes * 1e6,
        "wall_ms": wall / scrapes * 1e3,
    }


def run(rounds: int, scrapes: int, warm: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vllm-scrape-") as logs:
        url, process = start("vllm", Path(logs))
        try:
            port = int(url.rsplit(":", 1)[1])
            warm_up(url, warm)
            samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in PAGES}
            load = [os.getloadavg()[0]]
            for _ in range(rounds):
                for kind, path in PAGES.items():
                    samples[kind].append(asyncio.run(measure(port, path, scrapes, process.pid)))
                load.append(os.getloadavg()[0])
        finally:
            process.stop()
    return {"rounds": rounds, "scrapes": scrapes, "warm_up_requests": warm, "load": load, "samples": samples}


def render(result: dict[str, Any]) -> str:
    samples = result["samples"]

    def median(kind: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[kind])

    def spread(kind: str, key: str) -> str:
        values = sorted(s[key] for s in samples[kind])
        return " / ".join(f"{v:.0f}" for v in values)

    rows = []
    for kind, path in PAGES.items():
        rows.append(
            [
                kind,
                f"`{path if kind == 'full' else f'/metrics/?name[]=... ({len(VLLM.every)} names)'}`",
                f"{median(kind, 'bytes'):.0f}",
                spread(kind, "server_us"),
                f"{median(kind, 'epp_us'):.0f}",
                f"{median(kind, 'wall_ms'):.2f}",
            ]
        )
    ratio_server = median("full", "server_us") / median("filtered", "server_us")
    ratio_epp = median("full", "epp_us") / median("filtered", "epp_us")
    per_pod = {kind: median(kind, "server_us") * 20 / 1000 for kind in PAGES}  # 20 scrapes/s at 50 ms
    table = report.markdown_table(
        [
            "page",
            "path",
            "bytes",
            "vLLM API server µs CPU per scrape (rounds, sorted)",
            "EPP µs CPU per scrape (GET + parse), median",
            "wall ms per GET, median",
        ],
        rows,
    )
    loads = ", ".join(f"{v:.2f}" for v in result["load"])
    warm, rounds = result["warm_up_requests"], result["rounds"]
    return f"""Real vLLM 0.32 on CPU (the tiny model), after {warm} completions; {rounds}
interleaved rounds of {result["scrapes"]} back-to-back keep-alive GETs per page. 1-minute load average
during the run: {loads}.

{table}

The filtered page costs vLLM's API server {ratio_server:.1f}x less CPU per scrape and the EPP {ratio_epp:.1f}x
less. At the EPP's 50 ms scrape interval (20 scrapes a second per pod, per EPP replica) that is
{per_pod["full"]:.0f} ms of the API server's CPU per second per pod for the full page against
{per_pod["filtered"]:.0f} ms filtered, on the event loop that also streams the pod's tokens.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=400, help="GETs per page kind and round")
    parser.add_argument("--warm-up", type=int, default=20, help="completions before measuring")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.scrapes, args.warm_up)
    body = render(result)
    print(body)
    if not args.no_write:
        report.write_json("vllm_scrape", result)
        report.write_section(
            "vllm-scrape",
            "Scraping real vLLM: the full /metrics page vs the filtered one (issue 16)",
            body,
            "python -m benchmarks.vllm_scrape",
        )


if __name__ == "__main__":
    main()
