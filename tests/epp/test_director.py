"""The director: error mapping, subset hints, metrics health, P/D decisions, in-flight bookkeeping."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics
from epp.director import SchedulingDirector
from epp.types import Decision, EppError, InferenceRequest, Usage
from tests.support.epp import inference_request, spec
from tests.support.epp_configs import PD_LEGACY, PD_SAMPLE

HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
LOAD_ONLY = HEADER + "plugins: [{type: load-aware-scorer, parameters: {threshold: 100}}]\n"


async def schedule(director: SchedulingDirector, request: InferenceRequest) -> Decision:
    """handle_request, then one loop turn so deferred pre-request work (the prefix-index update)
    has run before the next request, as it has between requests in a running EPP."""
    decision = await director.handle_request(request)
    await asyncio.sleep(0)
    return decision


def _director(
    config_text: str | None = None,
    count: int = 3,
    *,
    served: frozenset[str] | None = None,
    labels: list[dict[str, str]] | None = None,
) -> tuple[SchedulingDirector, Datastore]:
    datastore = Datastore()
    director = SchedulingDirector(
        datastore, load_config(config_text), served_models=served, metrics_staleness=2.0
    )
    datastore.replace_endpoints(
        spec(f"pod-{i}", i + 1, labels=(labels[i] if labels else None)) for i in range(count)
    )
    for ep in datastore.endpoints():
        ep.metrics = EndpointMetrics(updated_at=time.monotonic())
    return director, datastore


async def test_not_ready_until_endpoints_sync() -> None:
    datastore = Datastore()
    director = SchedulingDirector(datastore, load_config(None))
    assert not director.ready()
    datastore.replace_endpoints([])
    assert director.ready()


async def test_unknown_model_is_404_only_when_models_are_fixed() -> None:
    director, _ = _director(served=frozenset({"llama"}))
    with pytest.raises(EppError) as caught:
        await schedule(director, inference_request(model="gpt"))
    assert caught.value.status == 404 and "gpt" in caught.value.message
    assert (await schedule(director, inference_request(model="llama"))).endpoints
    open_director, _ = _director()
    assert (await open_director.handle_request(inference_request(model="anything"))).endpoints


async def test_empty_pool_is_503_no_endpoints() -> None:
    director, _ = _director(count=0)
    with pytest.raises(EppError) as caught:
        await schedule(director, inference_request())
    assert (caught.value.status, caught.value.reason) == (503, "rejected-no-endpoints")


async def test_subset_hint_matches_ip_only_and_empty_subset_is_503() -> None:
    director, datastore = _director(count=3)
    target = datastore.endpoints()[2]
    decision = await schedule(director, inference_request(subset=[f"{target.address}:9999"]))
    assert decision.endpoints == (target.hostport,)
    for subset in ([], ["192.0.2.1:8000"]):
        with pytest.raises(EppError) as caught:
            await schedule(director, inference_request(subset=subset))
        assert (caught.value.status, caught.value.reason) == (503, "rejected-no-endpoints")


async def test_sheddable_request_is_429_when_saturated_but_critical_is_served() -> None:
    director, datastore = _director()
    datastore.set_objectives({"batch": -1, "chat": 10})
    for ep in datastore.endpoints():
        ep.metrics = EndpointMetrics(waiting=50, kv_usage=0.95, updated_at=time.monotonic())
    with pytest.raises(EppError) as caught:
        await schedule(director, inference_request(objective="batch"))
    assert (caught.value.status, caught.value.reason) == (429, "rejected-saturated")
    assert (await schedule(director, inference_request(objective="chat"))).endpoints
    assert (await schedule(director, inference_request(objective="unknown"))).endpoints  # priority 0


async def test_filters_removing_everything_is_429() -> None:
    director, _ = _director(HEADER + "plugins: [{type: prefill-filter}]\n", labels=[{}, {}, {}])
    with pytest.raises(EppError) as caught:
        await schedule(director, inference_request())
    assert caught.value.status == 429


async def test_failing_or_stale_endpoint_is_not_picked_but_all_failing_fails_open() -> None:
    director, datastore = _director(LOAD_ONLY)
    eps = datastore.endpoints()
    eps[0].scrape_failures = 3
    eps[1].metrics = EndpointMetrics(updated_at=time.monotonic() - 60)  # stale
    picked = {(await schedule(director, inference_request())).endpoints[0] for _ in range(20)}
    assert picked == {eps[2].hostport}
    eps[2].scrape_failures = 1
    eps[1].scrape_failures = 1
    decision = await schedule(director, inference_request())
    assert decision.endpoints[0] in {e.hostport for e in eps}


async def test_in_flight_counts_are_exact_and_follow_the_served_endpoint() -> None:
    director, datastore = _director(LOAD_ONLY)
    requests = [inference_request() for _ in range(6)]
    for request in requests:
        await schedule(director, request)
    # load-aware scoring spreads six requests 2/2/2 across three idle pods
    assert sorted(e.in_flight for e in datastore.endpoints()) == [2, 2, 2]
    first = requests[0]
    decision_target = director._flights[first.request_id].endpoint
    other = next(e for e in datastore.endpoints() if e is not decision_target)
    director.handle_response_headers(first, other.hostport, 200)  # Envoy used a fallback
    assert director._flights[first.request_id].endpoint is other
    assert decision_target.in_flight == 1 and other.in_flight == 3
    for request in requests:
        director.handle_response_complete(request, Usage(prompt_tokens=3), failed=False)
    director.handle_response_complete(requests[0], None, failed=True)  # a duplicate is harmless
    assert [e.in_flight for e in datastore.endpoints()] == [0, 0, 0]
    assert director.in_flight() == 0


async def test_pd_decision_counts_tokens_not_cached_on_the_chosen_decode_pod() -> None:
    roles = [{"llm-d.ai/role": "prefill"}, {"llm-d.ai/role": "decode"}, {"llm-d.ai/role": "decode"}]
    director, datastore = _director(PD_SAMPLE, labels=roles)
    prefill = datastore.endpoints()[0]
    # 1024 bytes ≈ 256 tokens = exactly 4 blocks of 64 tokens, so all of it can be cached.
    prompt = ("You are a helpful assistant. " * 40)[:1024]

    first = await schedule(director, inference_request(prompt))
    assert first.endpoints[0] != prefill.hostport
    assert first.headers == {"x-prefiller-host-port": prefill.hostport}

    decode = next(e for e in datastore.endpoints() if e.hostport == first.endpoints[0])
    assert (prefill.in_flight, decode.in_flight) == (1, 1)  # the prefill pick holds a count too

    # Same prompt plus a few tokens: the decode pod now holds the prefix, fewer than 16 tokens
    # are uncached, so the request stays on decode (prefix affinity keeps it on the same pod).
    again = await schedule(director, inference_request(prompt + "Hi!"))
    assert again.endpoints == first.endpoints
    assert again.headers == {}

    # A long new suffix is again worth a remote prefill.
    longer = await schedule(director, inference_request(prompt + "Summarise this. " * 30))
    assert longer.headers == {"x-prefiller-host-port": prefill.hostport}


async def test_pd_short_prompt_is_decode_only() -> None:
    roles = [{"llm-d.ai/role": "prefill"}, {"llm-d.ai/role": "decode"}]
    director, _ = _director(PD_SAMPLE, count=2, labels=roles)
    decision = await schedule(director, inference_request("tiny"))
    assert decision.headers == {}


async def test_prefix_affinity_and_fallback_list() -> None:
    config = (
        HEADER
        + """
