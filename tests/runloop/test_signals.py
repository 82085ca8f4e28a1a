"""The simulator and the sidecar stop cleanly on SIGTERM and SIGINT: exit 0, no traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import pytest

from localrun.process import ManagedProcess, ReadyCheck, free_port, http_ok, tcp_ok


def simulator(port: int) -> tuple[list[str], ReadyCheck]:
    command = [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", str(port), "--model", "m"]
    return command, http_ok(f"http://127.0.0.1:{port}/health")


def sidecar(port: int) -> tuple[list[str], ReadyCheck]:
    command = [
        sys.executable, "-m", "sidecar", "--host", "127.0.0.1", "--port", str(port),
        "--model-server-port", str(free_port()), "--kv-connector", "nixlv2",
    ]  # fmt: skip
    return command, tcp_ok(port)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("server", [simulator, sidecar], ids=["sim", "sidecar"])
def test_stops_cleanly_on_signal(
    server: Callable[[int], tuple[list[str], ReadyCheck]], sig: signal.Signals
) -> None:
    command, ready = server(free_port())
    process = ManagedProcess(command, ready, name="server", ready_timeout=20).start()
    try:
        assert process.stop(sig) == 0
        assert "Traceback" not in process.log_tail()
    finally:
        process.stop()
