"""The simulated model servers every router is measured against: N ``python -m simulator`` processes.

``restart`` stops and starts every pod on the same ports, so each router configuration begins with
cold prefix caches, empty queues and fresh counters, and the routers' worker lists stay valid.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from localrun import ManagedProcess, ProcessFailed, free_port, http_ok
from localrun import free_port_block as free_ports_on


@dataclass(frozen=True, slots=True)
class SimTiming:
    """The simulator's timing and capacity for a benchmark (flags of ``python -m simulator``).

    The benchmark default is slower than the simulator's own defaults (measured on vLLM CPU with a
    2-layer model) on purpose: a prefill of a few hundred milliseconds is what a GPU serving a real
    model looks like, and it keeps the model time well above this 2-core machine's own HTTP and
    proxy overheads. The KV cache holds about 40 of the workload's longest prompts, the ratio of an
    8B model's KV on one 80 GB GPU to GIE's 7,200-token benchmark prompts; a much smaller cache
    makes every running prefill a large share of ``vllm:kv_cache_usage_perc``, which exaggerates
    what the KV-utilisation scorer does.
    """

    request_overhead_s: float = 0.006
    tokenize_per_token_s: float = 0.000002
    step_overhead_s: float = 0.005
    prefill_per_token_s: float = 0.0002
    decode_per_seq_s: float = 0.001
    kv_cache_tokens: int = 65536
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    max_model_len: int = 4096

    def flags(self) -> list[str]:
        return [
            "--request-overhead",
            f"{self.request_overhead_s:g}",
            "--tokenize-per-token",
            f"{self.tokenize_per_token_s:g}",
            "--step-overhead",
            f"{self.step_overhead_s:g}",
            "--prefill-per-token",
            f"{self.prefill_per_token_s:g}",
            "--decode-per-seq",
            f"{self.decode_per_seq_s:g}",
            "--kv-cache-tokens",
            str(self.kv_cache_tokens),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-num-batched-tokens",
            str(self.max_num_batched_tokens),
            "--block-size",
            str(self.block_size),
            "--max-model-len",
            str(self.max_model_len),
        ]

    def describe(self) -> str:
        return (
            f"request overhead {self.request_overhead_s * 1000:g} ms, step overhead "
            f"{self.step_overhead_s * 1000:g} ms, prefill {self.prefill_per_token_s * 1e6:g} us/token "
            f"(chunks of {self.max_num_batched_tokens} tokens), decode {self.decode_per_seq_s * 1000:g} "
            f"ms/sequence/step, KV cache {self.kv_cache_tokens} tokens in blocks of {self.block_size}, "
            f"batch limit {self.max_num_seqs}"
        )


@dataclass(frozen=True, slots=True)
class KvEventPorts:
    """Where the pods publish KV events, as the EPP's precise producer finds them: all pods share
    127.0.0.1, so, as llm-d does for a data-parallel pod's ranks, the pod whose serving port is the
    r-th lowest publishes on ``socket_port + r`` and replays on ``replay_port + r``."""

    socket_port: int
    replay_port: int
    hash_algorithm: str = "sha256_cbor"  # what the stacks configure (llm-d's recommendation)
    hash_seed: str = "0"  # the pods' PYTHONHASHSEED


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive ports free on every interface (the pods' event sockets
    bind 0.0.0.0), below the kernel's ephemeral range: :func:`localrun.free_port_block`."""
    return free_ports_on(count, ("0.0.0.0",))


class SimPool:
    """``size`` simulated vLLM pods named ``pod-0``.. on free loopback ports; with ``kv_events``
    each publishes its KV-cache events (vLLM's ``--kv-events-config``)."""

    def __init__(
        self,
        size: int,
        model: str,
        timing: SimTiming,
        log_dir: Path,
        ready_timeout_s: float = 30.0,
        *,
        kv_events: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self.model = model
        self.timing = timing
        self.names = [f"pod-{i}" for i in range(size)]
        self.ports = [free_port() for _ in range(size)]
        self.kv_events = KvEventPorts(free_port_block(size), free_port_block(size)) if kv_events else None
        self._log_dir = log_dir
        self._ready_timeout_s = ready_timeout_s
        self._processes: list[ManagedProcess] = []

    def _events_flags(self, port: int) -> tuple[list[str], dict[str, str]]:
        if self.kv_events is None:
            return [], {}
        rank = sorted(self.ports).index(port)
        config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{self.kv_events.socket_port + rank}",
            "replay_endpoint": f"tcp://*:{self.kv_events.replay_port + rank}",
            "topic": f"kv@127.0.0.1:{port}@{self.model}",
        }
        flags = [
            "--kv-events-config",
            json.dumps(config),
            "--prefix-caching-hash-algo",
            self.kv_events.hash_algorithm,
        ]
        return flags, {"PYTHONHASHSEED": self.kv_events.hash_seed}

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def urls(self) -> list[str]:
        return [f"http://{endpoint}" for endpoint in self.endpoints]

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {name: f"{url}/metrics" for name, url in zip(self.names, self.urls, strict=True)}

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def start(self) -> SimPool:
        # Start every process first, then wait: the pods import and bind in parallel.
        for name, port in zip(self.names, self.ports, strict=True):
            events_flags, env = self._events_flags(port)
            command = [
                sys.executable,
                "-m",
                "simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model",
                self.model,
                "--log-level",
                "WARNING",
                *self.timing.flags(),
                *events_flags,
            ]
            # A generous stop timeout: on a saturated 2-core machine even SIGKILL's reaping can lag.
            process = ManagedProcess(command, name=name, env=env, log_dir=self._log_dir, stop_timeout=20.0)
            self._processes.append(process.start())
        checks = [http_ok(f"{url}/health") for url in self.urls]
        deadline = time.monotonic() + self._ready_timeout_s
        pending = set(range(len(checks)))
        while pending:
            for index in sorted(pending):
                process = self._processes[index]
                if not process.running():
                    self.stop()
                    raise ProcessFailed(f"{process.name} exited before ready\n{process.log_tail()}")
                if checks[index]():
                    pending.discard(index)
            if pending and time.monotonic() > deadline:
                names = ", ".join(self.names[i] for i in sorted(pending))
                self.stop()
                raise ProcessFailed(f"simulated pods not ready within {self._ready_timeout_s:g}s: {names}")
            if pending:
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Kill every pod at once: nothing in a simulated pod needs a graceful exit, and a restart
        between runs should not cost a shutdown per pod."""
        with ThreadPoolExecutor(max_workers=max(1, len(self._processes))) as executor:
            list(executor.map(ManagedProcess.kill, self._processes))
        self._processes = []

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> SimPool:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
