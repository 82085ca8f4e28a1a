"""precise-prefix-cache-producer: llm-d's parameters read strictly, block keys from prepared token ids,
the PrefixMatch that prefix-cache-scorer and the P/D decider read (media weights, LoRA, cache salt,
speculative entries), and the whole path with real ZMQ: endpoint-notification-source → per-pod
subscriptions → events → index → the director routes to the pod that holds the prefix."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import yaml
import zmq.asyncio

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics, EndpointSpec
from epp.director import SchedulingDirector
from epp.kvevents import simulator_tokens
from epp.kvevents.hashing import BlockHasher
from epp.kvevents.publisher import KVEventPublisher
from epp.kvevents.wire import BlockRemoved, BlockStored, EventBatch
from epp.plugins.datalayer import EndpointNotificationSource
from epp.plugins.precise import SPECULATIVE_MEDIUM, PrecisePrefixCacheProducer
from epp.plugins.prefix import PrefixCacheScorer, PrefixMatch
from epp.plugins.tokens import TokenizedPrompt
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import EndpointEvent, ProfileResult, SchedulingRequest, SchedulingResult
from epp.types import InferenceRequest, ParsedBody
from localrun import free_port_block
from tests.support.epp import endpoint

BLOCK = 4
SEED = "42"
ALGO = "sha256_cbor"
TIMEOUT = 15.0


def config(
    producer_params: dict[str, Any] | None = None,
    *,
    token_params: dict[str, Any] | None = None,
    wired: bool = True,
    extra_plugins: list[dict[str, Any]] | None = None,
) -> str:
    params = {
        "tokenProcessorConfig": {"blockSizeTokens": BLOCK, "hashSeed": SEED, "hashAlgorithm": ALGO},
        "kvEventsConfig": {"podDiscoveryConfig": {"socketPort": 5557}},
    }
    params.update(producer_params or {})
    sources: list[dict[str, Any]] = [
        {"pluginRef": "metrics-data-source", "extractors": [{"pluginRef": "core-metrics-extractor"}]}
    ]
    if wired:
        sources.append(
            {
                "pluginRef": "endpoint-notification-source",
                "extractors": [{"pluginRef": "precise-prefix-cache-producer"}],
            }
        )
    document = {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            # Listed before its token producer on purpose: the loader orders producers by data keys.
            {"type": "precise-prefix-cache-producer", "parameters": params},
            {"type": "token-producer", "parameters": token_params or {"simulator": {}}},
            {"type": "endpoint-notification-source"},
            {
                "type": "prefix-cache-scorer",
                "parameters": {"prefixMatchInfoProducerName": "precise-prefix-cache-producer"},
            },
            {"type": "max-score-picker"},
            {"type": "metrics-data-source"},
            {"type": "core-metrics-extractor"},
            *(extra_plugins or []),
        ],
        "dataLayer": {"sources": sources},
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "prefix-cache-scorer", "weight": 1},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
    }
    return yaml.safe_dump(document)


def producer_of(text: str) -> PrecisePrefixCacheProducer:
    plugin = load_config(text).plugins["precise-prefix-cache-producer"]
    assert isinstance(plugin, PrecisePrefixCacheProducer)
    return plugin


def keys(text: str, *, lora: tuple[str, str] | None = None, salt: str | None = None) -> list[int]:
    return BlockHasher(ALGO, BLOCK, SEED).block_keys(
        simulator_tokens.token_ids(text), lora=lora, cache_salt=salt
    )


def prepared(text: str, *, lora: str | None = None, salt: str | None = None) -> SchedulingRequest:
    request = SchedulingRequest("r", "m", text, {}, lora_adapter=lora, body={"prompt": text})
    request.state["token-producer"] = TokenizedPrompt(simulator_tokens.token_ids(text), True, "simulator")
    if salt is not None:
        request.state["cache_salt"] = salt
    return request


PROMPT = "the quick brown fox jumps over the lazy dog " * 4  # 176 characters: 44 tokens, 11 blocks


# ---- configuration ---------------------------------------------------------------------------------


def test_llm_d_parameters_load() -> None:
    plugin = producer_of(
        config(
            {
                "tokenProcessorConfig": {"blockSize": 8, "hashSeed": 42, "hashAlgorithm": "xxhash_cbor"},
                "indexerConfig": {
                    "kvBlockIndexConfig": {
                        "inMemoryConfig": {"size": 1000, "podCacheSize": 5},
                        "enableMetrics": True,
                        "metricsLoggingInterval": "30s",
                    },
                    "kvCacheBackendConfigs": [{"name": "GPU", "weight": 1}, {"name": "cpu", "weight": 0.5}],
                },
                "kvEventsConfig": {
                    "topicFilter": "kv@",
                    "concurrency": 8,
                    "engineType": "vllm",
                    "discoverPods": True,
                    "podDiscoveryConfig": {
                        "socketPort": 6000,
                        "replaySocketPort": 6001,
                        "podLabelSelector": "",
                        "podNamespace": "ns",
                    },
                },
                "speculativeIndexing": True,
                "speculativeTTL": "500ms",
                "loraAdapterPaths": {"sql": "/adapters/sql"},
            }
        )
    )
    assert (plugin.hasher.algorithm, plugin.hasher.block_size, plugin.hasher.seed) == ("xxhash_cbor", 8, "42")
    assert plugin.index.max_entries == 1000
    assert plugin.medium_weights == {"gpu": 1.0, "cpu": 0.5}
    assert (plugin.socket_port, plugin.replay_port, plugin.topic_filter) == (6000, 6001, "kv@")
    assert (plugin.speculative, plugin.speculative_ttl) == (True, 0.5)
    assert plugin.lora_paths == {"sql": "/adapters/sql"}


def test_defaults_are_vllms() -> None:
    text = config({"tokenProcessorConfig": {}, "kvEventsConfig": {}})
    plugin = producer_of(text)
    assert (plugin.hasher.algorithm, plugin.hasher.block_size, plugin.hasher.seed) == (
        "sha256",
        16,
        "vllm-none-hash",
    )
    assert (plugin.socket_port, plugin.replay_port, plugin.speculative) == (5557, None, False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"tokenProcessorConfig": {"hashAlgorithm": "cbor-fnv"}},
            "'tokenProcessorConfig.hashAlgorithm' 'cbor-fnv' is llm-d's own",
        ),
        (
            {"tokenProcessorConfig": {"hashAlgorithm": "md5"}},
            "'tokenProcessorConfig.hashAlgorithm' must be one of",
        ),
        (
            {"tokenProcessorConfig": {"hashAlgorithm": "xxhash"}},
            "'tokenProcessorConfig.hashSeed' xxhash needs the pods' PYTHONHASHSEED",
        ),
        ({"tokenProcessorConfig": {"hashseed": "1"}}, "unknown parameter(s) 'tokenProcessorConfig.hashseed'"),
        (
            {"kvEventsConfig": {"zmqEndpoint": "tcp://*:5557"}},
            "'kvEventsConfig.zmqEndpoint' (centralized mode)",
        ),
        ({"kvEventsConfig": {"engineType": "sglang"}}, "'kvEventsConfig.engineType' must be one of vllm"),
        ({"kvEventsConfig": {"discoverPods": False}}, "'kvEventsConfig.discoverPods' false leaves nothing"),
        (
            {"kvEventsConfig": {"podDiscoveryConfig": {"socketPort": 0}}},
            "'kvEventsConfig.podDiscoveryConfig.socketPort' must be >= 1",
        ),
        (
            {"indexerConfig": {"kvBlockIndexConfig": {"redisConfig": {"address": "r:6379"}}}},
            "'indexerConfig.kvBlockIndexConfig.redisConfig' is not supported",
        ),
        (
            {"indexerConfig": {"tokenizersPoolConfig": {}}},
            "'indexerConfig.tokenizersPoolConfig' is not supported",
        ),
        (
            {"indexerConfig": {"kvCacheBackendConfigs": [{"name": "gpu"}]}},
            "'indexerConfig.kvCacheBackendConfigs[0]' must be",
        ),
        ({"loraAdapterPaths": {"sql": 3}}, "'loraAdapterPaths' maps 'sql' to 3"),
    ],
)
def test_bad_parameters_name_the_key(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        producer_of(config(params))
    assert message in str(error.value)


def test_byte_estimates_are_refused() -> None:
    with pytest.raises(ConfigError, match="uses the estimate backend"):
        load_config(config(token_params={"estimate": {}}))


def test_without_a_token_producer_the_default_estimate_one_is_added_and_refused() -> None:
    text = config().replace("- parameters:\n    simulator: {}\n  type: token-producer\n", "")
    assert "token-producer" not in text
    with pytest.raises(ConfigError, match="uses the estimate backend"):
        load_config(text)


def test_producers_run_after_the_token_producer_and_both_prepare_in_order() -> None:
    built = load_config(config())
    assert [p.type_name for p in built.producers] == ["token-producer", "precise-prefix-cache-producer"]
    assert [p.type_name for p in built.preparers] == ["token-producer"]
    assert {p.type_name for p in built.lifecycles} == {"token-producer", "precise-prefix-cache-producer"}


def test_an_unwired_extractor_is_wired_to_a_notification_source_with_a_warning() -> None:
    built = load_config(config(wired=False))
    sources = [p for p in built.plugins.values() if isinstance(p, EndpointNotificationSource)]
    assert len(sources) == 1 and sources[0].extractors == [built.plugins["precise-prefix-cache-producer"]]
    assert any("is not an extractor of any endpoint-notification-source" in w for w in built.warnings)


def test_a_notification_source_feeds_extractors_only() -> None:
    text = config().replace("pluginRef: precise-prefix-cache-producer\n", "pluginRef: max-score-picker\n", 1)
    with pytest.raises(ConfigError, match="'max-score-picker' is not an endpoint extractor"):
        load_config(text)


# ---- the request path ----------------------------------------------------------------------------


def test_match_follows_the_index_and_the_scorer_reads_it() -> None:
    built = load_config(config())
    plugin = built.plugins["precise-prefix-cache-producer"]
    scorer = built.plugins["prefix-cache-scorer"]
    assert isinstance(plugin, PrecisePrefixCacheProducer) and isinstance(scorer, PrefixCacheScorer)
    a, b, c = endpoint("a"), endpoint("b"), endpoint("c")
    prompt_keys = keys(PROMPT)
    assert len(prompt_keys) == 11
    plugin.index.store(a.hostport, prompt_keys)
    plugin.index.store(b.hostport, prompt_keys[:4])
    request = prepared(PROMPT)
    plugin.produce(request, [a, b, c])
    match = request.state["precise-prefix-cache-producer"]
    assert isinstance(match, PrefixMatch)
    assert match.matched_blocks == {a.hostport: 11, b.hostport: 4}
    assert (match.block_tokens, match.prompt_tokens) == (BLOCK, 44)
    assert match.cached_tokens(b.hostport) == 16 and match.weighted_blocks is None
    assert scorer.score(request, [a, b, c]) == [1.0, 4 / 11, 0.0]


def test_cpu_tier_blocks_weigh_less() -> None:
    plugin = producer_of(config())
    a, b = endpoint("a"), endpoint("b")
    prompt_keys = keys(PROMPT)
    plugin.index.store(a.hostport, prompt_keys, "GPU")
    plugin.index.store(b.hostport, prompt_keys, "CPU")
    request = prepared(PROMPT)
    plugin.produce(request, [a, b])
    match = request.state[plugin.name]
    assert match.matched_blocks == {a.hostport: 11, b.hostport: 11}  # cached tokens: both tiers
    assert match.weighted_blocks == {a.hostport: 11.0, b.hostport: pytest.approx(8.8)}


def test_lora_and_cache_salt_change_the_keys_as_vllm_does() -> None:
    plugin = producer_of(config({"loraAdapterPaths": {"sql": "/adapters/sql"}}))
    a = endpoint("a")
    plugin.index.store(a.hostport, keys(PROMPT, lora=("sql", "/adapters/sql"), salt="tenant-1"))
    hit = prepared(PROMPT, lora="sql", salt="tenant-1")
    plugin.produce(hit, [a])
    assert hit.state[plugin.name].matched_blocks == {a.hostport: 11}
    for miss in (prepared(PROMPT, lora="sql"), prepared(PROMPT, salt="tenant-1"), prepared(PROMPT, lora="m")):
        plugin.produce(miss, [a])
        assert miss.state[plugin.name].matched_blocks == {}


def test_an_adapter_without_a_known_path_does_not_match_the_base_models_blocks() -> None:
    """vLLM keys a LoRA request's blocks with ("lora", name, path). With no path configured for
    the adapter, the producer hashed its prompt as the base model's: a pod holding the base
    model's blocks of the prompt scored a hit it cannot serve, and speculative indexing stored the
    adapter request's blocks as base-model blocks. An adapter is known as one from the pods'
    ``vllm:lora_requests_info`` (or loraAdapterPaths); its lookups count as "unpredictable"."""
    plugin = producer_of(config({"speculativeIndexing": True}))
    base_pod = endpoint("a")
    adapter_pod = endpoint("b", running_loras=frozenset({"chat"}), max_loras=1)
    pool = [base_pod, adapter_pod]
    for target in pool:
        plugin.extract_endpoint(EndpointEvent(True, target.hostport, target.address, target.port))
    plugin.index.store(base_pod.hostport, keys(PROMPT))
    base = prepared(PROMPT, lora="m")  # the director names the base model as the adapter too
    plugin.produce(base, pool)
    assert base.state[plugin.name].matched_blocks == {base_pod.hostport: 11}
    request = prepared(PROMPT, lora="chat")
    plugin.produce(request, pool)
    assert request.state[plugin.name].matched_blocks == {}
    # Routed to b, the adapter request must not leave base-model keys there for base requests.
    routed = SchedulingResult({"default": ProfileResult((adapter_pod,), (0.0,))}, "default")
    plugin.pre_request(request, routed)
    assert plugin.index.blocks(adapter_pod.hostport, SPECULATIVE_MEDIUM) == set()
    later = prepared(PROMPT, lora="m")
    plugin.produce(later, pool)
    assert later.state[plugin.name].matched_blocks == {base_pod.hostport: 11}


def test_an_untokenized_request_matches_nothing_but_keeps_its_length_for_pd() -> None:
    plugin = producer_of(config())
    request = SchedulingRequest("r", "m", "x" * 400, {}, body={"prompt": "x" * 400})
    plugin.produce(request, [endpoint("a")])
    match = request.state[plugin.name]
    assert (match.hashes, match.matched_blocks, match.prompt_tokens) == ([], {}, 100)


def test_prefix_based_pd_decider_reads_the_precise_match() -> None:
    pd_plugins = [
        {
            "type": "prefix-based-pd-decider",
            "parameters": {
                "nonCachedTokens": 20,
                "prefixMatchInfoProducerName": "precise-prefix-cache-producer",
            },
        },
    ]
    built = load_config(config(extra_plugins=pd_plugins))
    plugin = built.plugins["precise-prefix-cache-producer"]
    decider = built.plugins["prefix-based-pd-decider"]
    assert isinstance(plugin, PrecisePrefixCacheProducer)
    warm, cold = endpoint("warm"), endpoint("cold")
    plugin.index.store(warm.hostport, keys(PROMPT)[:8])  # 32 of 44 tokens cached
    request = prepared(PROMPT)
    plugin.produce(request, [warm, cold])
    assert decider.disaggregate(request, cold) is True  # 44 uncached >= 20
    assert decider.disaggregate(request, warm) is False  # 12 uncached


def test_speculative_entries_route_a_burst_and_expire() -> None:
    plugin = producer_of(config({"speculativeIndexing": True, "speculativeTTL": "50ms"}))
    a, b = endpoint("a"), endpoint("b")
    for target in (a, b):
        plugin.extract_endpoint(EndpointEvent(True, target.hostport, target.address, target.port))
    first = prepared(PROMPT)
    plugin.produce(first, [a, b])
    plugin.pre_request(first, SchedulingResult({"default": ProfileResult((a,), (0.0,))}, "default"))
    assert plugin.index.blocks(a.hostport, SPECULATIVE_MEDIUM) == set(keys(PROMPT))
    second = prepared(PROMPT + "more")
    plugin.produce(second, [a, b])
    assert second.state[plugin.name].matched_blocks == {a.hostport: 11}
    time.sleep(0.06)
    third = prepared(PROMPT)
    plugin.produce(third, [a, b])
    assert third.state[plugin.name].matched_blocks == {}
    assert plugin.index.size == 0


# ---- endpoint notifications and real events ----------------------------------------------------------


def test_notification_source_reports_adds_removes_and_ranks() -> None:
    seen: list[EndpointEvent] = []

    class Recorder(PrecisePrefixCacheProducer):
        def extract_endpoint(self, event: EndpointEvent) -> None:
            seen.append(event)

    source = EndpointNotificationSource("src")
    source.endpoints_changed(frozenset({"10.0.0.1:8000"}))
    source.attach(Recorder.__new__(Recorder))  # attached late: still told about the pool
    assert seen == [EndpointEvent(True, "10.0.0.1:8000", "10.0.0.1", 8000, 0)]
    seen.clear()
    # A second port on the same pod is data-parallel rank 1; a pod that leaves is reported.
    source.endpoints_changed(frozenset({"10.0.0.1:8000", "10.0.0.1:8001", "[fd00::2]:8000"}))
    assert sorted(seen, key=lambda e: e.hostport) == [
        EndpointEvent(True, "10.0.0.1:8001", "10.0.0.1", 8001, 1),
        EndpointEvent(True, "[fd00::2]:8000", "fd00::2", 8000, 0),
    ]
    seen.clear()
    source.endpoints_changed(frozenset({"10.0.0.1:8001"}))
    assert sorted(seen, key=lambda e: e.hostport) == [
        EndpointEvent(False, "10.0.0.1:8000", "10.0.0.1", 8000, 0),
        EndpointEvent(True, "10.0.0.1:8001", "10.0.0.1", 8001, 0),  # now its pod's only port
        EndpointEvent(False, "[fd00::2]:8000", "fd00::2", 8000, 0),
    ]


def _free_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (distinct loopback addresses stand for pods)."""
    return free_port_block(1, hosts)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def publishers(hosts: list[str], port: int) -> AsyncIterator[list[KVEventPublisher]]:
    context = zmq.asyncio.Context()
    made = [KVEventPublisher(context, f"tcp://{host}:{port}", topic=f"kv@{host}:8000@m") for host in hosts]
    try:
        yield made
    finally:
        for publisher in made:
            await publisher.close()
        context.destroy(linger=0)


