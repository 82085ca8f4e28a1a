"""Prefix hashing (property tests), the LRU index, the producer and the prefix-cache scorer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datastore import EndpointMetrics
from epp.plugins.prefix import (
    ApproxPrefixCacheProducer,
    ChainCache,
    PrefixIndex,
    PrefixMatch,
    block_hashes,
    estimate_tokens,
)
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import ProfileResult, SchedulingResult
from epp.scheduling.registry import create
from tests.support.epp import endpoint, scheduling_request

prompts = st.binary(max_size=2000)
block_sizes = st.integers(min_value=1, max_value=64)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(prompts, prompts, block_sizes)
def test_extended_prompt_shares_every_full_block_hash(base: bytes, extra: bytes, block: int) -> None:
    short = block_hashes("m", base, block, 10_000)
    long = block_hashes("m", base + extra, block, 10_000)
    assert long[: len(short)] == short
    assert len(short) == len(base) // block  # a short trailing block is not hashed


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(prompts, block_sizes)
def test_hashing_is_deterministic(prompt: bytes, block: int) -> None:
    assert block_hashes("m", prompt, block, 10_000) == block_hashes("m", prompt, block, 10_000)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(st.binary(min_size=8, max_size=400), st.integers(min_value=0, max_value=399))
def test_changing_a_byte_changes_that_block_and_every_later_hash(prompt: bytes, position: int) -> None:
    position %= len(prompt)
    flipped = bytearray(prompt)
    flipped[position] ^= 0xFF
    a, b = block_hashes("m", prompt, 4, 10_000), block_hashes("m", bytes(flipped), 4, 10_000)
    first_changed = position // 4
    assert a[:first_changed] == b[:first_changed]
    assert all(x != y for x, y in zip(a[first_changed:], b[first_changed:], strict=True))


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(st.binary(min_size=4, max_size=400))
def test_model_and_salt_separate_the_hash_space(prompt: bytes) -> None:
    base = block_hashes("m", prompt, 4, 100)
    assert set(base).isdisjoint(block_hashes("other", prompt, 4, 100))
    assert set(base).isdisjoint(block_hashes("m", prompt, 4, 100, salt="tenant-a"))


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(prompts, st.integers(min_value=0, max_value=50))
def test_max_blocks_caps_the_hash_list(prompt: bytes, cap: int) -> None:
    assert len(block_hashes("m", prompt, 4, cap)) == min(cap, len(prompt) // 4)


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=0, max_size=300),
    st.lists(st.tuples(st.integers(0, 300), st.binary(max_size=200)), min_size=1, max_size=8),
)
def test_chain_cache_gives_exactly_the_from_scratch_hashes(
    shared: bytes, variants: list[tuple[int, bytes]]
) -> None:
    """Prompts that share (parts of) a prefix, hashed through the cache in sequence, get the same
    hashes as hashing each from scratch, wherever the shared part ends relative to blocks."""
    cache = ChainCache(entries=4)
    cache.MIN_BLOCKS = 1
    for cut, tail in variants:
        prompt = shared[:cut] + tail
        assert cache.hashes("m", prompt, 4, 60) == block_hashes("m", prompt, 4, 60)
        assert cache.hashes("m", prompt, 4, 60, salt="s") == block_hashes("m", prompt, 4, 60, salt="s")


def test_chain_cache_memory_is_bounded() -> None:
    cache = ChainCache(entries=100, max_bytes=1000)
    cache.MIN_BLOCKS = 1
    for i in range(50):
        cache.hashes("m", bytes([i]) * 300, 4, 1000)  # distinct first blocks: one entry each
    assert cache.cached_bytes <= 1000
    cache.hashes("m", b"z" * 5000, 4, 1000)  # larger than the budget: hashed, not kept
    assert cache.cached_bytes <= 1000


def test_token_estimate_is_four_bytes_per_token() -> None:
    assert [estimate_tokens(b"x" * n) for n in (0, 1, 4, 5, 4000)] == [0, 1, 1, 2, 1000]


def test_index_match_lengths_are_longest_consecutive_prefix() -> None:
    index = PrefixIndex(100)
    index.add("a", [1, 2, 3, 4])
    index.add("b", [1, 2])
    index.add("c", [2, 3])  # holds later blocks but not block 0: no prefix match
    assert index.match_lengths([1, 2, 3, 4, 5]) == {"a": 4, "b": 2}
    assert index.match_lengths([9, 1]) == {}
    assert index.match_lengths([]) == {}


def _chained(blocks: list[int]) -> list[int]:
    """Block hashes as the prefix plugin makes them: each one covers its block and every block
    before it, so one hash never stands at two depths (chains share hashes only on common prefixes)."""
    return [hash(tuple(blocks[: depth + 1])) for depth in range(len(blocks))]


# Small block contents so that generated prompts share prefixes often.
chains = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12).map(_chained), min_size=1, max_size=4)


@settings(max_examples=80, deadline=None)
@given(
    chains,
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3), st.integers(1, 12)), max_size=20),
    st.integers(0, 3),
    st.integers(1, 12),
    st.integers(2, 30),
)
def test_index_matches_a_brute_force_lru_model(
    chain_pool: list[list[int]],
    additions: list[tuple[str, int, int]],
    query_chain: int,
    query_length: int,
    capacity: int,
) -> None:
    """Requests add whole chains (prefixes of prompts); under LRU eviction the binary-searched
    match depth equals the brute-force longest held prefix."""
    index = PrefixIndex(capacity)
    model: dict[str, list[int]] = {}  # pod -> hashes, least recently used first
    for pod, chain_index, length in additions:
        chain = chain_pool[chain_index % len(chain_pool)][:length]
        index.add(pod, chain)
        lru = model.setdefault(pod, [])
        for block in reversed(chain):
            if block in lru:
                lru.remove(block)
            lru.append(block)
        del lru[: max(0, len(lru) - capacity)]
    query = chain_pool[query_chain % len(chain_pool)][:query_length]
    expected = {}
    for pod, held in model.items():
        depth = 0
        while depth < len(query) and query[depth] in held:
            depth += 1
        if depth:
            expected[pod] = depth
    assert index.match_lengths(query) == expected


def test_index_lru_evicts_chain_tails_first_and_cleans_up() -> None:
    index = PrefixIndex(3)
    index.add("a", [1, 2, 3])  # touched 3, 2, 1: block 1 (the chain head) is the most recent
    index.add("a", [4])  # evicts the least recent block: 3, the tail of the first chain
    assert index.size("a") == 3
    assert index.match_lengths([1, 2, 3]) == {"a": 2}
    assert index.match_lengths([4]) == {"a": 1}
    index.add("b", [1, 2], capacity=1)  # a per-call capacity (auto-tuned) applies to that endpoint
    assert index.size("b") == 1 and index.match_lengths([1, 2]) == {"a": 2, "b": 1}
    index.remove_endpoint("a")
    assert index.match_lengths([1, 2]) == {"b": 1} and index.endpoints() == frozenset({"b"})


def _producer(**params: object) -> ApproxPrefixCacheProducer:
    producer = create("approx-prefix-cache-producer", "approx-prefix-cache-producer", params)
    assert isinstance(producer, ApproxPrefixCacheProducer)
    return producer


def test_block_size_is_clamped_to_64_tokens_and_legacy_size_is_in_characters() -> None:
    assert _producer().block_bytes == 64 * 4
    assert _producer(blockSizeTokens=128).block_bytes == 128 * 4
    assert _producer(hashBlockSize=64).block_bytes == 64
    assert _producer(maxPrefixTokensToMatch=1000, blockSizeTokens=100).max_blocks == 10


def test_max_prefix_tokens_takes_precedence_as_in_llm_d() -> None:
    """llm-d-router's resolveMaxBlocks: maxPrefixTokensToMatch (default 131072) wins whenever it
    is > 0; maxPrefixBlocksToMatch applies only with maxPrefixTokensToMatch: 0, where 0 blocks is
    no limit. GIE's legacy hashBlockSize keeps its block cap."""
    assert _producer().max_blocks == 131072 // 64
    assert _producer(maxPrefixBlocksToMatch=256).max_blocks == 131072 // 64
    assert _producer(maxPrefixTokensToMatch=0, maxPrefixBlocksToMatch=256).max_blocks == 256
    assert _producer(maxPrefixTokensToMatch=0, maxPrefixBlocksToMatch=0).max_blocks >= 2**62
    assert _producer(hashBlockSize=64, maxPrefixBlocksToMatch=256).max_blocks == 256