plugins:
- type: prefix-cache-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 3}
"""
    )
    director, _ = _director(config, count=4)
    prompt = "shared context " * 100
    first = await schedule(director, inference_request(prompt + "question one"))
    assert len(first.endpoints) == 3 and len(set(first.endpoints)) == 3
    for question in ("two", "three", "four"):
        decision = await schedule(director, inference_request(prompt + question))
        assert decision.endpoints[0] == first.endpoints[0]


async def test_deprecated_pd_profile_handler_threshold_in_uncached_bytes() -> None:
    # PD_LEGACY: threshold 100, prefix blocks of 64 characters

    roles = [{"llm-d.ai/role": "prefill"}, {"llm-d.ai/role": "decode"}]
    director, datastore = _director(PD_LEGACY, count=2, labels=roles)
    prefill = datastore.endpoints()[0]
    prompt = "x" * 1024  # 16 blocks of 64 characters: all cacheable
    assert (await schedule(director, inference_request(prompt))).headers == {
        "x-prefiller-host-port": prefill.hostport
    }
    # Cached on the decode pod now: only 10 bytes are not, fewer than the threshold of 100.
    assert (await schedule(director, inference_request(prompt + "y" * 10))).headers == {}
    assert (await schedule(director, inference_request("z" * 600))).headers  # 600 new bytes

    # threshold 0 skips the check upstream: every request is disaggregated.
    always = PD_LEGACY.replace("threshold: 100", "threshold: 0")
    director, _ = _director(always, count=2, labels=roles)
    assert (await schedule(director, inference_request("w"))).headers == {
        "x-prefiller-host-port": prefill.hostport
    }


async def test_pd_profile_handler_with_decider_and_primary_port() -> None:
    config = (
        HEADER
        + """