def inference_request(prompt: str, request_id: str) -> InferenceRequest:
    parsed = ParsedBody(model="m", prompt_text=prompt, stream=False, api="completions")
    return InferenceRequest(request_id, "/v1/completions", {}, {"model": "m", "prompt": prompt}, parsed)


async def test_events_over_zmq_route_requests_and_endpoint_removal_unsubscribes() -> None:
    hosts = ["127.0.0.2", "127.0.0.3"]
    port = _free_port(*hosts)
    built = load_config(config({"kvEventsConfig": {"podDiscoveryConfig": {"socketPort": port}}}))
    plugin = built.plugins["precise-prefix-cache-producer"]
    assert isinstance(plugin, PrecisePrefixCacheProducer)
    datastore = Datastore()
    director = SchedulingDirector(datastore, built)
    # The pool is known before the plugins start (static discovery loads at build time).
    datastore.replace_endpoints([EndpointSpec(f"pod-{i}", host, 8000, 8000) for i, host in enumerate(hosts)])
    for ep in datastore.endpoints():
        ep.metrics = EndpointMetrics(updated_at=time.monotonic() + 3600)
    async with publishers(hosts, port) as (first, second):
        for plugin_with_life in built.lifecycles:
            await plugin_with_life.start()
        try:
            assert plugin.subscriptions is not None
            subscribers = [plugin.subscriptions.subscriber(f"{host}:8000") for host in hosts]
            await until(
                lambda: all(s is not None and s.connected.is_set() for s in subscribers), "connections"
            )
            prompt_keys = tuple(keys(PROMPT))
            # PUB/SUB joins are asynchronous: publish until the subscriber has the batch.
            while not plugin.index.holds("127.0.0.3:8000", prompt_keys[-1]):
                tokens = tuple(simulator_tokens.token_ids(PROMPT)[: len(prompt_keys) * BLOCK])
                await second.publish(
                    EventBatch(time.time(), (BlockStored(prompt_keys, None, tokens, BLOCK),))
                )
                await asyncio.sleep(0.05)
            decision = await director.handle_request(inference_request(PROMPT + " and more", "r1"))
            assert decision.endpoints[0] == "127.0.0.3:8000"
            await second.publish(EventBatch(time.time(), (BlockRemoved(prompt_keys[1:], None),)))
            await until(lambda: plugin.index.endpoint_size("127.0.0.3:8000") == 1, "removal")
            # The pod leaves the pool: its subscription and its entries go at once.
            datastore.replace_endpoints([EndpointSpec("pod-0", hosts[0], 8000, 8000)])
            assert plugin.subscriptions.endpoints() == {"127.0.0.2:8000"}
            assert plugin.index.endpoint_size("127.0.0.3:8000") == 0
            assert first.next_seq == 0
        finally:
            for plugin_with_life in reversed(built.lifecycles):
                await plugin_with_life.stop()