def test_auto_tune_hashes_in_the_servers_kv_block_size() -> None:
    """llm-d-router approximateprefix GetBlockSize: with autoTune the servers' reported block size
    (at least 64 tokens) is the hash block; the token cap is divided by it (resolveMaxBlocks)."""
    served = endpoint("a")
    served.metrics = EndpointMetrics(block_size=128, num_gpu_blocks=10, updated_at=1.0)
    prompt = "y" * 4096  # 1024 tokens: 8 blocks of 128, 16 of 64
    for params, pool, tokens, blocks in (
        ({}, [endpoint("new"), served], 128, 8),
        ({}, [endpoint("new")], 64, 16),  # nothing reported yet: the configured size
        ({"autoTune": False}, [served], 64, 16),
        ({"maxPrefixTokensToMatch": 512}, [served], 128, 4),
    ):
        producer = _producer(**params)
        request = scheduling_request(prompt)
        producer.produce(request, pool)
        match = request.state[producer.name]
        assert (match.block_tokens, match.block_bytes, len(match.hashes)) == (tokens, tokens * 4, blocks)
    small = endpoint("s")
    small.metrics = EndpointMetrics(block_size=16, updated_at=1.0)
    producer = _producer()
    request = scheduling_request(prompt)
    producer.produce(request, [small])
    assert request.state[producer.name].block_tokens == 64  # clamped, as upstream


