"""A whole local gateway for end-to-end tests: stand-in pods + ``python -m epp`` + real Envoy.

Everything listens on 127.0.0.1 free ports and is stopped by process group when the stack closes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp.server.stream import BodyMode
from localrun import EnvoyGateway, ManagedProcess, Upstream, epp_command, free_port, grpc_ok, http_ok
from localrun.profiles import GatewayProfile, profile_options
from localrun.stack import LocalEndpoint, write_endpoints_file

MODEL = "tiny"
# Generous: on a busy 2-core machine a Python process can take many seconds to import and bind.
START_TIMEOUT_SECONDS = 90.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    base_url: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One HTTP/1.1 request on a fresh connection (GET when there is no body)."""
    host, port = base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        all_headers = {"content-type": "application/json", **(headers or {})}
        connection.request("POST" if payload is not None else "GET", path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


@dataclass
class Pod:
    name: str
    port: int
    process: ManagedProcess

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.hostport}"

    def set_metrics(self, **values: float) -> None:
        request = urllib.request.Request(
            self.url + "/control/metrics", json.dumps(values).encode(), {"content-type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=2).read()

    def received(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/control/requests", timeout=2) as reply:
            return list(json.load(reply)["requests"])

    def scrapes(self) -> int:
        """How many times something (the EPP) fetched this pod's /metrics."""
        with urllib.request.urlopen(self.url + "/control/requests", timeout=2) as reply:
            return int(json.load(reply)["scrapes"])

    def clear(self) -> None:
        request = urllib.request.Request(self.url + "/control/requests", method="DELETE")
        urllib.request.urlopen(request, timeout=2).read()


@dataclass
class Stack:
    pods: list[Pod]
    gateway: EnvoyGateway | None
    epp: ManagedProcess | None
    metrics_port: int
    grpc_port: int
    _closers: list[Callable[[], object]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def post(self, body: bytes | dict[str, Any], path: str = "/v1/completions", **headers: str) -> Reply:
        return call(self.url, path, body, {k.replace("_", "-"): v for k, v in headers.items()})

    def pod_of(self, reply: Reply) -> str:
        """Which pod answered (the stand-in names itself in every answer)."""
        assert reply.status == 200, (reply.status, reply.body[:300])
        if reply.headers.get("content-type", "").startswith("text/event-stream"):
            first = reply.body.split(b"\n\n", 1)[0].removeprefix(b"data: ")
            return str(json.loads(first)["served_by"])
        return str(reply.json()["served_by"])

    def epp_metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Sum of the EPP's samples called ``name`` whose labels include ``labels``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line[len(name) : len(name) + 1] not in {"{", " "}:
                continue
            sample, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in sample for k, v in (labels or {}).items()):
                total += float(value)
        return total

    def close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer()


def start_pod(name: str, log_dir: Path, delay_ms: float = 0.0) -> Pod:
    port = free_port()
    process = ManagedProcess(
        [
            sys.executable,
            "-m",
            "localrun.standin",
            "--port",
            str(port),
            "--name",
            name,
            "--model",
            MODEL,
            "--delay-ms",
            f"{delay_ms:g}",
        ],
        ready=http_ok(f"http://127.0.0.1:{port}/health"),
        name=name,
        log_dir=log_dir,
        ready_timeout=START_TIMEOUT_SECONDS,
    ).start()
    return Pod(name, port, process)


@contextlib.contextmanager
def gateway_stack(
    log_dir: Path,
    pods: int = 2,
    *,
    epp_args: tuple[str, ...] = (),
    with_epp: bool = True,
    mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED,
    fail_open: bool = False,
    upstream: Upstream = Upstream.ORIGINAL_DST,
    before_epp: Callable[[list[Pod]], None] | None = None,
    pod_delay_ms: float = 0.0,
    profile: GatewayProfile | None = None,
    **gateway_options: Any,
) -> Iterator[Stack]:
    """``profile`` configures Envoy as that provider's generated config does (localrun/profiles.py);
    explicit ``gateway_options`` still win."""
    if profile is not None:
        options = profile_options(profile)
        mode = options.pop("mode", mode)
        upstream = options.pop("upstream", upstream)
        gateway_options = {**options, **gateway_options}
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    stack = Stack(pods=[], gateway=None, epp=None, metrics_port=metrics_port, grpc_port=grpc_port)
    try:
        for index in range(pods):
            pod = start_pod(f"pod-{index}", log_dir, pod_delay_ms)
            stack.pods.append(pod)
            stack._closers.append(pod.process.stop)
        if before_epp is not None:
            before_epp(stack.pods)
        if with_epp:
            endpoints = write_endpoints_file(
                log_dir / "endpoints.json", [LocalEndpoint(p.name, p.port) for p in stack.pods]
            )
            stack.epp = ManagedProcess(
                # The tests set the fake pods' metrics from outside the EPP, which a quiet pod's
                # scrapes would see only every --refresh-metrics-idle-interval: scrape every tick
                # (a test's own epp_args come later and win).
                epp_command(
                    endpoints,
                    grpc_port,
                    health_port,
                    metrics_port,
                    "--refresh-metrics-idle-interval",
                    "0",
                    *epp_args,
                ),
                ready=grpc_ok(health_port),
                name="epp",
                log_dir=log_dir,
                ready_timeout=START_TIMEOUT_SECONDS,
            ).start()
            stack._closers.append(stack.epp.stop)
        stack.gateway = EnvoyGateway(
            free_port(),
            grpc_port,
            [p.hostport for p in stack.pods],
            mode=mode,
            fail_open=fail_open,
            upstream=upstream,
            log_dir=log_dir,
            **gateway_options,
        ).start()
        stack._closers.append(stack.gateway.stop)
        yield stack
    finally:
        stack.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()
