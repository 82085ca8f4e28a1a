"""The simulator's KV events: vLLM's block keys (checked against the EPP's hasher, which
tests/epp/kvevents checks against vLLM itself), vLLM's wire format (decoded with the EPP's decoder,
byte-identical to the EPP's encoder), and a running simulator publishing what its pool caches and
evicts, with replay, so that the EPP's token-producer (simulator backend) and precise producer
predict the published keys from the request alone."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp.test_utils import TestServer

from epp.kvevents import simulator_tokens
from epp.kvevents.hashing import BlockHasher
from epp.kvevents.wire import (
    END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
    encode_batch,
    parse_frames,
)
from localrun.process import free_port
from simulator.kvevents import (
    HASH_ALGORITHMS,
    BlockKeyer,
    KvEventsConfig,
    all_blocks_cleared,
    block_removed,
    block_stored,
    none_hash_seed,
)
from simulator.kvevents import encode_batch as sim_encode_batch
from simulator.params import SimParams
from simulator.server import SimServer
from simulator.tokens import id_piece, token_ids
from tests.simulator.test_server import FAST

TIMEOUT = 15.0


@pytest.mark.parametrize("algorithm", HASH_ALGORITHMS)
def test_block_keys_equal_the_epps(algorithm: str) -> None:
    rng = random.Random(algorithm)
    tokens = [rng.randrange(1 << 28) for _ in range(300)]
    keyer = BlockKeyer(algorithm, 16, "1234")
    expected = BlockHasher(algorithm, 16, "1234").block_keys(tokens)
    assert keyer.keys(tokens) == expected
    assert keyer.keys(tokens) == expected  # memoized: the same keys
    assert keyer.keys(tokens[:40]) == expected[:2]


def test_seed_follows_pythonhashseed_as_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    assert none_hash_seed("sha256_cbor") == "vllm-none-hash"
    assert none_hash_seed("xxhash") != none_hash_seed("xxhash")  # random per process without it
    monkeypatch.setenv("PYTHONHASHSEED", "7")
    assert none_hash_seed("xxhash_cbor") == "7"


def test_wire_format_is_the_epps_byte_for_byte() -> None:
    stored = block_stored([1, 2**64 - 1], 5, list(range(32)), 16)
    removed = block_removed([1])
    payload = sim_encode_batch(1.5, [stored, removed, all_blocks_cleared()])
    decoded = decode_batch(payload)
    assert decoded == EventBatch(
        1.5,
        (
            BlockStored((1, 2**64 - 1), 5, tuple(range(32)), 16, medium="GPU"),
            BlockRemoved((1,), "GPU"),
            AllBlocksCleared(),
        ),
    )
    assert payload == encode_batch(decoded)  # the EPP's encoder is byte-identical to vLLM's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"enable_kv_cache_events": true, "endpoints": "x"}', "unknown field(s) endpoints"),
        ('{"enable_kv_cache_events": "yes"}', "enable_kv_cache_events must be a bool"),
        ('{"buffer_steps": 0}', "buffer_steps must be >= 1"),
        ('{"publisher": "kafka"}', "publisher must be null or zmq"),
    ],
)
def test_config_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="kv-events-config") as error:
        KvEventsConfig.parse(text)
    assert message in str(error.value)
    with pytest.raises(ValueError, match="invalid simulator parameters"):
        SimParams(model="m", kv_events_config=text)


def test_enabled_as_vllm_decides() -> None:
    assert KvEventsConfig.parse('{"enable_kv_cache_events": true}').enabled
    assert not KvEventsConfig.parse('{"enable_kv_cache_events": true, "publisher": "null"}').enabled
    assert not KvEventsConfig.parse('{"publisher": "zmq"}').enabled


# ---- a running simulator -------------------------------------------------------------------------


@pytest.fixture
async def publishing(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    """A simulator with 8 blocks of 4 tokens, KV events on a free port, replay on another."""
    monkeypatch.setenv("PYTHONHASHSEED", "99")
    events_port, replay_port = free_port(), free_port()
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{events_port}",
        "replay_endpoint": f"tcp://127.0.0.1:{replay_port}",
        "topic": "kv@127.0.0.1:8000@tiny",
    }
    params = SimParams(
        model="tiny",
        block_size=4,
        kv_cache_tokens=32,
        max_model_len=32,
        kv_events_config=json.dumps(config),
        prefix_caching_hash_algo="sha256_cbor",
        **FAST,
    )
    server = TestServer(SimServer(params).app(), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession(base_url=str(server.make_url("/")))
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    sub.connect(f"tcp://127.0.0.1:{events_port}")
    try:
        yield {"session": session, "sub": sub, "context": context, "replay": f"tcp://127.0.0.1:{replay_port}"}
    finally:
        sub.close(linger=0)
        context.destroy(linger=0)
        await session.close()
        await server.close()


async def complete(session: aiohttp.ClientSession, prompt: str) -> None:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 1}
    async with session.post("/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()


async def next_batch(sub: zmq.asyncio.Socket) -> tuple[int, EventBatch]:
    frames = await asyncio.wait_for(sub.recv_multipart(), TIMEOUT)
    frame = parse_frames(frames)
    assert frame.topic == "kv@127.0.0.1:8000@tiny"
    return frame.seq, decode_batch(frame.payload)


async def join(session: aiohttp.ClientSession, sub: zmq.asyncio.Socket) -> int:
    """PUB/SUB joins asynchronously: send new prompts (each stores a block) until a batch arrives;
    returns its sequence number."""
    for attempt in range(200):
        await complete(session, f"warm-up {attempt:04d} ......")  # 20 characters: 1 cacheable block
        try:
            seq, _ = await asyncio.wait_for(next_batch(sub), 0.2)
            return seq
        except TimeoutError:
            continue
    raise AssertionError("never received a batch")


def epp_keys(body: dict[str, Any]) -> list[int]:
    """What the EPP computes from the request alone: the token-producer's simulator backend and
    the precise producer's hasher (PYTHONHASHSEED 99, sha256_cbor, 4-token blocks)."""
    return BlockHasher("sha256_cbor", 4, "99").block_keys(simulator_tokens.request_tokens(body))