def test_producer_scorer_and_pre_request_make_prefixes_stick() -> None:
    producer = _producer(hashBlockSize=8)
    scorer = create("prefix-cache-scorer", "prefix-cache-scorer", None)
    scorer.resolve({producer.name: producer})
    pool = [endpoint("a"), endpoint("b")]
    prompt = "system prompt shared by everyone. " * 4  # 136 bytes → 17 blocks of 8

    first = scheduling_request(prompt)
    producer.produce(first, pool)
    assert scorer.score(first, pool) == [0.0, 0.0]  # nothing cached yet
    producer.pre_request(first, SchedulingResult({"default": ProfileResult((pool[1],), (1.0,))}, "default"))

    follow_up = scheduling_request(prompt + "and a new question")
    producer.produce(follow_up, pool)
    match: PrefixMatch = follow_up.state[producer.name]
    assert match.matched_blocks == {pool[1].hostport: 17}
    scores = scorer.score(follow_up, pool)
    assert scores[0] == 0.0 and scores[1] == pytest.approx(17 / len(match.hashes))
    assert match.cached_tokens(pool[1].hostport) == 17 * 2  # 8-byte blocks ≈ 2 tokens
    assert match.cached_tokens(pool[0].hostport) == 0


def test_scorer_blends_match_length_as_llm_d_does() -> None:
    """llm-d-router's prefix-cache-scorer takes matchLengthWeight (w) and matchLengthScaleTokens:
    score = w x min(1, matched tokens / scale)^2 + (1 - w) x matched / total blocks."""
    pool = [endpoint("long"), endpoint("short"), endpoint("none")]
    scorer = create("prefix-cache-scorer", "s", {"matchLengthWeight": 0.5, "matchLengthScaleTokens": 1000})
    producer = _producer()
    scorer.resolve({producer.name: producer})
    request = scheduling_request()
    request.state[producer.name] = PrefixMatch(
        hashes=[0] * 20,
        block_tokens=64,
        prompt_tokens=1280,
        matched_blocks={pool[0].hostport: 20, pool[1].hostport: 5},
    )
    # long: 1280 tokens cached, capped at 1 → 0.5 x 1 + 0.5 x 1; short: 320 tokens → 0.5 x 0.1024 + 0.5 x 0.25
    assert scorer.score(request, pool) == pytest.approx([1.0, 0.0512 + 0.125, 0.0])
    assert create("prefix-cache-scorer", "d", None).match_length_weight == 0.0  # off by default


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"matchLengthWeight": 1.5}, "'matchLengthWeight' must be <= 1.0"),
        ({"matchLengthWeight": -0.1}, "'matchLengthWeight' must be >= 0.0"),
        ({"matchLengthWeight": 0.3, "matchLengthScaleTokens": 0}, "must be > 0 when matchLengthWeight"),
    ],
)
def test_scorer_match_length_parameters_are_checked(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create("prefix-cache-scorer", "s", params)
    assert message in str(caught.value)
    create("prefix-cache-scorer", "s", {"matchLengthScaleTokens": 0})  # unused without a weight


def test_pre_request_indexes_prefill_and_decode_targets_and_autotunes_capacity() -> None:
    producer = _producer(hashBlockSize=4)
    decode, prefill = endpoint("d"), endpoint("p")
    decode.metrics = EndpointMetrics(block_size=16, num_gpu_blocks=1, updated_at=1.0)  # 16 tokens ≈ 16 blocks
    request = scheduling_request("x" * 400)
    producer.produce(request, [decode, prefill])
    producer.pre_request(
        request,
        SchedulingResult(
            {
                "decode": ProfileResult((decode,), (1.0,)),
                "prefill": ProfileResult((prefill,), (1.0,)),
            },
            "decode",
        ),
    )
    assert producer.index.size(prefill.hostport) == 100
    assert producer.index.size(decode.hostport) == 16  # num_gpu_blocks x block_size / tokens per block


def test_endpoints_leaving_are_dropped_from_the_index() -> None:
    producer = _producer(hashBlockSize=4)
    a, b = endpoint("a"), endpoint("b")
    request = scheduling_request("y" * 40)
    producer.produce(request, [a, b])
    producer.pre_request(request, SchedulingResult({"default": ProfileResult((a,), (1.0,))}, "default"))
    producer.endpoints_changed(frozenset({b.hostport}))
    assert producer.index.endpoints() == frozenset()
