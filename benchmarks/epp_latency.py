"""Added latency and CPU of the EPP in the request path: Envoy + ext_proc + ``python -m epp`` versus
the same Envoy routing straight to the same backend.

Open loop: requests leave at fixed intervals (``rate`` per second) whatever earlier ones are doing,
so a slow gateway cannot hide its queue by slowing the client down; latency runs from the send to
the end of the answer. Every path sees the same stand-in model server (``localrun.standin``,
answering at once), so the difference between paths is the gateway. CPU comes from
``/proc/<pid>/stat`` (user + system) of Envoy, the EPP and the backend over each measured phase.

    python -m benchmarks.epp_latency                       # full run, writes BENCHMARKS.md + JSON
    python -m benchmarks.epp_latency --rates 200 --duration 3 --no-write   # quick look

Target (issue 4): < 1 ms p99 added at 200 rps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from benchmarks import report
from epp.server.stream import BodyMode
from localrun import EnvoyGateway, ManagedProcess, epp_command, free_port, grpc_ok, http_ok
from localrun.stack import LocalEndpoint, write_endpoints_file

SECTION_ID = "epp-latency"
MODEL = "tiny"
BODY = json.dumps({"model": MODEL, "prompt": "Say something short about gateways.", "max_tokens": 4}).encode()
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class PhaseResult:
    path: str  # "direct" | "epp-FULL_DUPLEX_STREAMED" | "epp-BUFFERED"
    rate: float
    duration: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms_per_request: dict[str, float]
    # ext_proc messages (both directions) per request on this path, from Envoy's counters.
    ext_proc_messages_per_request: float = 0.0


def ext_proc_messages(gateway: EnvoyGateway) -> tuple[int, int]:
    """(messages both ways, streams) so far on ``gateway``'s ext_proc filter."""
    stats = gateway.stats("http.gateway.ext_proc.")
    prefix = "http.gateway.ext_proc."
    messages = stats.get(prefix + "stream_msgs_sent", 0) + stats.get(prefix + "stream_msgs_received", 0)
    return messages, stats.get(prefix + "streams_started", 0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def open_loop(
    url: str, rate: float, duration: float, body: bytes = BODY
) -> tuple[list[float], int, int]:
    """Send ``rate * duration`` POSTs of ``body`` at fixed intervals; return (latencies s, ok, errors)."""
    total = int(rate * duration)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(scheduled: float) -> None:
            nonlocal errors
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Timed from the actual send: the event loop wakes up to ~1 ms late (epoll's millisecond
            # timeouts), which is client jitter, not gateway latency. Sends never wait for earlier
            # answers, so a slow gateway still cannot slow the schedule down.
            sent = time.perf_counter()
            try:
                async with session.post(
                    url, data=body, headers={"content-type": "application/json"}
                ) as reply:
                    await reply.read()
                    if reply.status != 200:
                        errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(time.perf_counter() - sent)

        start = time.perf_counter() + 0.05
        await asyncio.gather(*(one(start + i / rate) for i in range(total)))
    return latencies, len(latencies), errors


@dataclass
class _Slices:
    """Measurements of one (path, rate) accumulated over the interleaved rounds."""

    latencies: list[float]
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] | None = None

    def add(
        self, latencies: list[float], ok: int, errors: int, seconds: float, cpu: dict[str, float]
    ) -> None:
        self.latencies += latencies
        self.ok += ok
        self.errors += errors
        self.seconds += seconds
        self.cpu = {k: (self.cpu or {}).get(k, 0.0) + v for k, v in cpu.items()}

    def result(self, path: str, rate: float) -> PhaseResult:
        latencies = sorted(self.latencies)
        sent = self.ok + self.errors
        return PhaseResult(
            path=path,
            rate=rate,
            duration=self.seconds,
            sent=sent,
            ok=self.ok,
            errors=self.errors,
            achieved_rps=self.ok / self.seconds if self.seconds else 0.0,
            p50_ms=percentile(latencies, 0.50) * 1000,
            p90_ms=percentile(latencies, 0.90) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            max_ms=(latencies[-1] if latencies else float("nan")) * 1000,
            cpu_ms_per_request={k: v * 1000 / max(1, sent) for k, v in (self.cpu or {}).items()},
        )


def measure_slice(
    url: str, rate: float, seconds: float, processes: dict[str, ManagedProcess], body: bytes = BODY
) -> tuple[list[float], int, int, float, dict[str, float]]:
    before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
    started = time.perf_counter()
    latencies, ok, errors = asyncio.run(open_loop(url, rate, seconds, body))
    elapsed = time.perf_counter() - started
    after = {name: cpu_seconds(p.pid) for name, p in processes.items()}
    return latencies, ok, errors, elapsed, {name: after[name] - before[name] for name in processes}


def run(
    rates: Sequence[float],
    duration: float,
    modes: Sequence[BodyMode],
    log_dir: Path,
    rounds: int = 5,
    response_headers_only: bool = False,
    plaintext: bool = False,
) -> list[PhaseResult]:
    """Each (rate, path) gets ``duration`` seconds of load, cut into ``rounds`` slices that alternate
    between the paths, so background load on a shared machine hits every path alike."""
    results: list[PhaseResult] = []
    backend_port = free_port()
    backend = ManagedProcess(
        [sys.executable, "-m", "localrun.standin", "--port", str(backend_port), "--model", MODEL],
        ready=http_ok(f"http://127.0.0.1:{backend_port}/health"),
        name="backend",
        log_dir=log_dir,
    )
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    endpoints = write_endpoints_file(log_dir / "endpoints.json", [LocalEndpoint("backend", backend_port)])
    epp = ManagedProcess(
        epp_command(endpoints, grpc_port, health_port, metrics_port, "--log-level", "warning"),
        ready=grpc_ok(health_port),
        name="epp",
        log_dir=log_dir,
    )
    # The same EPP serving cleartext, behind a gateway that dials it so: what TLS costs per request.
    plain_ports = (free_port(), free_port(), free_port())
    plain_epp = ManagedProcess(
        epp_command(endpoints, *plain_ports, "--log-level", "warning", "--secure-serving=false"),
        ready=grpc_ok(plain_ports[1]),
        name="epp-plaintext",
        log_dir=log_dir,
    )
    pool = [f"127.0.0.1:{backend_port}"]
    with backend, epp, contextlib.ExitStack() as extra:
        if plaintext:
            extra.enter_context(plain_epp)
        gateways = {
            "direct": EnvoyGateway(free_port(), grpc_port, pool, ext_proc=False, log_dir=log_dir / "direct")
        }
        for mode in modes:
            gateways[f"epp-{mode.value}"] = EnvoyGateway(
                free_port(), grpc_port, pool, mode=mode, log_dir=log_dir / mode.value
            )
        if response_headers_only:
            gateways["epp-FULL_DUPLEX_STREAMED-no-resp-body"] = EnvoyGateway(
                free_port(), grpc_port, pool, response_body=False, log_dir=log_dir / "no-resp-body"
            )
        if plaintext:
            gateways["epp-FULL_DUPLEX_STREAMED-plaintext"] = EnvoyGateway(
                free_port(), plain_ports[0], pool, ext_proc_tls=False, log_dir=log_dir / "plaintext"
            )
        for gateway in gateways.values():
            gateway.start()
        try:
            for gateway in gateways.values():  # warm connections and first-request code paths
                asyncio.run(open_loop(gateway.url + "/v1/completions", 50, 1.0))
            for rate in rates:
                slices = {path: _Slices([]) for path in gateways}
                counters_before = {path: ext_proc_messages(g) for path, g in gateways.items()}
                for _ in range(rounds):
                    for path, gateway in gateways.items():
                        processes = {"envoy": gateway.process, "backend": backend}
                        if path.endswith("-plaintext"):
                            processes["epp"] = plain_epp
                        elif path != "direct":
                            processes["epp"] = epp
                        url = gateway.url + "/v1/completions"
                        slices[path].add(*measure_slice(url, rate, duration / rounds, processes))
                for path, accumulated in slices.items():
                    result = accumulated.result(path, rate)
                    messages, streams = ext_proc_messages(gateways[path])
                    new_streams = streams - counters_before[path][1]
                    if new_streams:
                        result.ext_proc_messages_per_request = (
                            messages - counters_before[path][0]
                        ) / new_streams
                    print(_line(result), file=sys.stderr, flush=True)
                    results.append(result)
        finally:
            for gateway in gateways.values():
                gateway.stop()
    return results


def _line(r: PhaseResult) -> str:
    cpu = ", ".join(f"{k} {v:.3f}" for k, v in r.cpu_ms_per_request.items())
    return (
        f"{r.path:28s} {r.rate:5.0f} rps: ok {r.ok} err {r.errors}  p50 {r.p50_ms:.2f}  p90 {r.p90_ms:.2f}"
        f"  p99 {r.p99_ms:.2f} ms  CPU ms/req: {cpu}"
    )


def summary_rows(results: Sequence[PhaseResult]) -> list[list[object]]:
    direct = {r.rate: r for r in results if r.path == "direct"}
    rows: list[list[object]] = []
    for r in results:
        base = direct.get(r.rate) if r.path != "direct" else None
        cpu = r.cpu_ms_per_request
        rows.append(
            [
                r.path,
                f"{r.rate:g}",
                f"{r.achieved_rps:.1f}",
                f"{r.ok}/{r.errors}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.p50_ms - base.p50_ms:.2f}" if base else "-",
                f"{r.p99_ms - base.p99_ms:.2f}" if base else "-",
                f"{cpu.get('envoy', 0.0):.3f}",
                f"{cpu['epp']:.3f}" if "epp" in cpu else "-",
                f"{cpu.get('backend', 0.0):.3f}",
                f"{r.ext_proc_messages_per_request:.1f}" if base else "-",
            ]
        )
    return rows


def render_markdown(results: Sequence[PhaseResult], duration: float) -> str:
    table = report.markdown_table(
        [
            "path",
            "rate rps",
            "achieved rps",
            "ok/err",
            "p50 ms",
            "p99 ms",
            "added p50 ms",
            "added p99 ms",
            "Envoy CPU ms/req",
            "EPP CPU ms/req",
            "backend CPU ms/req",
            "ext_proc msgs/req",
        ],
        summary_rows(results),
    )
    target = [r for r in results if r.path == "epp-FULL_DUPLEX_STREAMED" and r.rate == 200]
    direct = [r for r in results if r.path == "direct" and r.rate == 200]
    verdict = ""
    if target and direct:
        added = target[0].p99_ms - direct[0].p99_ms
        verdict = (
            f"\n\n**Target (< 1 ms p99 added at 200 rps, FULL_DUPLEX_STREAMED): "
            f"{'met' if added < 1.0 else 'missed'}** — added p99 {added:.2f} ms."
        )
        epp_cpu = target[0].cpu_ms_per_request.get("epp", 0.0)
        messages = target[0].ext_proc_messages_per_request
        if messages:
            verdict += (
                f" Where it goes: the EPP spends {epp_cpu:.2f} ms of CPU per request over {messages:.0f} "
                f"ext_proc messages ({epp_cpu * 1000 / messages:.0f} µs each, almost all of it grpc.aio "
                "reading and writing: driven in-process without gRPC, the protocol layer costs about "
                "0.1-0.2 ms per request and a scheduling decision tens of µs). One event loop handles "
                "those messages in turn, so that CPU time is a floor under the added latency, and on "
                "2 shared cores queueing behind the client, "
                "Envoy and the backend widens the tail."
            )
    return (
        f"Open-loop POST /v1/completions ({len(BODY)}-byte body, non-streamed answer), "
        f"{duration:g} s per row in slices alternating between the paths, "
        "latency from send to the end of the answer. "
        "`direct` is the same Envoy (one worker) without ext_proc; "
        "`epp-*` adds the ext_proc filter and `python -m epp` (default scheduler config, one endpoint); "
        "`-no-resp-body` sends the EPP response headers only (no usage tracking, fewer ext_proc messages). "
        '"Added" is the difference of the percentiles, not a percentile of differences. Client, Envoy, '
        "EPP and backend share the 2 cores."
        f"\n\n{table}{verdict}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.epp_latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 100.0, 200.0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per path and rate")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved slices the duration is cut into")
    parser.add_argument(
        "--modes", nargs="+", choices=[m.value for m in BodyMode], default=[m.value for m in BodyMode]
    )
    parser.add_argument(
        "--no-response-body-row",
        action="store_true",
        help="skip the extra row where the EPP sees response headers but not response bodies",
    )
    parser.add_argument(
        "--no-plaintext-row",
        action="store_true",
        help="skip the row where the gateway dials a cleartext EPP (the others dial TLS, as gateways do)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds <= 0 or any(rate <= 0 for rate in args.rates):
        parser.error("--duration, --rounds and --rates must be positive")
    with tempfile.TemporaryDirectory(prefix="epp-latency-") as log_dir:
        results = run(
            args.rates,
            args.duration,
            [BodyMode(m) for m in args.modes],
            Path(log_dir),
            args.rounds,
            response_headers_only=not args.no_response_body_row,
            plaintext=not args.no_plaintext_row,
        )
    if not args.no_write:
        command = "python -m benchmarks.epp_latency " + shlex.join(argv if argv is not None else sys.argv[1:])
        report.write_section(
            SECTION_ID,
            "EPP added latency and CPU (Envoy + ext_proc vs Envoy direct)",
            render_markdown(results, args.duration),
            command.strip(),
        )
        report.write_json("epp_latency", {"duration": args.duration, "results": [asdict(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
