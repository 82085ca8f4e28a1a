"""Issue 12 finding 9: a simulator pod froze for good under a burst. Admission counted free cached
blocks as allocatable and then pinned them by sharing them, allocate() raised OutOfBlocks inside
the engine task, and the task died without a word. Admission is now exact (as vLLM's), and no
failure can stop the engine loop silently."""

from __future__ import annotations

import asyncio
import logging

import pytest

from simulator.params import SimParams
from tests.simulator.test_engine import finish, make_seq, running

PREFIX = "shared system prompt " * 14  # 294 characters: 4 full 16-token blocks and a bit


async def test_sharing_free_cached_blocks_is_counted_at_admission() -> None:
    # 10 blocks. A leaves its 4 prefix blocks cached but free; B then holds 6; C shares A's prefix.
    # C needs 1 new block, and the 4 it shares stop being allocatable once it holds them: 5 > 4,
    # so C must wait for B (before: admitted, then OutOfBlocks killed the engine).
    params = SimParams(
        model="m", block_size=16, kv_cache_tokens=16 * 10, max_num_seqs=4, decode_per_seq_s=0.001
    )
    async with running(params) as engine:
        first = make_seq(PREFIX + "first", max_tokens=1)
        await finish(engine, first)
        assert engine.pool.blocks_in_use == 0 and engine.pool.free_cached(first.hashes) == 4
        hog = make_seq("h" * 320, max_tokens=10)  # 80 tokens + 10 = 6 blocks
        sharer = make_seq(PREFIX + "second", max_tokens=1)
        await finish(engine, hog, sharer)
        assert sharer.cached_tokens == 64 and sharer.admitted_at >= hog.finished_at
        assert engine.step_failures == 0 and engine.healthy
        assert engine.pool.blocks_in_use == 0


async def test_a_burst_sharing_a_prefix_on_a_nearly_full_cache_all_completes() -> None:
    """The reported shape: concurrent requests sharing a prefix, a nearly full cache, and the
    prefix-sharing requests given up on by their clients half way."""
    params = SimParams(
        model="m", block_size=16, kv_cache_tokens=16 * 24, max_num_seqs=8, decode_per_seq_s=0.001
    )
    async with running(params) as engine:
        await finish(engine, make_seq(PREFIX + "warm", max_tokens=1))
        fillers = [make_seq(f"{i}" * 200, max_tokens=30) for i in range(3)]
        sharers = [make_seq(PREFIX + f"user {i}", max_tokens=20) for i in range(8)]
        for seq in [*fillers, *sharers]:
            engine.submit(seq)
        for seq in sharers[::2]:  # these clients time out
            await asyncio.sleep(0)
            engine.abort(seq)
        everything = [*fillers, *sharers]
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in everything)), 10)
        assert all(s.finish_reason == "length" for s in [*fillers, *sharers[1::2]])
        assert engine.step_failures == 0 and engine.healthy
        assert engine.pool.blocks_in_use == 0 and not engine.running and not engine.waiting


async def test_a_failing_step_is_logged_fails_what_was_in_flight_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    params = SimParams(model="m", block_size=16, kv_cache_tokens=16 * 100, max_num_seqs=4)
    async with running(params) as engine:
        real_plan, calls = engine._plan, []

        def plan_that_fails_once() -> object:
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("a bug in one step")
            return real_plan()

        monkeypatch.setattr(engine, "_plan", plan_that_fails_once)
        victim = make_seq("v" * 200, max_tokens=50)
        with caplog.at_level(logging.ERROR, logger="simulator.engine"):
            engine.submit(victim)
            await asyncio.wait_for(victim.done.wait(), 5)
        assert victim.finish_reason == "abort"  # its client gets an error, not a hang
        assert any("engine step failed" in r.getMessage() for r in caplog.records)
        after = make_seq("a" * 200, max_tokens=3)
        await finish(engine, after)
        assert after.finish_reason == "length" and engine.step_failures == 1 and engine.healthy
        assert engine.pool.blocks_in_use == 0


async def test_a_dead_loop_is_reported_not_silent(caplog: pytest.LogCaptureFixture) -> None:
    params = SimParams(model="m")
    async with running(params) as engine:

        async def dies() -> None:
            raise SystemError("beyond the per-step guard")

        assert engine._task is not None
        engine._task.cancel()
        await asyncio.sleep(0)
        with caplog.at_level(logging.CRITICAL, logger="simulator.engine"):
            engine._task = asyncio.create_task(dies())
            engine._task.add_done_callback(engine._engine_ended)
            await asyncio.sleep(0.01)
        assert not engine.healthy and isinstance(engine.dead, SystemError)
        assert any("engine loop died" in r.getMessage() for r in caplog.records)
        engine._task = None


async def test_the_simulator_health_check_reports_a_dead_engine() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from simulator.server import SimServer

    server = SimServer(SimParams(model="m"))
    async with TestClient(TestServer(server.app())) as client:
        assert (await client.get("/health")).status == 200
        assert server.engine._task is not None
        server.engine._task.cancel()
        await asyncio.sleep(0.01)
        assert (await client.get("/health")).status == 503


async def test_requests_to_a_dead_engine_fail_at_once() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from simulator.server import SimServer

    server = SimServer(SimParams(model="m"))
    async with TestClient(TestServer(server.app())) as client:
        server.engine.dead = RuntimeError("gone")
        reply = await client.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
        assert reply.status == 500 and "engine loop died" in (await reply.json())["error"]["message"]
