"""Kubernetes discovery against a fake API server speaking list/watch JSON on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User

from epp.datastore import Datastore
from epp.discovery.kubernetes import KubernetesDiscovery
from tests.support.epp import wait_until
from tests.support.fake_kube import FakeKubeApi, crd_path, pods_path

NS = "llm"
POOLS = crd_path("inference.networking.k8s.io", "v1", NS, "inferencepools")
OBJECTIVES = crd_path("llm-d.ai", "v1alpha2", NS, "inferenceobjectives")
LEGACY_OBJECTIVES = crd_path("inference.networking.x-k8s.io", "v1alpha2", NS, "inferenceobjectives")
PODS = pods_path(NS)
SELECTOR = {"llm-d.ai/inference-serving": "true", "llm-d.ai/model": "qwen"}


def pool(ports: list[int], selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "qwen-pool", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": selector or SELECTOR},
            "targetPorts": [{"number": p} for p in ports],
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
        },
    }


def pod(
    name: str, ip: str, *, ready: bool = True, labels: dict[str, str] | None = None, deleting: bool = False
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "labels": labels if labels is not None else {**SELECTOR, "llm-d.ai/role": "decode"},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "podIP": ip,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def objective(name: str, priority: int | None, group: str = "llm-d.ai", pool_name: str = "qwen-pool") -> dict:
    spec: dict[str, Any] = {"poolRef": {"group": "inference.networking.k8s.io", "name": pool_name}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": f"{group}/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    server = FakeKubeApi()
    await server.start()
    yield server
    await server.stop()


def _hostports(datastore: Datastore) -> set[str]:
    return {e.hostport for e in datastore.endpoints()}


async def _discovery(api: FakeKubeApi, datastore: Datastore, **options: Any) -> KubernetesDiscovery:
    config = KubeConfig.from_one(cluster=Cluster(server=api.url), user=User(token=api.token))
    client = AsyncClient(config=config, namespace=NS)
    discovery = KubernetesDiscovery(
        datastore, pool_name="qwen-pool", namespace=NS, client=client, max_backoff=0.2, **options
    )
    await discovery.start()
    return discovery


async def test_pool_pods_and_objectives_are_discovered_and_followed(api: FakeKubeApi) -> None:
    await api.put(POOLS, pool([8000, 8001]))
    await api.put(PODS, pod("ready", "10.0.0.1"))
    await api.put(PODS, pod("starting", "10.0.0.2", ready=False))
    await api.put(PODS, pod("stranger", "10.0.0.3", labels={"app": "other"}))
    await api.put(PODS, pod("terminating", "10.0.0.4", deleting=True))
    await api.put(OBJECTIVES, objective("batch", -1))
    await api.put(OBJECTIVES, objective("unset", None))
    await api.put(OBJECTIVES, objective("elsewhere", 99, pool_name="other-pool"))
    await api.put(LEGACY_OBJECTIVES, objective("legacy", 7, group="inference.networking.x-k8s.io"))
    await api.put(LEGACY_OBJECTIVES, objective("batch", 3, group="inference.networking.x-k8s.io"))

    datastore = Datastore()
    discovery = await _discovery(api, datastore)
    try:
        await wait_until(lambda: datastore.synced and bool(datastore.endpoints()))
        assert _hostports(datastore) == {"10.0.0.1:8000", "10.0.0.1:8001"}  # each pod x each target port
        endpoint = datastore.get("10.0.0.1:8000")
        assert endpoint is not None and endpoint.name == "ready"
        assert endpoint.labels["llm-d.ai/role"] == "decode"
        # the label selector went to the server
        assert any("labelSelector=" in r and "/pods" in r for r in api.requests)
        await wait_until(lambda: datastore.objectives() == {"batch": -1, "unset": 0, "legacy": 7})

        await api.put(PODS, pod("starting", "10.0.0.2"))  # becomes Ready
        await wait_until(lambda: "10.0.0.2:8000" in _hostports(datastore))
        await api.delete(PODS, "ready")
        await wait_until(lambda: _hostports(datastore) == {"10.0.0.2:8000", "10.0.0.2:8001"})

        await api.put(POOLS, pool([9000]))  # target ports change: endpoints follow
        await wait_until(lambda: _hostports(datastore) == {"10.0.0.2:9000"})

        await api.delete(OBJECTIVES, "batch")  # the legacy "batch" (3) is still there
        await wait_until(lambda: datastore.priority("batch") == 3)
    finally:
        await discovery.stop()


async def test_expired_watch_relists_and_converges(api: FakeKubeApi) -> None:
    await api.put(POOLS, pool([8000]))
    await api.put(PODS, pod("a", "10.0.0.1"))
    datastore = Datastore()
    discovery = await _discovery(api, datastore)
    try:
        await wait_until(lambda: _hostports(datastore) == {"10.0.0.1:8000"})
        lists_before = sum(1 for r in api.requests if "/pods" in r and "watch=true" not in r)
        await api.expire_watches()
        await api.put(PODS, pod("b", "10.0.0.2"))
        await wait_until(lambda: _hostports(datastore) == {"10.0.0.1:8000", "10.0.0.2:8000"})
        lists_after = sum(1 for r in api.requests if "/pods" in r and "watch=true" not in r)
        assert lists_after > lists_before
    finally:
        await discovery.stop()


async def test_a_watch_gone_silent_is_given_up_and_the_pods_relisted(api: FakeKubeApi) -> None:
    """lightkube's watches have no read timeout and reopen themselves when the server ends them: a
    watch whose connection died silently (no FIN, no RST: a NAT or load balancer dropping the flow)
    was waited on for ever, and the endpoint set froze (deleted pods still picked, new ones never)."""
    await api.put(POOLS, pool([8000]))
    await api.put(PODS, pod("a", "10.0.0.1"))
    datastore = Datastore()
    discovery = await _discovery(api, datastore, watch_timeout=0.5)
    try:
        await wait_until(lambda: _hostports(datastore) == {"10.0.0.1:8000"})
        await wait_until(lambda: any("/pods" in r and "watch=true" in r for r in api.requests))
        await api.stall_watches()
        await api.delete(PODS, "a")
        await api.put(PODS, pod("b", "10.0.0.2"))
        await wait_until(lambda: _hostports(datastore) == {"10.0.0.2:8000"})
    finally:
        await discovery.stop()


async def test_not_synced_until_the_pool_exists_and_missing_crds_are_tolerated(api: FakeKubeApi) -> None:
    api.add_collection(POOLS)
    api.add_collection(PODS)
    # No InferenceObjective collections at all: those CRDs are not installed (404).
    datastore = Datastore()
    discovery = await _discovery(api, datastore)
    try:
        await asyncio.sleep(0.3)
        assert not datastore.synced
        await api.put(PODS, pod("a", "10.0.0.1"))
        await api.put(POOLS, pool([8000]))
        await wait_until(lambda: datastore.synced and _hostports(datastore) == {"10.0.0.1:8000"})
        assert datastore.objectives() == {}
        await api.delete(POOLS, "qwen-pool")  # the pool goes away: nothing to route to
        await wait_until(lambda: _hostports(datastore) == set())
    finally:
        await discovery.stop()


def test_parse_pool_v1_and_legacy_v1alpha2_shapes() -> None:
    from epp.discovery.kubernetes import InvalidSpec, PoolSpec, parse_pool

    v1 = parse_pool(pool([8000, 8001])["spec"], "inference.networking.k8s.io")
    assert v1 == PoolSpec(SELECTOR, (8000, 8001))
    legacy = parse_pool(
        {"selector": {"app": "vllm"}, "targetPortNumber": 8000}, "inference.networking.x-k8s.io"
    )
    assert legacy == PoolSpec({"app": "vllm"}, (8000,))
    # No targetPorts selected pods and made no endpoint, silently; llm-d's schema requires 1-8 of them.
    with pytest.raises(InvalidSpec, match="targetPorts must be a non-empty list"):
        parse_pool(None, "inference.networking.k8s.io")


async def test_legacy_pool_group_is_watched_at_v1alpha2(api: FakeKubeApi) -> None:
    legacy_pools = crd_path("inference.networking.x-k8s.io", "v1alpha2", NS, "inferencepools")
    await api.put(
        legacy_pools,
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "kind": "InferencePool",
            "metadata": {"name": "qwen-pool", "namespace": NS},
            "spec": {"selector": SELECTOR, "targetPortNumber": 8000},
        },
    )
    await api.put(PODS, pod("a", "10.0.0.9"))
    datastore = Datastore()
    config = KubeConfig.from_one(cluster=Cluster(server=api.url), user=User(token=api.token))
    discovery = KubernetesDiscovery(
        datastore,
        pool_name="qwen-pool",
        namespace=NS,
        pool_group="inference.networking.x-k8s.io",
        client=AsyncClient(config=config, namespace=NS),
        max_backoff=0.2,
    )
    await discovery.start()
    try:
        await wait_until(lambda: _hostports(datastore) == {"10.0.0.9:8000"})
    finally:
        await discovery.stop()


REWRITES = crd_path("llm-d.ai", "v1alpha2", NS, "inferencemodelrewrites")
LEGACY_REWRITES = crd_path("inference.networking.x-k8s.io", "v1alpha2", NS, "inferencemodelrewrites")


def rewrite(
    name: str,
    model: str,
    targets: list[tuple[str, int | None]],
    *,
    created: str,
    group: str = "llm-d.ai",
    pool_name: str = "qwen-pool",
) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
        "spec": {
            "poolRef": {"group": "inference.networking.k8s.io", "name": pool_name},
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": model}}],
                    "targets": [{"modelRewrite": t, **({"weight": w} if w else {})} for t, w in targets],
                }
            ],
        },
    }


async def test_model_rewrites_are_discovered_with_oldest_winning(api: FakeKubeApi) -> None:
    from epp.datastore import RewriteTarget

    await api.put(POOLS, pool([8000]))
    await api.put(
        REWRITES, rewrite("split", "qwen", [("qwen-a", 80), ("qwen-b", 20)], created="2026-01-02T00:00:00Z")
    )
    await api.put(REWRITES, rewrite("newer", "qwen", [("qwen-z", None)], created="2026-03-01T00:00:00Z"))
    await api.put(
        REWRITES,
        rewrite("other-pool", "x", [("y", None)], created="2026-01-01T00:00:00Z", pool_name="another"),
    )
    await api.put(
        LEGACY_REWRITES,
        rewrite(
            "legacy",
            "old",
            [("new", None)],
            created="2026-01-01T00:00:00Z",
            group="inference.networking.x-k8s.io",
        ),
    )
    datastore = Datastore()
    discovery = await _discovery(api, datastore)
    try:
        expected = {
            "qwen": (RewriteTarget("qwen-a", 80), RewriteTarget("qwen-b", 20)),
            "old": (RewriteTarget("new", None),),
        }
        await wait_until(lambda: datastore.model_rewrites() == expected)
        await api.delete(REWRITES, "split")  # the newer rule for qwen takes over
        await wait_until(lambda: datastore.rewrite_targets("qwen") == (RewriteTarget("qwen-z", None),))
    finally:
        await discovery.stop()
