"""Start local processes on loopback ports, wait until they are ready, stop them by process group.

Used by the end-to-end tests, the demo and the benchmarks::

    port = free_port()
    with ManagedProcess([sys.executable, "-m", "simulator", "--port", str(port), ...],
                        ready=http_ok(f"http://127.0.0.1:{port}/health"), name="sim") as sim:
        ...  # sim.pid, sim.log_path

Every process runs in its own session (``start_new_session``), so stopping it also stops whatever
it spawned, and a shell ending does not take it down with SIGHUP/SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ReadyCheck = Callable[[], bool]


class ProcessFailed(RuntimeError):
    """A managed process exited early or never became ready; the message ends with its log tail."""


# Ports are picked below the kernel's ephemeral range. A port the kernel picks for bind(0) comes from
# that range, and so does the source port of every outgoing connection: between free_port returning
# a port and the child process binding it, a load generator's or Envoy's new connection could take
# it ("address already in use", seen in a benchmark run on 2026-11-28). Below the range only other
# pickers compete, and this process never hands out the same port twice.
_LOWEST_PORT = 10_000
# How long stop() waits for the kernel to reap a process group after SIGKILL.
REAP_TIMEOUT_S = 60.0
_picked: set[int] = set()
_picked_lock = threading.Lock()
# Its own generator, seeded from the OS: tests that seed the global one must not make every process
# walk the same sequence of ports.
_rng = random.Random(int.from_bytes(os.urandom(8), "big") ^ os.getpid())


def ephemeral_low(default: int = 32_768) -> int:
    """The first port of the kernel's ephemeral range (``net.ipv4.ip_local_port_range``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port_block(count: int = 1, hosts: Sequence[str] = ("127.0.0.1",), attempts: int = 500) -> int:
    """The first of ``count`` consecutive TCP ports that bind on every one of ``hosts`` right now,
    below the kernel's ephemeral range and never handed out before by this process."""
    top = max(_LOWEST_PORT + 1_000, ephemeral_low()) - count
    for _ in range(attempts if top > _LOWEST_PORT else 0):
        base = _rng.randrange(_LOWEST_PORT, top)
        block = range(base, base + count)
        with _picked_lock:
            if any(port in _picked for port in block):
                continue
            try:
                for port in block:
                    for host in hosts:
                        family = socket.AF_INET6 if ":" in host else socket.AF_INET
                        with socket.socket(family, socket.SOCK_STREAM) as probe:
                            probe.bind((host, port))
            except OSError:
                continue
            _picked.update(block)
        return base
    raise OSError(f"no block of {count} free ports below {top + count} on {', '.join(hosts)}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, outside the kernel's ephemeral range (see above)."""
    return free_port_block(1, (host,))


def http_ok(url: str, timeout: float = 0.5) -> ReadyCheck:
    """Ready when GET ``url`` answers 2xx."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return 200 <= int(response.status) < 300
        except (OSError, urllib.error.URLError, ValueError):
            return False

    return check


def grpc_ok(
    port: int, service: str = "readiness", host: str = "127.0.0.1", timeout: float = 0.5
) -> ReadyCheck:
    """Ready when the gRPC health service on ``port`` reports ``service`` as SERVING."""

    def check() -> bool:
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def tcp_ok(port: int, host: str = "127.0.0.1") -> ReadyCheck:
    """Ready when something accepts TCP connections on ``port``."""

    def check() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        return False

    return check


class ManagedProcess:
    """One child process with a log file, a readiness check and a guaranteed stop."""

    def __init__(
        self,
        cmd: Sequence[str],
        ready: ReadyCheck | None = None,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        log_dir: Path | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.name = name or Path(self.cmd[0]).name
        self._ready = ready
        self._env = {**os.environ, **(env or {})}
        self._cwd = cwd
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._log_dir = log_dir
        self._popen: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise ProcessFailed(f"{self.name} is not running")
        return self._popen.pid

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> ManagedProcess:
        if self._popen is not None and self._popen.poll() is None:
            # A second start would orphan the running process (stop() only knows the newest), e.g.
            # ``with proc.start():`` starting it twice.
            raise RuntimeError(f"{self.name} is already running (pid {self._popen.pid})")
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="localrun-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        with open(self.log_path, "wb") as log_file:
            self._popen = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        if self._ready is not None:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if not self.running():
                self.stop()
                raise ProcessFailed(
                    f"{self.name} exited with {self.returncode()} before ready\n{self.log_tail()}"
                )
            if self._ready is not None and self._ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ProcessFailed(f"{self.name} not ready within {self._ready_timeout:g}s\n{self.log_tail()}")

    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Signal the whole process group, wait, then SIGKILL what is left. Idempotent."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal_group(sig)
            try:
                self._popen.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                # SIGKILL cannot be refused: what is left is the kernel tearing the process down,
                # which a starved machine can stretch past the graceful timeout (CI 2026-11-28: a
                # simulator beside two spinning vLLMs was not reaped 5 s after SIGKILL, and the
                # test failed on the TimeoutExpired). Wait for it as long as it takes, within reason.
                self._popen.wait(max(self._stop_timeout, REAP_TIMEOUT_S))
        # The leader is gone; make sure no child of its group outlives it.
        self._signal_group(signal.SIGKILL)
        return self._popen.returncode

    def kill(self) -> None:
        """Abrupt death (a crashed pod): SIGKILL to the group, no grace."""
        self.stop(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
