"""Two real ``python -m epp --ha-enable-leader-election`` processes against the fake API server:
one leads and is ready, the other stands by NOT_SERVING, and SIGTERM hands the Lease over at once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.leader import lease_name
from localrun.process import ManagedProcess, free_port, grpc_ok, tcp_ok
from tests.support.fake_kube import FakeKubeApi, crd_path, pods_path
from tests.support.paths import REPO_ROOT

REPO = REPO_ROOT
NS = "llm"
POOL = "qwen-pool"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
LEASE = lease_name(NS, POOL)


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    server = FakeKubeApi()
    server.add_collection(LEASES)
    server.add_collection(pods_path(NS))
    await server.put(
        crd_path("inference.networking.k8s.io", "v1", NS, "inferencepools"),
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": POOL, "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
        },
    )
    await server.start()
    yield server
    await server.stop()


def kubeconfig(api: FakeKubeApi, path: Path) -> Path:
    context = {"cluster": "fake", "user": "epp", "namespace": NS}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "epp", "user": {"token": api.token}}],
        "contexts": [{"name": "fake", "context": context}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(document))
    return path


def epp_process(pod_name: str, config: Path, log_dir: Path) -> tuple[ManagedProcess, int]:
    health = free_port()
    command = [
        sys.executable,
        "-m",
        "epp",
        "--pool-name",
        POOL,
        "--pool-namespace",
        NS,
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(free_port()),
        "--grpc-health-port",
        str(health),
        "--metrics-port",
        str(free_port()),
        "--drain-timeout",
        "1",
        "--ha-enable-leader-election",
    ]
    process = ManagedProcess(
        command,
        ready=tcp_ok(health),  # listening; readiness is what the test is about
        name=pod_name,
        env={"KUBECONFIG": str(config), "POD_NAME": pod_name},
        cwd=REPO,
        log_dir=log_dir,
        stop_timeout=15.0,
    )
    return process, health


async def serving(port: int, service: str = "readiness") -> bool:
    return await asyncio.to_thread(grpc_ok(port, service))


def holder(api: FakeKubeApi) -> str | None:
    lease: dict[str, Any] | None = api.collections[LEASES].get(LEASE)
    return None if lease is None else lease["spec"].get("holderIdentity")


async def eventually(condition: Any, within: float = 20.0) -> None:
    """``wait_until`` for conditions that need a blocking gRPC probe."""
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_one_process_leads_and_sigterm_hands_over(api: FakeKubeApi, tmp_path: Path) -> None:
    config = kubeconfig(api, tmp_path / "kubeconfig")
    first, first_health = epp_process("epp-a", config, tmp_path)
    second, second_health = epp_process("epp-b", config, tmp_path)
    try:
        await asyncio.to_thread(first.start)
        await eventually(lambda: serving(first_health))
        assert holder(api) == "epp-a"

        await asyncio.to_thread(second.start)
        # b tries at start and then every 2-2.4 s; give it more than one retry against a's renewals.
        await asyncio.sleep(3.0)
        assert await serving(second_health, "liveness")
        assert not await serving(second_health)  # synced, alive, but not the leader
        assert holder(api) == "epp-a"

        # SIGTERM: a releases the Lease before draining, so b need not wait out the 15 s lease.
        await asyncio.to_thread(first.stop)
        assert first.returncode() == 0, first.log_tail()
        released = [obj for _, kind, obj in api.events[LEASES] if not obj["spec"].get("holderIdentity")]
        assert released, "the leader must release the Lease on SIGTERM"
        await eventually(lambda: serving(second_health), within=10.0)
        assert holder(api) == "epp-b"
        assert api.collections[LEASES][LEASE]["spec"]["leaseTransitions"] == 1
    finally:
        await asyncio.to_thread(first.stop)
        await asyncio.to_thread(second.stop)