plugins:
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 8}
- type: pd-profile-handler
  parameters: {deciderPluginName: prefix-based-pd-decider, primaryPort: 8200}
- type: prefill-header-handler
- type: prefill-filter
- type: decode-filter
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}]}
- {name: decode, plugins: [{pluginRef: decode-filter}]}
"""
    )
    roles = [{"llm-d.ai/role": "prefill"}, {"llm-d.ai/role": "decode"}]
    director, datastore = _director(config, count=2, labels=roles)
    prefill, decode = datastore.endpoints()
    decision = await schedule(director, inference_request("a" * 400))  # 100 tokens, none cached
    assert decision.endpoints == (f"{decode.address}:8200",)
    assert decision.headers == {
        "x-prefiller-host-port": prefill.hostport,
        "x-data-parallel-host-port": decode.hostport,
    }
    assert decode.in_flight == 1  # bookkeeping stays on the picked endpoint
    short = await schedule(director, inference_request("tiny"))
    assert short.headers == {"x-data-parallel-host-port": decode.hostport}


async def test_scheduling_metrics_are_recorded() -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    director, _ = _director(served=frozenset({"m"}))
    decisions_before = sample("epp_scheduler_decision_duration_seconds_count")
    rejected_before = sample("epp_scheduler_rejections_total", {"status": "404", "reason": ""})
    decision = await schedule(director, inference_request())
    with pytest.raises(EppError):
        await schedule(director, inference_request(model="nope"))
    assert sample("epp_scheduler_decision_duration_seconds_count") == decisions_before + 1
    assert sample("epp_scheduler_rejections_total", {"status": "404", "reason": ""}) == rejected_before + 1
    picks = sample("epp_scheduler_picks_total", {"endpoint": decision.endpoints[0], "profile": "default"})
    assert picks >= 1


async def test_pick_series_of_departed_endpoints_are_dropped() -> None:
    from prometheus_client import REGISTRY

    director, datastore = _director(count=2)
    decision = await schedule(director, inference_request())
    labels = {"endpoint": decision.endpoints[0], "profile": "default"}
    assert REGISTRY.get_sample_value("epp_scheduler_picks_total", labels) is not None
    datastore.replace_endpoints([])
    assert REGISTRY.get_sample_value("epp_scheduler_picks_total", labels) is None


async def test_model_rewrite_header_and_rules() -> None:
    import json
    import random

    from epp.datastore import RewriteTarget

    director, datastore = _director(served=frozenset({"llama-v2", "llama-v3", "direct"}))
    request = inference_request(model="llama")
    request.headers = {"x-llm-d-model-name-rewrite": "direct"}
    decision = await schedule(director, request)
    assert decision.target_model == "direct"
    assert decision.body is not None and json.loads(decision.body) == {"model": "direct", "prompt": "hello"}

    # An InferenceModelRewrite rule for the incoming model overrides the header, by weight.
    datastore.set_model_rewrites({"llama": [RewriteTarget("llama-v2", 3), RewriteTarget("llama-v3", 1)]})
    director._rng = random.Random(5)
    chosen = []
    for _ in range(400):
        request = inference_request(model="llama")
        request.headers = {"x-gateway-model-name-rewrite": "direct"}
        chosen.append((await schedule(director, request)).target_model)
        director.handle_response_complete(request, None, failed=False)
    assert set(chosen) == {"llama-v2", "llama-v3"}
    assert 0.65 < chosen.count("llama-v2") / 400 < 0.85  # expected 0.75

    # No rewrite: the body is passed through untouched.
    plain = await schedule(director, inference_request(model="direct"))
    assert plain.body is None and plain.target_model is None

    # The served-models check applies to the model the pods will see.
    with pytest.raises(EppError) as caught:
        await schedule(director, inference_request(model="llama-v9"))
    assert caught.value.status == 404


def test_rewrite_choice_semantics() -> None:
    import random

    from epp.datastore import RewriteTarget
    from epp.director import choose_rewrite

    rng = random.Random(1)
    unweighted = [RewriteTarget("a"), RewriteTarget("b")]
    assert {choose_rewrite(unweighted, rng) for _ in range(100)} == {"a", "b"}  # uniform
    mixed = [RewriteTarget("a", 5), RewriteTarget("b")]
    assert {choose_rewrite(mixed, rng) for _ in range(100)} == {"a"}  # unweighted never chosen


async def test_prefix_index_update_runs_after_the_decision_is_returned() -> None:
    director, _ = _director(count=2)
    (producer,) = director.config.producers
    decision = await director.handle_request(inference_request("p" * 2000))
    assert producer.index.endpoints() == frozenset()  # not on the request's critical path
    await asyncio.sleep(0)
    assert producer.index.endpoints() == frozenset({decision.endpoints[0]})
    inline = director.decide(inference_request("q" * 2000))  # without a deferrer it runs inline
    assert producer.index.match_lengths(producer.chains.hashes("m", b"q" * 2000, 256, 2048)) == {
        inline.endpoints[0]: 7  # 2000 bytes = 7 full blocks of 256
    }


async def test_ipv6_endpoints_and_subset_hints() -> None:
    from epp.datastore import EndpointSpec

    director, datastore = _director(count=0)
    datastore.replace_endpoints(
        [EndpointSpec("v6", "fd00::1", 8000, 8000), EndpointSpec("v4", "10.0.0.1", 8000, 8000)]
    )
    decision = await schedule(director, inference_request(subset=["[fd00::1]:8000"]))
    assert decision.endpoints == ("[fd00::1]:8000",)


async def test_prefill_hold_is_released_with_the_request() -> None:
    roles = [{"llm-d.ai/role": "prefill"}, {"llm-d.ai/role": "decode"}]
    director, datastore = _director(PD_SAMPLE, count=2, labels=roles)
    request = inference_request("n" * 2000)
    decision = await schedule(director, request)
    assert decision.headers
    assert [e.in_flight for e in datastore.endpoints()] == [1, 1]
    director.handle_response_complete(request, None, failed=False)
    assert [e.in_flight for e in datastore.endpoints()] == [0, 0]


PRECISE = (
    HEADER
    + """\
