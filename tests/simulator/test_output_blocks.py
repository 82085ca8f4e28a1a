"""The blocks a request's output fills join the prefix cache, as in vLLM (simulator/outputblocks.py)."""

from __future__ import annotations

import dataclasses

import xxhash

from simulator.engine import Sequence
from simulator.outputblocks import OutputBlockKeys, xxh64_chain
from simulator.tokens import block_hashes, token_ids
from tests.simulator.test_engine import PARAMS, finish, running


def with_output_keys(text: str, max_tokens: int, block_size: int = 16) -> Sequence:
    hashes = block_hashes(text, block_size)
    parent = hashes[-1] if hashes else None
    seed = parent if parent is not None else xxhash.xxh64_intdigest(b"")
    tail = token_ids(text[len(hashes) * block_size * 4 :])
    return Sequence(
        request_id=text[:8],
        prompt_tokens=len(token_ids(text)),
        hashes=hashes,
        max_tokens=max_tokens,
        output_keys=OutputBlockKeys(block_size, tail, lambda i: 1000 + i, xxh64_chain(seed), parent),
    )


async def test_generated_tokens_fill_cached_blocks() -> None:
    async with running(PARAMS) as engine:
        seq = with_output_keys("p" * 160, max_tokens=30)  # 40 prompt tokens: 2 full blocks
        await finish(engine, seq)
        # 70 tokens, the last one never computed: 69 // 16 = 4 full blocks, 2 of them past the prompt.
        assert len(seq.output_hashes) == 2
        keys = seq.hashes + seq.output_hashes
        assert all(engine.pool.contains(k) for k in keys)
        assert engine.pool.blocks_in_use == 0 and len(engine.pool._evictable) == 4


async def test_a_sequence_that_cannot_name_them_keeps_them_private() -> None:
    async with running(PARAMS) as engine:
        seq = with_output_keys("p" * 160, max_tokens=30)
        seq.output_keys = None
        await finish(engine, seq)
        assert len(engine.pool._evictable) == 2  # the prompt's blocks only


async def test_a_prompt_of_whole_blocks_caches_its_last_block_at_prefill() -> None:
    # vLLM caches up to request.num_tokens after the prefill step; only matching stops one token
    # short (the last token is always computed).
    async with running(PARAMS) as engine:
        seq = with_output_keys("w" * 128, max_tokens=1)  # 32 tokens: exactly 2 blocks
        await finish(engine, seq)
        assert seq.output_hashes == [] and all(engine.pool.contains(k) for k in seq.hashes)
        again = with_output_keys("w" * 128, max_tokens=1)
        await finish(engine, again)
        assert again.cached_tokens == 16  # the hit still leaves the last block to compute


async def test_output_blocks_are_evicted_before_their_prompt() -> None:
    # Freed tail first (vLLM frees a request's blocks in reverse), so under pressure a finished
    # request's generated blocks go before its prompt's, and its prefix stays matchable longest.
    params = dataclasses.replace(PARAMS, kv_cache_tokens=16 * 8)
    async with running(params) as engine:
        first = with_output_keys("a" * 128, max_tokens=40)  # 2 prompt blocks + 2 output blocks
        await finish(engine, first)
        assert len(engine.pool._evictable) == 4
        second = with_output_keys("b" * 256, max_tokens=1)  # needs 5 blocks: 4 empty + 1 evicted
        await finish(engine, second)
        assert not engine.pool.contains(first.output_hashes[1])  # the newest block, freed first
        assert all(engine.pool.contains(k) for k in [*first.hashes, first.output_hashes[0]])
