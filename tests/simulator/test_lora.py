"""LoRA on the simulator: the adapter registry and vLLM's run-time API answers, the engine's adapter
batch limit and slot loads on a virtual clock, and the HTTP surface (listing, requests naming an
adapter, vllm:lora_requests_info read back by the EPP's own parser)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from epp.scrape.parser import parse_metrics
from simulator.__main__ import build_parser, params_from_args
from simulator.engine import Engine, Sequence
from simulator.lora import LoraError, LoraModule, LoraRegistry, parse_lora_modules
from simulator.params import SimParams
from tests.simulator.test_engine import VirtualTime, make_seq
from tests.simulator.test_server import FAST, start

# --- the registry -------------------------------------------------------------------------------


def test_lora_modules_are_read_in_both_of_vllms_forms() -> None:
    modules = parse_lora_modules(
        ["sql=/lora/sql", '{"name": "chat", "path": "/lora/chat", "base_model_name": "m"}']
    )
    assert modules == [LoraModule("sql", "/lora/sql"), LoraModule("chat", "/lora/chat")]
    with pytest.raises(ValueError, match="Invalid JSON format for --lora-modules"):
        parse_lora_modules(["{nope"])
    with pytest.raises(ValueError, match="Invalid fields"):
        parse_lora_modules(['{"name": "x", "path": "y", "rank": 8}'])


def registry(**kw: Any) -> LoraRegistry:
    options = {"max_loras": 1, "runtime_updates": True, **kw}
    return LoraRegistry("base", [LoraModule("sql", "/l/sql")], **options)


@pytest.mark.parametrize(
    ("call", "body", "status", "message", "kind"),
    [
        (
            "load",
            {"lora_name": "x"},
            400,
            "Both 'lora_name' and 'lora_path' must be provided.",
            "InvalidUserInput",
        ),
        (
            "load",
            {"lora_name": "base", "lora_path": "/p"},
            400,
            "conflicts with a served base model",
            "InvalidUserInput",
        ),
        ("load", {"lora_name": "sql", "lora_path": "/p"}, 400, "has already been loaded", "InvalidUserInput"),
        ("unload", {}, 400, "'lora_name' needs to be provided", "InvalidUserInput"),
        ("unload", {"lora_name": "nope"}, 404, "The lora adapter 'nope' cannot be found.", "NotFoundError"),
        ("load", [1], 400, "must be a JSON object", "BadRequestError"),
    ],
)
def test_the_run_time_api_answers_as_vllm_does(
    call: str, body: Any, status: int, message: str, kind: str
) -> None:
    with pytest.raises(LoraError) as raised:
        getattr(registry(), call)(body)
    assert (raised.value.status, raised.value.error_type) == (status, kind)
    assert message in raised.value.message


def test_load_unload_and_load_in_place() -> None:
    lora = registry()
    assert (
        lora.load({"lora_name": "chat", "lora_path": "/l/chat"})
        == "Success: LoRA adapter 'chat' added successfully."
    )
    assert lora.serves("chat") and lora.is_adapter("chat") and not lora.is_adapter("base")
    assert lora.load({"lora_name": "sql", "lora_path": "/l/sql2", "load_inplace": True}).startswith("Success")
    assert lora.adapters["sql"] == "/l/sql2"
    assert lora.unload({"lora_name": "chat"}) == "Success: LoRA adapter 'chat' removed successfully."
    assert not lora.serves("chat")


def test_slots_evict_the_least_recently_used_idle_adapter() -> None:
    lora = registry(max_loras=2)
    assert lora.use("a", set()) and lora.use("b", {"a"})
    assert not lora.use("a", {"a", "b"})  # resident: no load
    # Full: c takes the slot of a, the least recently used adapter no running request needs.
    assert lora.use("c", {"b"})
    assert list(lora.resident) == ["b", "c"] and lora.loads == 3


# --- the engine on a virtual clock --------------------------------------------------------------

PARAMS = SimParams(
    model="base",
    block_size=16,
    kv_cache_tokens=16 * 1000,
    max_num_seqs=8,
    step_overhead_s=0.002,
    prefill_per_token_s=0.0001,
    decode_per_seq_s=0.001,
    enable_lora=True,
    lora_modules=(LoraModule("a", "/a"), LoraModule("b", "/b")),
    lora_load_s=0.05,
)


class running:
    def __init__(self, params: SimParams) -> None:
        vt = VirtualTime()
        self.engine = Engine(params, clock=vt.clock, sleep=vt.sleep)

    async def __aenter__(self) -> Engine:
        await self.engine.start()
        return self.engine

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()


def lora_seq(text: str, adapter: str | None, max_tokens: int = 20) -> Sequence:
    return make_seq(text, max_tokens=max_tokens, lora=adapter)


async def test_one_adapter_slot_defers_the_other_adapter_but_not_the_base_model() -> None:
    async with running(PARAMS) as engine:
        first_a, second_a = lora_seq("a" * 100, "a"), lora_seq("c" * 100, "a")
        b, base = lora_seq("b" * 100, "b"), lora_seq("d" * 100, None)
        for seq in (first_a, b, second_a, base):
            engine.submit(seq)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # a's requests and the base model run together; b waits for a slot, keeping its place.
        assert {s.request_id for s in engine.running} == {
            first_a.request_id,
            second_a.request_id,
            base.request_id,
        }
        assert [s.request_id for s in engine.waiting] == [b.request_id]
        assert engine.active_loras() == {"a"}
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in (first_a, second_a, b, base))), 5)
        assert b.admitted_at is not None and first_a.finished_at is not None
        assert b.admitted_at >= first_a.finished_at
        assert engine.lora is not None and engine.lora.loads == 2


async def test_two_slots_run_both_adapters_at_once() -> None:
    async with running(replace(PARAMS, max_loras=2)) as engine:
        a, b = lora_seq("a" * 100, "a"), lora_seq("b" * 100, "b")
        engine.submit(a)
        engine.submit(b)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert engine.active_loras() == {"a", "b"} and not engine.waiting
        await asyncio.wait_for(asyncio.gather(a.done.wait(), b.done.wait()), 5)


async def test_a_load_costs_engine_time_once_per_residency() -> None:
    async with running(PARAMS) as engine:
        cold, warm = lora_seq("x" * 64, "a", max_tokens=2), lora_seq("y" * 64, "a", max_tokens=2)
        await asyncio.wait_for(_run(engine, cold), 5)
        await asyncio.wait_for(_run(engine, warm), 5)
        assert engine.lora is not None and engine.lora.loads == 1
        assert (cold.first_token_at or 0) - cold.arrival == pytest.approx(
            (warm.first_token_at or 0) - warm.arrival + 0.05, abs=1e-6
        )


async def _run(engine: Engine, seq: Sequence) -> None:
    engine.submit(seq)
    await seq.done.wait()


# --- the HTTP surface ---------------------------------------------------------------------------


@pytest.fixture
async def lora_sim() -> AsyncIterator[aiohttp.ClientSession]:
    params = SimParams(
        model="tiny",
        **FAST,
        enable_lora=True,
        lora_modules=(LoraModule("sql", "/lora/sql"),),
        runtime_lora_updating=True,
    )
    server, session = await start(params)
    yield session
    await session.close()
    await server.close()


async def test_models_list_adapters_under_the_base_model(lora_sim: aiohttp.ClientSession) -> None:
    async with lora_sim.get("/v1/models") as reply:
        cards = (await reply.json())["data"]
    assert [(c["id"], c["root"], c["parent"], c["max_model_len"]) for c in cards] == [
        ("tiny", "tiny", None, 4096),
        ("sql", "/lora/sql", "tiny", None),
    ]


async def test_requests_name_adapters_and_unknown_names_get_vllms_404(
    lora_sim: aiohttp.ClientSession,
) -> None:
    async with lora_sim.post(
        "/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 2}
    ) as reply:
        assert reply.status == 200 and (await reply.json())["model"] == "sql"
    async with lora_sim.post("/v1/completions", json={"model": "chat", "prompt": "x"}) as reply:
        error = (await reply.json())["error"]
    assert reply.status == 404 and error["message"] == "The model `chat` does not exist. Valid aliases: tiny."


async def test_adapters_load_and_unload_at_run_time(lora_sim: aiohttp.ClientSession) -> None:
    async with lora_sim.post(
        "/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "/lora/chat"}
    ) as r:
        assert r.status == 200 and await r.text() == "Success: LoRA adapter 'chat' added successfully."
    async with lora_sim.post("/v1/completions", json={"model": "chat", "prompt": "x", "max_tokens": 1}) as r:
        assert r.status == 200
    async with lora_sim.post("/v1/unload_lora_adapter", json={"lora_name": "chat"}) as r:
        assert r.status == 200
    async with lora_sim.post("/v1/unload_lora_adapter", json={"lora_name": "chat"}) as r:
        assert r.status == 404 and (await r.json())["error"]["type"] == "NotFoundError"


async def test_without_runtime_updates_the_api_is_absent() -> None:
    server, session = await start(SimParams(model="tiny", **FAST, enable_lora=True))
    try:
        async with session.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}) as r:
            assert r.status == 404
    finally:
        await session.close()
        await server.close()


async def test_the_epp_reads_the_running_adapters_from_the_metrics(lora_sim: aiohttp.ClientSession) -> None:
    async with lora_sim.get("/metrics") as reply:
        fresh_text = await reply.text()
    # As real vLLM 0.32: the family is declared, but no sample until the engine has run a step.
    assert "# TYPE vllm:lora_requests_info gauge" in fresh_text
    assert "vllm:lora_requests_info{" not in fresh_text
    fresh = parse_metrics(fresh_text, now=time.monotonic())
    assert fresh.running_loras == frozenset() and fresh.max_loras == 0
    body = {"model": "sql", "prompt": "x" * 40, "max_tokens": 400, "ignore_eos": True}
    request = asyncio.create_task(lora_sim.post("/v1/completions", json=body))
    text = ""
    for _ in range(200):
        async with lora_sim.get("/metrics") as reply:
            text = await reply.text()
        if 'running_lora_adapters="sql"' in text:
            break
        await asyncio.sleep(0.005)
    busy = parse_metrics(text, now=time.monotonic())
    assert busy.running_loras == frozenset({"sql"}) == busy.waiting_loras
    assert 'simulator:lora_loads_total{engine="0",model_name="tiny"} 1.0' in text
    (await request).close()
    await asyncio.sleep(0.2)
    async with lora_sim.get("/metrics") as reply:
        after = await reply.text()
    # Both label sets stay on the page, as in vLLM; the newest sample says nothing runs now.
    assert after.count("vllm:lora_requests_info{") == 2
    assert parse_metrics(after, now=time.monotonic()).running_loras == frozenset()


def test_the_cli_reads_vllms_lora_flags_and_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [
        "--model",
        "tiny",
        "--enable-lora",
        "--lora-modules",
        "sql=/l/sql",
        "chat=/l/chat",
        "--max-loras",
        "2",
    ]
    monkeypatch.setitem(os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    params = params_from_args(build_parser().parse_args([*argv, "--max-lora-rank", "16"]))
    assert [m.name for m in params.lora_modules] == ["sql", "chat"]
    assert params.max_loras == 2 and params.runtime_lora_updating
    with pytest.raises(ValueError, match="lora_modules need enable_lora"):
        params_from_args(build_parser().parse_args(["--model", "tiny", "--lora-modules", "a=/a"]))
    with pytest.raises(ValueError, match="conflicts with a served base model"):
        params_from_args(
            build_parser().parse_args(["--model", "tiny", "--enable-lora", "--lora-modules", "tiny=/a"])
        )