plugins:
- {type: token-producer, parameters: {simulator: {}}}
- type: precise-prefix-cache-producer
  parameters: {tokenProcessorConfig: {blockSizeTokens: 4}}
- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}}
"""
)


async def test_configs_without_preparers_never_prepare() -> None:
    director, _ = _director()
    assert director.config.preparers == []

    async def forbidden(request: InferenceRequest) -> dict[str, object]:
        raise AssertionError("prepared a request without preparers")

    director.prepare = forbidden  # type: ignore[method-assign]
    await schedule(director, inference_request())


async def test_prepared_tokens_reach_the_producers() -> None:
    director, datastore = _director(PRECISE)
    producer = director.config.plugins["precise-prefix-cache-producer"]
    holder = datastore.endpoints()[1]
    prompt = "abcd" * 40  # 40 simulator tokens, 10 blocks of 4
    request = inference_request(prompt)
    prepared = await director.prepare(request)
    tokens = prepared["token-producer"].token_ids
    producer.index.store(holder.hostport, producer.hasher.block_keys(tokens))  # type: ignore[attr-defined]
    decision = await schedule(director, request)
    assert decision.endpoints[0] == holder.hostport


async def test_a_failing_preparer_is_counted_and_the_request_still_scheduled() -> None:
    director, _ = _director(PRECISE)
    token_producer = director.config.preparers[0]

    async def broken(request: object) -> None:
        raise RuntimeError("tokenizer exploded")

    token_producer.prepare = broken  # type: ignore[method-assign]
    before = REGISTRY.get_sample_value("epp_scheduler_prepare_failures_total", {"plugin": "token-producer"})
    decision = await schedule(director, inference_request("abcd" * 40))
    assert decision.endpoints
    after = REGISTRY.get_sample_value("epp_scheduler_prepare_failures_total", {"plugin": "token-producer"})
    assert (after or 0) == (before or 0) + 1
