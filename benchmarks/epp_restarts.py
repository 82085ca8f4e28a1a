"""Requests lost while EPP replicas restart: a rolling restart and a SIGKILL, at a steady rate.

A real Envoy (localrun) with several EPP replicas behind it, each health-checked on its readiness
the way a Kubernetes gateway follows pod readiness; two model-server stand-ins that answer a
streaming completion after ``--delay-ms`` (so requests are in flight through the EPP when it goes).
An open-loop client sends ``--rate`` requests per second throughout; a request is lost when the
client gets anything but a complete 200 stream (an error status, a reset, a cut stream).

Scenarios (each on a fresh stack):

* ``rollout``: every replica in turn gets SIGTERM (readiness off, serving through ``--drain-notice``,
  then waiting for its open streams), exits, and is started again; the next one follows once the
  gateway sees it healthy. What a RollingUpdate does to a Deployment.
* ``kill``: one replica gets SIGKILL in the middle of the run and is started again at once (the
  issue's reproducer: 68 of ~70 requests lost with one replica).

Each runs with the EPP holding the ext_proc stream for the whole response (the default) and with
``--release-stream-after-routing``. ``--replicas 1`` shows the single-replica baseline.

    python -m benchmarks.epp_restarts                    # all scenarios, 2 replicas, 30 req/s
    python -m benchmarks.epp_restarts --scenario kill --replicas 1 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from localrun import EnvoyGateway, EppEndpoint, ManagedProcess, epp_command, free_port, grpc_ok, http_ok
from localrun.stack import LocalEndpoint, write_endpoints_file

MODEL = "tiny"
BODY = json.dumps({"model": MODEL, "prompt": "Tell me about restarts.", "stream": True}).encode()


@dataclass
class Outcome:
    started: float
    status: str  # "200", another status, or the exception class of a failed request


@dataclass
class ScenarioResult:
    scenario: str
    release_after_routing: bool
    replicas: int
    rate: float
    duration: float
    sent: int
    lost: int
    by_status: dict[str, int]
    events: list[str] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)


class Stack:
    """Pods, EPP replicas and the gateway, with restartable replicas (fixed ports per replica)."""

    def __init__(
        self, log_dir: Path, replicas: int, release: bool, delay_ms: float, drain_notice: float
    ) -> None:
        self.log_dir = log_dir
        self.release = release
        self.drain_notice = drain_notice
        self.pods = [self._pod(i, delay_ms) for i in range(2)]
        endpoints = write_endpoints_file(
            log_dir / "endpoints.json",
            [LocalEndpoint(f"pod-{i}", port) for i, (_, port) in enumerate(self.pods)],
        )
        self.endpoints_file = endpoints
        self.slots = [(free_port(), free_port(), free_port()) for _ in range(replicas)]
        self.epps: list[ManagedProcess | None] = [self.start_epp(i) for i in range(replicas)]
        self.gateway = EnvoyGateway(
            free_port(),
            self.slots[0][0],
            [f"127.0.0.1:{port}" for _, port in self.pods],
            epps=tuple(EppEndpoint(grpc, health) for grpc, health, _ in self.slots),
            log_dir=log_dir / "envoy",
        ).start()

    def _pod(self, index: int, delay_ms: float) -> tuple[ManagedProcess, int]:
        port = free_port()
        process = ManagedProcess(
            [
                sys.executable,
                "-m",
                "localrun.standin",
                "--port",
                str(port),
                "--name",
                f"pod-{index}",
                "--model",
                MODEL,
                "--delay-ms",
                f"{delay_ms:g}",
            ],
            ready=http_ok(f"http://127.0.0.1:{port}/health"),
            name=f"pod-{index}",
            log_dir=self.log_dir,
            ready_timeout=90,
        ).start()
        return process, port

    def start_epp(self, index: int) -> ManagedProcess:
        grpc, health, metrics = self.slots[index]
        extra = ("--release-stream-after-routing",) if self.release else ()
        return ManagedProcess(
            epp_command(
                self.endpoints_file,
                grpc,
                health,
                metrics,
                *extra,
                drain_timeout=30.0,
                drain_notice=self.drain_notice,
            ),
            ready=grpc_ok(health),
            name=f"epp-{index}",
            log_dir=self.log_dir,
            ready_timeout=90,
            stop_timeout=40,
        ).start()

    def healthy_in_gateway(self, index: int) -> bool:
        grpc, _, _ = self.slots[index]
        with_url = f"{self.gateway.admin_url}/clusters?format=json"
        import urllib.request

        with urllib.request.urlopen(with_url, timeout=2) as reply:
            clusters = json.load(reply)["cluster_statuses"]
        [epp] = [c for c in clusters if c["name"] == "epp"]
        for host in epp.get("host_statuses", []):
            if host["address"]["socket_address"]["port_value"] == grpc:
                flags = host.get("health_status", {})
                return not any(v for k, v in flags.items() if k != "eds_health_status")
        return False

    def close(self) -> None:
        self.gateway.stop()
        for epp in self.epps:
            if epp is not None:
                epp.stop()
        for process, _ in self.pods:
            process.stop()


async def _one(session: aiohttp.ClientSession, url: str, outcomes: list[Outcome]) -> None:
    started = time.monotonic()
    try:
        async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as reply:
            body = await reply.read()
            complete = reply.status != 200 or body.endswith(b"data: [DONE]\n\n")
            status = str(reply.status) if complete else "cut-stream"
    except (TimeoutError, aiohttp.ClientError) as exc:
        status = type(exc).__name__
    outcomes.append(Outcome(started, status))


async def load(url: str, rate: float, duration: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        start = time.monotonic()
        for n in range(int(rate * duration)):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, outcomes)))
        await asyncio.gather(*tasks)
    return outcomes


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def rollout(stack: Stack, events: list[str]) -> None:
    for index, epp in enumerate(stack.epps):
        assert epp is not None
        t = time.monotonic()
        epp.stop(signal.SIGTERM)  # readiness off, notice, open streams, exit
        events.append(f"epp-{index} drained and exited in {time.monotonic() - t:.1f}s")
        stack.epps[index] = stack.start_epp(index)
        healthy = _wait(functools.partial(stack.healthy_in_gateway, index), 20)
        events.append(f"epp-{index} restarted, healthy in the gateway: {healthy}")


def kill(stack: Stack, events: list[str]) -> None:
    epp = stack.epps[0]
    assert epp is not None
    t = time.monotonic()
    epp.kill()
    stack.epps[0] = stack.start_epp(0)
    events.append(f"epp-0 killed and ready again after {time.monotonic() - t:.1f}s")


SCENARIOS: dict[str, Callable[[Stack, list[str]], None]] = {"rollout": rollout, "kill": kill}


def run_scenario(name: str, release: bool, args: argparse.Namespace, log_dir: Path) -> ScenarioResult:
    stack = Stack(log_dir, args.replicas, release, args.delay_ms, args.drain_notice)
    events: list[str] = []
    try:
        time.sleep(1.0)  # let the gateway's first health checks settle
        action = threading.Timer(args.duration * 0.3, SCENARIOS[name], (stack, events))
        action.start()
        outcomes = asyncio.run(load(stack.gateway.url + "/v1/completions", args.rate, args.duration))
        action.join()
    finally:
        stack.close()
    statuses = Counter(o.status for o in outcomes)
    return ScenarioResult(
        scenario=name,
        release_after_routing=release,
        replicas=args.replicas,
        rate=args.rate,
        duration=args.duration,
        sent=len(outcomes),
        lost=len(outcomes) - statuses.get("200", 0),
        by_status=dict(statuses),
        events=events,
        load_average=os.getloadavg(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.epp_restarts", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--mode", choices=["hold", "release", "both"], default="both")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per scenario")
    parser.add_argument("--delay-ms", type=float, default=500.0, help="model-server time per request")
    parser.add_argument("--drain-notice", type=float, default=2.0, help="EPP --drain-notice (s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    modes = {"hold": [False], "release": [True], "both": [False, True]}[args.mode]
    results = []
    with tempfile.TemporaryDirectory(prefix="epp-restarts-") as tmp:
        for name in scenarios:
            for release in modes:
                log_dir = Path(tmp) / f"{name}-{'release' if release else 'hold'}"
                log_dir.mkdir()
                result = run_scenario(name, release, args, log_dir)
                results.append(result)
                mode = "release" if release else "hold"
                print(
                    f"{name:8s} {mode:8s} replicas={result.replicas} sent={result.sent} lost={result.lost} "
                    f"{result.by_status} load={result.load_average[0]:.1f}",
                    flush=True,
                )
                for event in result.events:
                    print(f"    {event}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
