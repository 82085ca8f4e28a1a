"""The engine on a virtual clock: every figure below is exact model time, not wall time."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from simulator.engine import Engine, RequestTooLarge, Sequence
from simulator.params import SimParams
from simulator.tokens import block_hashes


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


PARAMS = SimParams(
    model="m",
    block_size=16,
    kv_cache_tokens=16 * 1000,
    max_num_seqs=4,
    max_num_batched_tokens=512,
    step_overhead_s=0.002,
    prefill_per_token_s=0.0001,
    decode_per_seq_s=0.001,
)


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    async with running(PARAMS) as eng:
        yield eng


class running:
    def __init__(self, params: SimParams) -> None:
        self.engine = Engine(params, clock=(vt := VirtualTime()).clock, sleep=vt.sleep)

    async def __aenter__(self) -> Engine:
        await self.engine.start()
        return self.engine

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()


def make_seq(text: str, max_tokens: int = 4, **kw) -> Sequence:
    return Sequence(
        request_id=text[:8],
        prompt_tokens=-(-len(text) // 4),
        hashes=block_hashes(text, 16),
        max_tokens=max_tokens,
        **kw,
    )


async def finish(engine: Engine, *seqs: Sequence) -> None:
    for seq in seqs:
        engine.submit(seq)
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in seqs)), 5)


def ttft(seq: Sequence) -> float:
    assert seq.first_token_at is not None
    return seq.first_token_at - seq.arrival


async def test_a_cached_prefix_cuts_time_to_first_token(engine):
    prompt = "system" * 666 + "abcd"  # 4000 characters = 1000 tokens = 62.5 blocks
    cold, warm = make_seq(prompt), make_seq(prompt)
    await finish(engine, cold)
    await finish(engine, warm)
    assert cold.cached_tokens == 0
    assert warm.cached_tokens == 992  # all full blocks but the one holding the last token
    assert ttft(cold) > 3 * ttft(warm)
    assert cold.generated == warm.generated == 4
    assert cold.finish_reason == "length"


async def test_time_to_first_token_grows_with_uncached_tokens(engine):
    short, long = make_seq("a" * 400), make_seq("b" * 8000)
    await finish(engine, short)
    await finish(engine, long)
    assert ttft(long) > ttft(short)
    # 1900 extra tokens at 0.1 ms each; chunking (512 per step) adds three more step overheads.
    assert ttft(long) - ttft(short) == pytest.approx(1900 * 0.0001 + 3 * 0.002, rel=0.05)


async def test_load_slows_first_token_and_decode():
    async with running(PARAMS) as alone_engine:
        alone = make_seq("q" * 400, max_tokens=20)
        await finish(alone_engine, alone)
    async with running(PARAMS) as busy_engine:
        crowd = [make_seq(f"{i}" * 400, max_tokens=20) for i in range(4)]
        await finish(busy_engine, *crowd)
    assert min(ttft(s) for s in crowd) > ttft(alone)  # batched prefill of 4 prompts in one step
    alone_itl = (alone.last_token_at - alone.first_token_at) / 19
    crowd_itl = (crowd[0].last_token_at - crowd[0].first_token_at) / 19
    assert crowd_itl > alone_itl


async def test_batch_limit_queues_the_rest(engine):
    seqs = [make_seq(f"{i}" * 100, max_tokens=50) for i in range(6)]
    for seq in seqs:
        engine.submit(seq)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(engine.running) == 4 and len(engine.waiting) == 2
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in seqs)), 5)
    assert seqs[5].admitted_at > seqs[0].admitted_at  # waited for a slot
    assert engine.pool.blocks_in_use == 0


async def test_kv_pressure_evicts_old_prefixes():
    params = SimParams(model="m", block_size=16, kv_cache_tokens=16 * 20, max_num_seqs=4)
    async with running(params) as eng:
        first, other, again = make_seq("A" * 960), make_seq("B" * 960), make_seq("A" * 960)
        await finish(eng, first)  # 15 blocks cached
        await finish(eng, other)  # needs 16 of 20 blocks: evicts most of A
        await finish(eng, again)
        assert eng.pool.evictions > 0
        assert again.cached_tokens < first.prompt_tokens - 16


async def test_preemption_when_decode_outgrows_the_cache():
    params = SimParams(model="m", block_size=16, kv_cache_tokens=16 * 8, max_num_seqs=4)
    async with running(params) as eng:
        seqs = [make_seq(f"{i}" * 60, max_tokens=40) for i in range(3)]
        await finish(eng, *seqs)
        assert all(s.generated == 40 for s in seqs)
        assert eng.pool.blocks_in_use == 0


async def test_abort_frees_the_slot_and_blocks(engine):
    seq = make_seq("z" * 400, max_tokens=1000)
    engine.submit(seq)
    for _ in range(2):  # wait for two tokens
        await asyncio.wait_for(seq.tokens.get(), 5)
    engine.abort(seq)
    await asyncio.wait_for(seq.done.wait(), 5)
    assert seq.finish_reason == "abort"
    assert engine.running == [] and engine.pool.blocks_in_use == 0


async def test_remote_prefilled_sequence_skips_prefill(engine):
    prompt = "p" * 4000  # 1000 tokens
    local, remote = make_seq(prompt), make_seq(prompt)
    remote.remote_prefilled = True
    remote.transferred_hashes = list(remote.hashes)
    await finish(engine, remote)
    assert remote.external_cached_tokens == 1000 and remote.cached_tokens == 0
    async with running(PARAMS) as fresh:
        await finish(fresh, local)
    assert ttft(remote) < ttft(local) / 3
    # The pulled blocks joined the local prefix cache.
    assert engine.pool.cached_prefix(remote.hashes) == len(remote.hashes)


async def test_held_blocks_survive_until_released(engine):
    seq = make_seq("h" * 400, max_tokens=1, hold_blocks=True)
    await finish(engine, seq)
    assert engine.pool.blocks_in_use == seq.table.size > 0
    engine.release_held(seq)
    assert engine.pool.blocks_in_use == 0


def test_a_request_larger_than_the_cache_is_refused():
    eng = Engine(SimParams(model="m", block_size=16, kv_cache_tokens=64))
    with pytest.raises(RequestTooLarge, match="needs 7 KV blocks, the cache has 4"):
        eng.submit(make_seq("x" * 400, max_tokens=1))


def test_parameters_are_validated():
    with pytest.raises(ValueError, match=r"max_num_seqs must be >= 1.*prefill_per_token_s must be >= 0"):
        SimParams(model="m", max_num_seqs=0, prefill_per_token_s=-1)


async def test_a_long_prefill_caches_each_chunks_blocks_as_it_completes():
    """vLLM caches (and announces in BlockStored) a chunk's full blocks with the step that computes
    them, so a long prompt's first chunks are shareable, and known to a precise router, before its
    prefill ends."""
    async with running(PARAMS) as eng:
        stored: list[tuple[float, int]] = []

        class Recorder:
            def blocks_stored(self, hashes) -> None:
                stored.append((eng._clock(), len(hashes)))

            def blocks_removed(self, hashes) -> None: ...

        eng.pool.observer = Recorder()
        seq = make_seq("system" * 666 + "abcd")  # 1000 tokens: chunks of 512 + 488
        await finish(eng, seq)
        assert [count for _, count in stored] == [32, 30]  # 512 tokens = 32 blocks, then to block 62
        assert seq.first_token_at is not None
        assert stored[0][0] < seq.first_token_at == stored[1][0]
