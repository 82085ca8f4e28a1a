"""What the stack renders for precise prefix routing works end to end: three simulated pods started
with the decode pool's rendered flags and env (``llmd:epp.prefixCache: precise`` on a simulated
stack), and ``python -m epp`` behind Envoy with the rendered EndpointPickerConfig. The pods' events
reach the EPP's index with the block keys the EPP computes itself (no hash mismatch), and follow-ups
of a cached prompt go to the pod that cached it.

Only what a laptop cannot reproduce is changed: every pod shares 127.0.0.1, so each gets its own
serving port and event ports (``socketPort + rank``, as llm-d does for data-parallel ranks), and
``$(POD_IP)`` is expanded as Kubernetes would."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.pool import free_port_block
from benchmarks.routers import router_by_name, start_router
from localrun import envoy_binary
from localrun.process import ManagedProcess, free_port, http_ok
from render.engine import RenderResult
from tests.e2e.test_precise_replicas import complete, metrics, total, wait_for
from tests.support.stacks import SIM_POOL, kind_config, render_config

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)

MODEL = "sim-llama"  # the name test_precise_replicas.complete() sends
PODS = 3
PROMPT = "You are a careful assistant who answers briefly. " * 40  # 1,960 characters: 30 blocks
FOLLOW_UPS = 10


def rendered_stack() -> RenderResult:
    return render_config(
        kind_config(
            model={"name": MODEL, "uri": "hf://sim/sim-llama", "engine": "simulator", "blockSize": 16},
            epp={"prefixCache": "precise"},
            prefill={"enabled": False},
            decode={**SIM_POOL, "replicas": PODS},
        )
    )


def pod_command(args: list[str], port: int, socket_port: int, replay_port: int) -> list[str]:
    """The rendered container args for one local pod: its own ports, $(POD_IP) expanded."""
    local = list(args)
    local[local.index("--host") + 1] = "127.0.0.1"
    local[local.index("--port") + 1] = str(port)
    at = local.index("--kv-events-config") + 1
    events: dict[str, Any] = json.loads(local[at])
    assert (events["endpoint"], events["replay_endpoint"]) == ("tcp://*:5557", "tcp://*:5558")
    events["endpoint"] = f"tcp://*:{socket_port}"
    events["replay_endpoint"] = f"tcp://*:{replay_port}"
    events["topic"] = events["topic"].replace("$(POD_IP)", "127.0.0.1")
    local[at] = json.dumps(events)
    return [sys.executable, "-m", "simulator", *local, "--log-level", "WARNING"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str, str]]:
    log_dir: Path = tmp_path_factory.mktemp("precise-stack")
    result = rendered_stack()
    decode = result.get("Deployment", "t-decode").document
    [container] = decode["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "simulator"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["PYTHONHASHSEED"] == "0"
    [config_map] = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    config = yaml.safe_load(config_map["data"]["epp-config.yaml"])

    ports = sorted(free_port() for _ in range(PODS))
    socket_base, replay_base = free_port_block(PODS), free_port_block(PODS)
    producer = next(p for p in config["plugins"] if p["type"] == "precise-prefix-cache-producer")
    discovery = producer["parameters"]["kvEventsConfig"]["podDiscoveryConfig"]
    assert discovery == {"socketPort": 5557, "replaySocketPort": 5558}
    discovery.update(socketPort=socket_base, replaySocketPort=replay_base)

    pods: list[ManagedProcess] = []
    names = [f"pod-{rank}" for rank in range(PODS)]
    router = None
    try:
        for rank, port in enumerate(ports):
            command = pod_command(container["args"], port, socket_base + rank, replay_base + rank)
            process = ManagedProcess(
                command,
                ready=http_ok(f"http://127.0.0.1:{port}/health"),
                name=names[rank],
                env=env,
                log_dir=log_dir / "pods",
                stop_timeout=20.0,
            )
            pods.append(process.start())
        # The rendered config as it is (ports aside), through the same EPP + Envoy path as the benchmarks.
        spec = dataclasses.replace(
            router_by_name("epp-precise"),
            name="stack",
            epp_config=yaml.safe_dump(config),
            kv_events=False,
        )
        router = start_router(spec, names, [f"127.0.0.1:{p}" for p in ports], log_dir / "router")
        [epp] = [p for p in router.processes if getattr(p, "name", "") == "epp-stack"]  # type: ignore[attr-defined]
        epp_metrics = f"http://127.0.0.1:{epp.cmd[epp.cmd.index('--metrics-port') + 1]}/metrics"
        pod_metrics = {
            name: f"http://127.0.0.1:{port}/metrics" for name, port in zip(names, ports, strict=True)
        }
        yield pod_metrics, router.url, epp_metrics
    finally:
        if router is not None:
            router.stop()
        for process in reversed(pods):
            process.stop()


def test_the_rendered_pods_and_config_route_on_cached_prefixes(
    running: tuple[dict[str, str], str, str],
) -> None:
    pod_metrics, url, epp_metrics = running
    wait_for(lambda: total(metrics(epp_metrics), "epp_kvevents_subscribers") == PODS, "subscriptions")
    complete(url, PROMPT)
    wait_for(lambda: total(metrics(epp_metrics), "epp_kvevents_events_total") >= 1, "the pod's KV events")
    # Outlast the rendered speculativeTTL (2s): the follow-ups then find the prefix only through the
    # entries the pod's events put in the index.
    time.sleep(2.5)
    before = {name: metrics(m) for name, m in pod_metrics.items()}
    for turn in range(FOLLOW_UPS):
        complete(url, PROMPT + f" Question {turn}: why?")
    after = {name: metrics(m) for name, m in pod_metrics.items()}
    served = {
        name: total(after[name], "vllm:request_success_total")
        - total(before[name], "vllm:request_success_total")
        for name in pod_metrics
    }
    assert sorted(served.values()) == [0] * (PODS - 1) + [FOLLOW_UPS], served
    hits = sum(
        total(after[name], "vllm:prefix_cache_hits_total")
        - total(before[name], "vllm:prefix_cache_hits_total")
        for name in pod_metrics
    )
    assert hits >= FOLLOW_UPS * 30 * 16  # each follow-up reused the 30 cached blocks
    epp = metrics(epp_metrics)
    lookups = {
        labels: value for (name, labels), value in epp.items() if name == "epp_precise_prefix_lookups_total"
    }
    assert lookups.get((("outcome", "hit"),), 0) >= FOLLOW_UPS, lookups  # found through the index
    # The EPP re-hashes each chain-start block from its token ids: the rendered block size, hash and
    # seed agree between the pods and the EPP's config.
    assert total(epp, "epp_kvevents_hash_mismatch_total") == 0
    assert total(epp, "epp_kvevents_index_entries") >= 30
