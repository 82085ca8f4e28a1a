"""Flow control end to end through the real Envoy (localrun, FULL_DUPLEX_STREAMED): a queued request
whose TTL runs out gets llm-d's 429 with its drop reason, and two tenants sharing one saturated pod
are served in turns by the round-robin fairness policy."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from localrun import envoy_binary
from tests.support.envoy_epp import MODEL, Pod, Reply, gateway_stack, wait_for

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)

FAIRNESS = "x-llm-d-inference-fairness-id"
HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nfeatureGates: [flowControl]\n"


def saturated(pods: list[Pod]) -> None:
    for pod in pods:
        pod.set_metrics(waiting=40)  # queue 40 >> utilization-detector's threshold of 5


def test_a_request_whose_queue_ttl_runs_out_gets_429_through_envoy(tmp_path: Path) -> None:
    config = HEADER + "plugins: [{type: queue-scorer}]\nflowControl: {defaultRequestTTL: 300ms}\n"
    with gateway_stack(tmp_path, pods=1, epp_args=("--config-text", config), before_epp=saturated) as stack:
        reply = stack.post({"model": MODEL, "prompt": "wait for me"})
        assert reply.status == 429, reply.body[:300]
        assert reply.headers.get("x-llm-d-request-dropped-reason") == "rejected-ttl-expired"
        assert b"timed out in queue" in reply.body
        assert stack.pods[0].received() == []  # never reached the model server
        evicted = {"outcome": "EvictedTTL", "priority": "0"}
        assert stack.epp_metric("llm_d_epp_flow_control_requests_total", evicted) == 1
        # Once the pod has room again, the same request goes through.
        stack.pods[0].set_metrics(waiting=0)
        assert wait_for(lambda: stack.post({"model": MODEL, "prompt": "again"}).status == 200, timeout=10)


def test_two_tenants_take_turns_on_a_busy_pod(tmp_path: Path) -> None:
    """One request in flight at a time (concurrency-detector, maxConcurrency 1) on a pod that
    answers after a second. Tenant A queues six requests, then tenant B two: round-robin serves B
    within A's next turns, where one FCFS queue would serve B last. (The second per answer leaves a
    loaded machine ample time to queue everything behind the first request.)"""
    config = (
        HEADER + "plugins:\n- {type: queue-scorer}\n- {type: round-robin-fairness-policy}\n"
        "- {type: concurrency-detector, parameters: {maxConcurrency: 1}}\n"
        "flowControl:\n  saturationDetector: {pluginRef: concurrency-detector}\n"
        "  defaultPriorityBand: {fairnessPolicyRef: round-robin-fairness-policy}\n"
    )
    with gateway_stack(tmp_path, pods=1, epp_args=("--config-text", config), pod_delay_ms=1000) as stack:
        replies: list[Reply] = []
        lock = threading.Lock()

        def send(tenant: str, index: int) -> None:
            reply = stack.post({"model": MODEL, "prompt": f"{tenant} {index}"}, **{FAIRNESS: tenant})
            with lock:
                replies.append(reply)

        def queued(tenant: str) -> float:
            return stack.epp_metric("llm_d_epp_flow_control_queue_size", {"fairness_id": tenant})

        threads = [threading.Thread(target=send, args=("tenant-a", i)) for i in range(6)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: queued("tenant-a") >= 4, timeout=10)  # one in flight, the rest waiting
        b_threads = [threading.Thread(target=send, args=("tenant-b", i)) for i in range(2)]
        for thread in b_threads:
            thread.start()
        assert wait_for(lambda: queued("tenant-b") >= 1, timeout=10)
        for thread in threads + b_threads:
            thread.join(timeout=60)
        assert [r.status for r in replies] == [200] * 8
        order = [seen["headers"].get(FAIRNESS) for seen in stack.pods[0].received()]
        assert sorted(order) == ["tenant-a"] * 6 + ["tenant-b"] * 2
        # FCFS would put B at positions 6 and 7; in turns, both B requests are served by position 5.
        last_b = max(i for i, tenant in enumerate(order) if tenant == "tenant-b")
        assert last_b <= 5, order
        assert stack.epp_metric("llm_d_epp_flow_control_queue_size") == 0