async def test_published_keys_are_what_the_epp_computes_from_the_prompt(publishing: dict[str, Any]) -> None:
    session, sub = publishing["session"], publishing["sub"]
    seq = await join(session, sub)
    prompt = "The quick brown fox jumps over it."  # 34 characters: 9 tokens, 2 full blocks
    await complete(session, prompt)
    seq2, batch = await next_batch(sub)
    assert seq2 > seq
    stored = [e for e in batch.events if isinstance(e, BlockStored)]
    assert len(stored) == 1
    expected = epp_keys({"prompt": prompt})
    assert list(stored[0].block_hashes) == expected[:2]
    assert stored[0].parent_block_hash is None and stored[0].block_size == 4
    assert list(stored[0].token_ids) == token_ids(prompt)[:8]
    assert stored[0].medium == "GPU"
    # The EPP's mismatch check (a chain-start store re-hashed from its own token ids) passes.
    assert BlockHasher("sha256_cbor", 4, "99").verify_stored(stored[0].block_hashes, stored[0].token_ids, 4)
    # A chat request: the simulator renders ChatML; the EPP's simulator backend predicts it.
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with session.post("/v1/chat/completions", json=chat) as response:
        assert response.status == 200
    _, batch = await next_batch(sub)
    chat_stored = [k for e in batch.events if isinstance(e, BlockStored) for k in e.block_hashes]
    assert chat_stored == epp_keys(chat)[: len(chat_stored)] and chat_stored


async def test_generated_tokens_blocks_are_published_chained_to_the_prompt(
    publishing: dict[str, Any],
) -> None:
    """vLLM caches the blocks its output fills and publishes them chained to the prompt's
    (tests/slow/test_kvevents_vllm.py checks vLLM does): the simulator too."""
    session, sub = publishing["session"], publishing["sub"]
    await join(session, sub)
    prompt = "The quick brown fox jumps over it."  # 9 tokens: 2 full blocks and 1 token over
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 8}
    async with session.post("/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        text = (await response.json())["choices"][0]["text"]
    # 17 tokens, of which the last generated one is never computed: 16, 4 full blocks.
    stored: list[BlockStored] = []
    while sum(len(e.block_hashes) for e in stored) < 4:
        _, batch = await next_batch(sub)
        stored += [e for e in batch.events if isinstance(e, BlockStored)]
    keys = [k for e in stored for k in e.block_hashes]
    ids = [t for e in stored for t in e.token_ids]
    assert len(keys) == 4 and len(ids) == 16
    assert stored[0].parent_block_hash is None
    assert all(b.parent_block_hash == a.block_hashes[-1] for a, b in itertools.pairwise(stored))
    assert keys == BlockHasher("sha256_cbor", 4, "99").block_keys(ids)  # one chain, vLLM's keys
    assert keys[:2] == epp_keys({"prompt": prompt})
    assert ids[:9] == token_ids(prompt)
    assert text.startswith("".join(id_piece(t) for t in ids[9:]))  # the tokens it generated
    await asyncio.sleep(0.2)  # nothing more: the 17th token's block is not full
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(next_batch(sub), 0.3)


async def test_evictions_are_published_and_replay_returns_history(publishing: dict[str, Any]) -> None:
    session, sub = publishing["session"], publishing["sub"]
    await join(session, sub)
    # 8 blocks in all: four distinct 20-token (80-character) prompts (4 cacheable blocks each, as
    # the last token is always computed) cannot all stay cached.
    prompts = [chr(ord("a") + i) * 80 for i in range(4)]
    removed: list[int] = []
    for prompt in prompts:
        await complete(session, prompt)
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    first_keys = set(epp_keys({"prompt": prompts[0]})[:4])
    while not first_keys <= set(removed):
        assert asyncio.get_running_loop().time() < deadline, "evictions never published"
        _, batch = await next_batch(sub)
        removed += [k for e in batch.events if isinstance(e, BlockRemoved) for k in e.block_hashes]
    # The replay socket answers from 0 with every batch, then the end marker (vLLM's protocol).
    dealer = publishing["context"].socket(zmq.DEALER)
    dealer.connect(publishing["replay"])
    try:
        await dealer.send_multipart([b"", (0).to_bytes(8, "big")])
        seqs = []
        while True:
            frames = await asyncio.wait_for(dealer.recv_multipart(), TIMEOUT)
            if frames[2] == END_SEQ:
                break
            seqs.append(parse_frames(frames[1:]).seq)
    finally:
        dealer.close(linger=0)
    assert seqs == list(range(len(seqs))) and len(seqs) >= 3