async def test_speculative_entries_expire_without_requests() -> None:
    plugin = producer_of(config({"speculativeIndexing": True, "speculativeTTL": "100ms"}))
    a = endpoint("a")
    plugin.extract_endpoint(EndpointEvent(True, a.hostport, a.address, a.port))
    await plugin.start()
    try:
        request = prepared(PROMPT)
        plugin.produce(request, [a])
        plugin.pre_request(request, SchedulingResult({"default": ProfileResult((a,), (0.0,))}, "default"))
        assert plugin.index.size == 11
        await until(lambda: plugin.index.size == 0, "the sweeper to expire the speculative entries")
    finally:
        await plugin.stop()


def test_keys_are_hashed_only_as_far_as_some_pod_holds_the_prefix() -> None:
    plugin = producer_of(config())
    a = endpoint("a")
    plugin.index.store(a.hostport, keys(PROMPT)[:3])
    request = prepared(PROMPT)
    plugin.produce(request, [a])
    match = request.state[plugin.name]
    assert match.hashes == keys(PROMPT)[:4]  # three held, then the first block nobody holds
    assert (match.blocks, match.matched_blocks, match.fraction(a.hostport)) == (11, {a.hostport: 3}, 3 / 11)
    nothing = prepared("z" * 400)  # 100 tokens, 25 blocks, none held anywhere: one key computed
    plugin.produce(nothing, [a])
    assert len(nothing.state[plugin.name].hashes) == 1 and nothing.state[plugin.name].blocks == 25
