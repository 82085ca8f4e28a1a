"""The director's count of requests sent to each endpoint that have not answered a byte yet
(``Endpoint.pending``) and of their uncached prompt tokens (``Endpoint.pending_tokens``): what
spreads a burst that arrives between two scrapes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics
from epp.director import SchedulingDirector
from epp.types import Decision, InferenceRequest
from tests.support.epp import inference_request, spec

HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
# llm-d's default profile without the prefix scorer (unique prompts: it would score 0 everywhere)
QUEUE_KV = (
    HEADER
    + """\
plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: kv-cache-utilization-scorer, weight: 2}]
"""
)
PREFIX = HEADER + "plugins: [{type: prefix-cache-scorer}]\n"


def _director(config_text: str, count: int = 4) -> tuple[SchedulingDirector, Datastore]:
    datastore = Datastore()
    director = SchedulingDirector(datastore, load_config(config_text), metrics_staleness=2.0)
    datastore.replace_endpoints(spec(f"pod-{i}", i + 1) for i in range(count))
    for ep in datastore.endpoints():
        ep.metrics = EndpointMetrics(updated_at=time.monotonic())
    return director, datastore


async def schedule(director: SchedulingDirector, request: InferenceRequest) -> Decision:
    decision = await director.handle_request(request)
    await asyncio.sleep(0)  # deferred pre-request work (the prefix-index update) runs
    return decision


async def test_a_burst_between_two_scrapes_spreads_evenly() -> None:
    # Every scrape says: empty queues, and pod-3 has the most free KV cache. Without counting its
    # own dispatches the EPP sent the whole burst to pod-3 (the herding llm-d's default profile
    # showed on bursts of unique prompts).
    director, datastore = _director(QUEUE_KV)
    for index, ep in enumerate(datastore.endpoints()):
        ep.metrics = EndpointMetrics(kv_usage=0.3 - 0.1 * index, updated_at=time.monotonic())
    picks = Counter()
    for _ in range(20):
        decision = await schedule(director, inference_request("unique " * 100))
        picks[decision.endpoints[0]] += 1
    assert sorted(picks.values()) == [5, 5, 5, 5]
    assert [ep.pending for ep in datastore.endpoints()] == [5, 5, 5, 5]


async def test_pending_ends_at_the_first_response_byte_and_in_flight_at_completion() -> None:
    director, datastore = _director(QUEUE_KV, count=1)
    (pod,) = datastore.endpoints()
    request = inference_request("x" * 800)  # 800 bytes: 200 tokens at llm-d's 4 bytes a token
    await schedule(director, request)
    assert (pod.in_flight, pod.pending, pod.pending_tokens) == (1, 1, 200)
    director.handle_response_started(request)
    assert (pod.in_flight, pod.pending, pod.pending_tokens) == (1, 0, 0)
    director.handle_response_started(request)  # a repeat is harmless
    assert pod.pending == 0
    director.handle_response_complete(request, None, failed=False)
    assert (pod.in_flight, pod.pending, pod.pending_tokens) == (0, 0, 0)
    director.handle_response_started(request)  # unknown by now: ignored
    assert (pod.in_flight, pod.pending, pod.pending_tokens) == (0, 0, 0)


async def test_a_request_that_never_answers_is_released_at_completion() -> None:
    director, datastore = _director(QUEUE_KV, count=1)
    (pod,) = datastore.endpoints()
    request = inference_request("x" * 40)
    await schedule(director, request)
    director.handle_response_complete(request, None, failed=True)
    assert (pod.in_flight, pod.pending, pod.pending_tokens) == (0, 0, 0)


async def test_a_fallback_endpoint_takes_over_the_pending_hold() -> None:
    director, datastore = _director(QUEUE_KV, count=2)
    request = inference_request("x" * 400)
    decision = await schedule(director, request)
    picked = next(ep for ep in datastore.endpoints() if ep.hostport == decision.endpoints[0])
    other = next(ep for ep in datastore.endpoints() if ep is not picked)
    director.handle_response_headers(request, other.hostport, 200)
    assert (picked.pending, picked.pending_tokens) == (0, 0)
    assert (other.pending, other.pending_tokens, other.in_flight) == (1, 100, 1)
    director.handle_response_started(request)
    assert (other.pending, other.pending_tokens, other.in_flight) == (0, 0, 1)


async def test_the_prefill_pick_is_released_at_the_first_byte() -> None:
    """llm-d-router's inflight-load-producer releases the prefill profile's target (request and
    tokens) at StartOfStream, the decode target's request only at the end of the stream."""
    config = (
        HEADER
        + """plugins:
- {type: prefill-filter}
- {type: decode-filter}
- {type: queue-scorer}
- {type: always-disagg-pd-decider}
- {type: disagg-profile-handler, parameters: {deciders: {prefill: always-disagg-pd-decider}}}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}]}
"""
    )
    datastore = Datastore()
    director = SchedulingDirector(datastore, load_config(config), metrics_staleness=2.0)
    datastore.replace_endpoints(
        [spec("p", 1, labels={"llm-d.ai/role": "prefill"}), spec("d", 2, labels={"llm-d.ai/role": "decode"})]
    )
    prefill, decode = datastore.endpoints()
    for ep in (prefill, decode):
        ep.metrics = EndpointMetrics(updated_at=time.monotonic())
    request = inference_request("x" * 400)
    decision = await schedule(director, request)
    assert decision.headers == {"x-prefiller-host-port": prefill.hostport}
    assert (prefill.in_flight, prefill.pending_tokens, decode.in_flight) == (1, 100, 1)
    director.handle_response_started(request)
    assert (prefill.in_flight, prefill.pending_tokens, decode.in_flight) == (0, 0, 1)
    director.handle_response_complete(request, None, failed=False)
    assert (prefill.in_flight, decode.in_flight) == (0, 0)
    # no byte ever came: both are released at completion
    request = inference_request("y" * 400)
    await schedule(director, request)
    director.handle_response_complete(request, None, failed=True)
    assert (prefill.in_flight, prefill.pending_tokens, decode.in_flight) == (0, 0, 0)


async def test_only_the_uncached_part_of_the_prompt_is_charged() -> None:
    director, datastore = _director(PREFIX, count=1)
    (pod,) = datastore.endpoints()
    prompt = "You are a helpful assistant. " * 40  # 1,160 bytes: 290 tokens
    first = inference_request(prompt)
    await schedule(director, first)
    assert pod.pending_tokens == 290  # nothing cached yet
    director.handle_response_started(first)
    second = inference_request(prompt + "And one more question?")
    await schedule(director, second)
    # the approximate prefix index expects the first 4 blocks of 64 tokens on the pod
    assert pod.pending_tokens == 296 - 4 * 64
