"""Active-active EPP replicas with precise prefix routing, end to end on 127.0.0.1: simulated pods
publishing KV events, two ``python -m epp`` replicas (each subscribed to every pod) behind one
Envoy whose ext_proc cluster balances requests over both. Both replicas hold the same index, so a
prompt that extends one served through either replica goes to the pod that cached it.

(With the approximate producer each replica only knows the prompts it routed itself; the hit-rate
drop that causes is measured by ``python -m benchmarks.precise``, not asserted here.)"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.pool import SimPool, SimTiming
from benchmarks.routers import router_by_name, start_router
from localrun import envoy_binary

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)

MODEL = "sim-llama"
TIMEOUT = 30.0
PROMPT = "You are a careful assistant who answers briefly. " * 40  # 1,960 characters: 30 blocks
FOLLOW_UPS = 20


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def complete(url: str, prompt: str) -> None:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2}).encode()
    request = urllib.request.Request(
        url + "/v1/completions", body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
        assert reply.status == 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimPool, str, list[str]]]:
    log_dir: Path = tmp_path_factory.mktemp("precise-replicas")
    timing = SimTiming(prefill_per_token_s=0.00001, step_overhead_s=0.001, request_overhead_s=0.0)
    with SimPool(3, MODEL, timing, log_dir / "pods", kv_events=True) as pool:
        router = start_router(
            router_by_name("epp-precise-2x"),
            pool.names,
            pool.endpoints,
            log_dir / "router",
            kv_events=pool.kv_events,
            block_size=timing.block_size,
        )
        try:
            epps = [p for p in router.processes if getattr(p, "name", "").startswith("epp-")]  # type: ignore[attr-defined]
            epp_metrics = [
                f"http://127.0.0.1:{p.cmd[p.cmd.index('--metrics-port') + 1]}/metrics" for p in epps
            ]
            yield pool, router.url, epp_metrics
        finally:
            router.stop()


def test_both_replicas_hold_the_same_index_and_route_to_the_pod_that_cached(
    stack: tuple[SimPool, str, list[str]],
) -> None:
    pool, url, epp_metrics = stack
    assert len(epp_metrics) == 2
    wait_for(
        lambda: all(total(metrics(m), "epp_kvevents_subscribers") == 3 for m in epp_metrics),
        "every replica subscribed to every pod",
    )
    complete(url, PROMPT)
    # Both replicas learn the blocks from the pod's events, whichever of them routed the request
    # (the one that routed it also holds them speculatively for 2 s; then the two are equal).
    wait_for(
        lambda: (
            len({total(metrics(m), "epp_kvevents_index_entries") for m in epp_metrics}) == 1
            and total(metrics(epp_metrics[0]), "epp_kvevents_index_entries") >= 30
        ),
        "the same index on both replicas",
    )
    before = {name: metrics(m) for name, m in pool.metrics_urls.items()}
    # Envoy's EPP cluster picks a replica per request (LEAST_REQUEST: at random among idle ones);
    # with 20 requests both replicas decide some, except with probability 2**-19.
    for turn in range(FOLLOW_UPS):
        complete(url, PROMPT + f" Question {turn}: why?")
    after = {name: metrics(m) for name, m in pool.metrics_urls.items()}
    served = {
        name: total(after[name], "vllm:request_success_total")
        - total(before[name], "vllm:request_success_total")
        for name in pool.names
    }
    hits = sum(
        total(after[name], "vllm:prefix_cache_hits_total")
        - total(before[name], "vllm:prefix_cache_hits_total")
        for name in pool.names
    )
    assert sorted(served.values()) == [0, 0, FOLLOW_UPS], served  # one pod served every follow-up
    assert hits >= FOLLOW_UPS * 30 * 16  # each one reused the 30 cached blocks
    decisions = [total(metrics(m), "epp_precise_prefix_lookups_total") for m in epp_metrics]
    assert sum(decisions) == FOLLOW_UPS + 1 and min(decisions) >= 1, decisions  # both replicas decided
