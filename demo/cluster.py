"""The demo's local llm-d stack on 127.0.0.1: Envoy -> EPP (ext_proc) -> a simulated P/D pool.

Pod layout as llm-d deploys it: prefill pods serve vLLM directly; each decode pod runs the P/D
sidecar on the pool's target port in front of its own vLLM (here ``python -m simulator``), and the EPP
scrapes the decode vLLM's metrics port. Every process is started in its own session and stopped by
process group, in reverse order of start, whatever way the demo ends.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from epp.config.samples import pd_config
from localrun import EnvoyGateway, ManagedProcess, ProcessFailed, epp_command, free_port, grpc_ok, http_ok
from localrun.stack import LocalEndpoint, write_endpoints_file
from sidecar.launch import sidecar_command

MODEL = "demo-llama"
ROLE_LABEL = "llm-d.ai/role"

# llm-d's P/D profile (deploy/config/pd-epp-config.yaml) with a larger decider threshold: a request
# is prefilled remotely only when its decode pod lacks at least 256 of its prompt tokens, so short
# prompts and conversations already cached on their decode pod stay local.
PD_NON_CACHED_TOKENS = 256
PD_CONFIG = pd_config(PD_NON_CACHED_TOKENS, http_metrics_source=True)

# Slower than the simulator's CPU-measured defaults so that cached and uncached prefills differ by
# hundreds of milliseconds, as they do on a GPU serving a real model: 0.2 ms per prompt token.
SIM_TIMING_FLAGS = ("--prefill-per-token", "0.0002", "--decode-per-seq", "0.001", "--step-overhead", "0.005")


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    role: str  # "prefill" | "decode"
    model_server_port: int  # the simulated vLLM (metrics are scraped here)
    serving_port: int  # where the gateway sends traffic: the sidecar for decode pods

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.model_server_port}/metrics"

    @property
    def endpoint(self) -> LocalEndpoint:
        return LocalEndpoint(
            name=self.name,
            port=self.serving_port,
            metrics_port=self.model_server_port,
            labels={ROLE_LABEL: self.role, "llm-d.ai/inference-serving": "true", "llm-d.ai/model": MODEL},
        )


@dataclass
class DemoCluster:
    """Starts and stops the whole stack; use as a context manager."""

    log_dir: Path
    prefill_pods: int = 2
    decode_pods: int = 2
    ready_timeout_s: float = 30.0
    pods: list[Pod] = field(default_factory=list)
    gateway: EnvoyGateway | None = None
    _processes: list[ManagedProcess | EnvoyGateway] = field(default_factory=list)

    @property
    def url(self) -> str:
        if self.gateway is None:
            raise RuntimeError("the demo cluster is not running")
        return self.gateway.url

    def start(self) -> DemoCluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_pods()
            self._start_epp_and_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_pods(self) -> None:
        sims: list[tuple[ManagedProcess, str]] = []
        for role, count in (("prefill", self.prefill_pods), ("decode", self.decode_pods)):
            for index in range(count):
                vllm_port = free_port()
                serving_port = free_port() if role == "decode" else vllm_port
                pod = Pod(f"{role}-{index}", role, vllm_port, serving_port)
                self.pods.append(pod)
                command = [
                    sys.executable,
                    "-m",
                    "simulator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(vllm_port),
                    "--model",
                    MODEL,
                    "--role",
                    role,
                    "--log-level",
                    "WARNING",
                    *SIM_TIMING_FLAGS,
                ]
                sims.append((self._launch(command, pod.name), f"http://127.0.0.1:{vllm_port}/health"))
        # The simulators start in parallel; wait for all of them, then put sidecars in front of decoders.
        self._wait_all(sims)
        sidecars = []
        for pod in self.pods:
            if pod.role != "decode":
                continue
            command = sidecar_command(pod.serving_port, pod.model_server_port, "--log-level", "WARNING")
            sidecars.append(
                (self._launch(command, f"{pod.name}-sidecar"), f"http://127.0.0.1:{pod.serving_port}/health")
            )
        self._wait_all(sidecars)

    def _start_epp_and_gateway(self) -> None:
        endpoints_file = write_endpoints_file(
            self.log_dir / "endpoints.json", [p.endpoint for p in self.pods]
        )
        grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
        command = epp_command(
            endpoints_file,
            grpc_port,
            health_port,
            metrics_port,
            "--config-text",
            PD_CONFIG,
            "--served-models",
            MODEL,
            "--log-level",
            "warning",
        )
        epp = ManagedProcess(
            command,
            ready=grpc_ok(health_port),
            name="epp",
            log_dir=self.log_dir,
            ready_timeout=self.ready_timeout_s,
        )
        self._processes.append(epp)
        epp.start()
        serving = [f"127.0.0.1:{p.serving_port}" for p in self.pods]
        self.gateway = EnvoyGateway(free_port(), grpc_port, serving, log_dir=self.log_dir / "envoy")
        self._processes.append(self.gateway)
        self.gateway.start()

    def _launch(self, command: list[str], name: str) -> ManagedProcess:
        process = ManagedProcess(command, name=name, log_dir=self.log_dir)
        self._processes.append(process)
        return process.start()

    def _wait_all(self, started: list[tuple[ManagedProcess, str]]) -> None:
        checks = [(process, http_ok(url)) for process, url in started]
        deadline = time.monotonic() + self.ready_timeout_s
        while checks:
            for process, check in list(checks):
                if not process.running():
                    raise ProcessFailed(f"{process.name} exited before it was ready\n{process.log_tail()}")
                if check():
                    checks.remove((process, check))
            if checks and time.monotonic() > deadline:
                raise ProcessFailed(
                    f"not ready within {self.ready_timeout_s:g}s: "
                    + ", ".join(process.name for process, _ in checks)
                )
            if checks:
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop everything that was started, newest first. Safe to call more than once."""
        while self._processes:
            self._processes.pop().stop()
        self.gateway = None

    def __enter__(self) -> DemoCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
