"""Precise prefix index against real vLLM 0.32 CPU on the tiny model, with KV events on.

vLLM runs with a deliberately small KV cache (``--num-gpu-blocks-override``, 32-token blocks) so a
sequential workload over a few shared-prefix documents keeps evicting. The EPP side is the real
subscriber (events over ZMQ, replay socket on), the real tokenizer and the real block hasher:

* our token ids equal vLLM's ``/tokenize`` for completions and chat;
* before every request, the index predicts vLLM's prefix-cache hit exactly (the response's
  ``usage.prompt_tokens_details.cached_tokens``), and the sum of predictions equals the growth of
  ``vllm:prefix_cache_hits_total`` — i.e. the index holds what vLLM's cache holds, under eviction;
* after every request the index holds the block keys the EPP computes from the prompt (so they are
  the hashes vLLM published), and every chain-start ``BlockStored`` vLLM published has exactly the
  keys the EPP computes from its token ids;
* at the end, the live index equals a rebuild from vLLM's whole replay buffer, and
  ``/reset_prefix_cache`` (AllBlocksCleared) empties it;
* the plugins as llm-d users configure them (``token-producer`` with the model's tokenizer.json,
  ``precise-prefix-cache-producer`` subscribed through ``endpoint-notification-source``) route a
  prompt to the pod whose real cache holds it, predict vLLM's cached tokens, and the ``vllm``
  render backend gives the same token ids as the local tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics, EndpointSpec
from epp.director import SchedulingDirector
from epp.kvevents.hashing import BlockHasher
from epp.kvevents.index import KVBlockIndex
from epp.kvevents.pool import KVEventSubscriptions
from epp.kvevents.subscriber import EventSource
from epp.kvevents.tokenization import PromptTokenizer
from epp.kvevents.wire import END_SEQ, SEQ_BYTES, BlockStored, decode_batch, parse_frames
from epp.plugins.precise import PrecisePrefixCacheProducer
from epp.plugins.tokens import TokenProducer
from epp.scheduling.framework import SchedulingRequest
from epp.scheduling.registry import create
from epp.types import InferenceRequest, ParsedBody
from localrun.process import free_port
from simulator.params import SimParams
from simulator.server import SimServer
from tests.simulator.test_server import FAST
from tests.support import requests_shim as http
from tests.support.vllm_server import SERVED_NAME, vllm_process

pytestmark = pytest.mark.slow

WORDS = Path(__file__).read_text().split()  # prompt material with a realistic token mix

BLOCK_SIZE = 32
NUM_BLOCKS = 40  # 1280 tokens of KV: about three of the prompts below, so the workload evicts
HASH_ALGO = "sha256_cbor"  # llm-d's recommended setting, with a pinned PYTHONHASHSEED
HASH_SEED = "1234"
SETTLE_S = 0.5  # no new batch for this long after a response: the idle engine has published all


@pytest.fixture(scope="module")
def server(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("kvevents-vllm")
    port, events_port, replay_port = free_port(), free_port(), free_port()
    endpoint = f"127.0.0.1:{port}"
    events_config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{events_port}",  # '*' makes vLLM bind (else it connects out)
        "replay_endpoint": f"tcp://127.0.0.1:{replay_port}",
        "topic": f"kv@{endpoint}@{SERVED_NAME}",
    }
    process = vllm_process(
        vllm_python,
        tiny_model,
        port,
        name="vllm-kvevents",
        env={"PYTHONHASHSEED": HASH_SEED, "VLLM_SERVER_DEV_MODE": "1"},  # dev mode: /reset_prefix_cache
        log_dir=logs,
    )
    process.cmd += [
        "--kv-events-config",
        json.dumps(events_config),
        "--prefix-caching-hash-algo",
        HASH_ALGO,
        "--block-size",
        str(BLOCK_SIZE),
        "--num-gpu-blocks-override",
        str(NUM_BLOCKS),
        "--max-model-len",
        "1024",
        "--enable-prompt-tokens-details",
        "--enable-scale-out",  # the /render endpoints token-producer's vllm backend calls
    ]
    with process:
        yield {
            "url": f"http://{endpoint}",
            "endpoint": endpoint,
            "events": f"tcp://127.0.0.1:{events_port}",
            "replay": f"tcp://127.0.0.1:{replay_port}",
            "events_port": events_port,
            "replay_port": replay_port,
        }


async def call(method: str, url: str, body: Any = None) -> http.Reply:
    return await asyncio.to_thread(http.request, method, url, body)


async def prefix_cache_hits(url: str) -> float:
    text = (await call("GET", f"{url}/metrics")).body.decode()
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:prefix_cache_hits":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("vllm:prefix_cache_hits_total not exported")


async def settle(subscriber_seq: Any, deadline_s: float = 20.0) -> None:
    """Wait until no batch arrived for SETTLE_S."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last, since = subscriber_seq(), loop.time()
    while loop.time() - since < SETTLE_S:
        assert loop.time() < end, "events never settled"
        await asyncio.sleep(0.05)
        if subscriber_seq() != last:
            last, since = subscriber_seq(), loop.time()


async def until(predicate: Any, what: str, limit_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not predicate():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def replay_everything(context: zmq.asyncio.Context, address: str) -> list[Any]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(address)
    try:
        await dealer.send_multipart([b"", (0).to_bytes(SEQ_BYTES, "big")])
        frames_seen: list[Any] = []
        while True:
            frames = await asyncio.wait_for(dealer.recv_multipart(), 10)
            frames = frames[1:] if frames and not frames[0] else frames
            if len(frames) == 3 and frames[1] == END_SEQ:
                return frames_seen
            frames_seen.append(parse_frames(frames))
    finally:
        dealer.close(linger=0)


@contextlib.asynccontextmanager
async def epp_side(
    server: dict[str, Any], hasher: BlockHasher
) -> AsyncIterator[tuple[KVBlockIndex, KVEventSubscriptions]]:
    index = KVBlockIndex()
    subs = KVEventSubscriptions(index, hasher=hasher, topic_filter="kv@")
    subs.add_endpoint(server["endpoint"], EventSource(server["endpoint"], server["events"], server["replay"]))
    try:
        yield index, subs
    finally:
        await subs.close()


def documents(tokenizer_words: list[str]) -> list[str]:
    rng = random.Random(14)
    return [" ".join(rng.choice(tokenizer_words) for _ in range(120)) for _ in range(6)]


async def test_index_tracks_vllm_under_eviction(server: dict[str, Any], tiny_model: Path) -> None:
    url, endpoint = server["url"], server["endpoint"]
    tokenizer = PromptTokenizer.from_dir(tiny_model)
    hasher = BlockHasher(HASH_ALGO, BLOCK_SIZE, HASH_SEED)

    # 1. Our token ids are vLLM's.
    words = WORDS
    chat = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": " ".join(words[:60])},
    ]
    for body in ({"prompt": " ".join(words[:200])}, {"prompt": "  x\n\ty <s>"}, {"messages": chat}):
        reply = await call("POST", f"{url}/tokenize", {"model": SERVED_NAME, **body})
        assert reply.status == 200, reply.body
        assert tokenizer.request_tokens(body) == reply.json()["tokens"], body

    docs = documents(words)
    rng = random.Random(3)
    workload = []
    for i in range(30):
        doc = docs[rng.randrange(len(docs))]
        if i % 3 == 2:
            workload.append(
                {"messages": [{"role": "system", "content": doc}, {"role": "user", "content": f"q{i}"}]}
            )
        else:
            workload.append(
                {"prompt": doc + " " + " ".join(rng.choice(words) for _ in range(rng.randrange(5, 60)))}
            )

    async with epp_side(server, hasher) as (index, subs):
        subscriber = subs.subscriber(endpoint)
        assert subscriber is not None
        await until(subscriber.connected.is_set, "subscription")
        hits_before = await prefix_cache_hits(url)
        predicted_total = hits_total = 0
        for body in workload:
            tokens = tokenizer.request_tokens(body)
            keys = hasher.block_keys(tokens)
            held = index.longest_prefix(keys).get(endpoint, 0)
            predicted = (
                min(held, (len(tokens) - 1) // BLOCK_SIZE) * BLOCK_SIZE
            )  # vLLM recomputes the last token
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            reply = await call(
                "POST", url + path, {"model": SERVED_NAME, "max_tokens": 3, "ignore_eos": True, **body}
            )
            assert reply.status == 200, reply.body
            usage = reply.json()["usage"]
            assert usage["prompt_tokens"] == len(tokens)
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            assert cached == predicted, (body, cached, predicted)
            predicted_total += predicted
            hits_total += cached
            await until(lambda keys=keys: all(index.holds(endpoint, k) for k in keys), "the prompt's blocks")
            await settle(lambda: subscriber.last_seq)
        assert await prefix_cache_hits(url) - hits_before == predicted_total
        assert hits_total > 0, "the workload never hit the cache: it tests nothing"
        assert 0 < index.endpoint_size(endpoint) <= NUM_BLOCKS

        # 2. Every chain-start store vLLM published has the keys we compute from its token ids, and
        #    the live index equals a rebuild from vLLM's whole replay buffer.
        rebuilt = KVBlockIndex()
        chain_starts = removed = 0
        for frame in await replay_everything(subs.context, server["replay"]):
            batch = decode_batch(frame.payload)
            for event in batch.events:
                if isinstance(event, BlockStored) and event.parent_block_hash is None:
                    chain_starts += 1
                    assert list(event.block_hashes) == hasher.block_keys(event.token_ids)
                removed += 0 if isinstance(event, BlockStored) else 1
            rebuilt.apply_batch(endpoint, batch)
        assert chain_starts > 0 and removed > 0, "no eviction happened: the cache is too large for the test"
        assert rebuilt.blocks(endpoint) == index.blocks(endpoint)
        assert all(rebuilt.copies(endpoint, k) == index.copies(endpoint, k) for k in index.blocks(endpoint))

        # 3. AllBlocksCleared drops the endpoint's entries. vLLM queues the event until its next
        #    engine step, so a new request flushes it (and stores only its own blocks).
        before = index.blocks(endpoint)
        reply = await call("POST", f"{url}/reset_prefix_cache")
        assert reply.status == 200, reply.body
        body = {"prompt": " ".join(reversed(words[:150]))}
        keys = hasher.block_keys(tokenizer.request_tokens(body))
        reply = await call("POST", f"{url}/v1/completions", {"model": SERVED_NAME, "max_tokens": 1, **body})
        assert reply.status == 200, reply.body
        assert (reply.json()["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0) == 0
        await until(lambda: all(index.holds(endpoint, k) for k in keys), "the request after the reset")
        await settle(lambda: subscriber.last_seq)
        assert not index.blocks(endpoint) & before
        assert index.blocks(endpoint) == set(keys)


async def test_plugins_route_by_vllms_real_cache(server: dict[str, Any], tiny_model: Path) -> None:
    url, endpoint = server["url"], server["endpoint"]
    port = int(endpoint.rsplit(":", 1)[1])
    config = f"""\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
  parameters: {{local: {{path: "{tiny_model}"}}}}
- type: endpoint-notification-source
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig:
      {{blockSizeTokens: {BLOCK_SIZE}, hashSeed: "{HASH_SEED}", hashAlgorithm: {HASH_ALGO}}}
    kvEventsConfig:
      podDiscoveryConfig: {{socketPort: {server["events_port"]}, replaySocketPort: {server["replay_port"]}}}
- type: prefix-cache-scorer
  parameters: {{prefixMatchInfoProducerName: precise-prefix-cache-producer}}
dataLayer:
  sources:
  - {{pluginRef: endpoint-notification-source, extractors: [{{pluginRef: precise-prefix-cache-producer}}]}}
"""
    built = load_config(config)
    producer = built.plugins["precise-prefix-cache-producer"]
    assert isinstance(producer, PrecisePrefixCacheProducer)
    datastore = Datastore()
    director = SchedulingDirector(datastore, built)
    # The real vLLM, and a pod with nothing cached (nothing publishes at its address).
    datastore.replace_endpoints(
        [EndpointSpec("vllm", "127.0.0.1", port, port), EndpointSpec("cold", "127.0.0.2", port, port)]
    )
    for ep in datastore.endpoints():
        ep.metrics = EndpointMetrics(updated_at=time.monotonic() + 3600)
    for plugin in built.lifecycles:
        await plugin.start()
    try:
        assert producer.subscriptions is not None
        subscriber = producer.subscriptions.subscriber(endpoint)
        assert subscriber is not None
        await until(subscriber.connected.is_set, "subscription")
        rng = random.Random(41)
        document = " ".join(rng.choice(WORDS) for _ in range(150))
        reply = await call(
            "POST", f"{url}/v1/completions", {"model": SERVED_NAME, "prompt": document, "max_tokens": 1}
        )
        assert reply.status == 200, reply.body
        await settle(lambda: subscriber.last_seq)
        follow_up = document + " and then " + " ".join(rng.choice(WORDS) for _ in range(20))
        body = {"model": SERVED_NAME, "prompt": follow_up, "max_tokens": 1}
        parsed = ParsedBody(model=SERVED_NAME, prompt_text=follow_up, stream=False, api="completions")
        request = InferenceRequest("precise-1", "/v1/completions", {}, dict(body), parsed)
        prepared = await director.prepare(request)
        decision = director.decide(request, prepared=prepared)
        assert decision.endpoints[0] == endpoint  # the pod whose real cache holds the document
        # The producer's match is vLLM's own cache hit.
        scratch = SchedulingRequest("precise-2", SERVED_NAME, follow_up, {}, body=body)
        scratch.state.update(prepared)
        producer.produce(scratch, datastore.endpoints())
        match = scratch.state[producer.name]
        tokens = len(prepared["token-producer"].token_ids)
        expected = min(match.matched_blocks.get(endpoint, 0), (tokens - 1) // BLOCK_SIZE) * BLOCK_SIZE
        reply = await call("POST", f"{url}/v1/completions", body)
        assert reply.status == 200, reply.body
        cached = (reply.json()["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        assert cached == expected > 0
        # token-producer's vllm backend (vLLM's /render) gives the local tokenizer's ids.
        render = create("token-producer", "render", {"modelName": SERVED_NAME, "vllm": {"url": url}})
        assert isinstance(render, TokenProducer)
        await render.start()
        try:
            chat = {"messages": [{"role": "user", "content": document[:400]}]}
            for sample in ({"prompt": follow_up}, chat):
                rendered = SchedulingRequest("r", SERVED_NAME, "", {}, body=sample)
                await render.prepare(rendered)
                local = PromptTokenizer.from_dir(tiny_model).request_tokens(sample)
                assert list(rendered.state["render"].token_ids) == local, sample
        finally:
            await render.stop()
    finally:
        for plugin in reversed(built.lifecycles):
            await plugin.stop()


async def stored_blocks(
    sub: zmq.asyncio.Socket, at_least: int = 0, limit_s: float = 20.0
) -> list[BlockStored]:
    """The BlockStored events that arrive until they hold ``at_least`` blocks (within ``limit_s``:
    the wait for the expected ones is not what the test measures) and then none for SETTLE_S (so
    any extra block is seen too)."""
    stored: list[BlockStored] = []
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        short = sum(len(event.block_hashes) for event in stored) < at_least
        wait = max(0.0, deadline - asyncio.get_running_loop().time()) if short else SETTLE_S
        try:
            frames = await asyncio.wait_for(sub.recv_multipart(), wait)
        except TimeoutError:
            return stored
        batch = decode_batch(parse_frames(frames).payload)
        stored += [event for event in batch.events if isinstance(event, BlockStored)]


def one_chain(stored: list[BlockStored]) -> bool:
    return all(b.parent_block_hash == a.block_hashes[-1] for a, b in itertools.pairwise(stored))


async def test_generated_tokens_blocks_are_cached_as_the_simulator_models(server: dict[str, Any]) -> None:
    """vLLM caches (and publishes) the blocks its output fills, not only the prompt's: a fresh
    request of P prompt tokens and C generated ones stores (P + C - 1) // block_size blocks in one
    chain over the prompt's ids then the generated ids (the last generated token is never computed).
    The simulator, given the same token counts, stores the same blocks (simulator/outputblocks.py)."""
    sim_events_port = free_port()
    sim_params = SimParams(
        model=SERVED_NAME,
        block_size=BLOCK_SIZE,
        kv_cache_tokens=BLOCK_SIZE * NUM_BLOCKS,
        max_model_len=1024,
        kv_events_config=json.dumps(
            {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{sim_events_port}"}
        ),
        prefix_caching_hash_algo=HASH_ALGO,
        **FAST,
    )
    sim = TestServer(SimServer(sim_params).app(), host="127.0.0.1")
    await sim.start_server()
    context = zmq.asyncio.Context()
    subs = {}
    for name, address in (("real", server["events"]), ("sim", f"tcp://127.0.0.1:{sim_events_port}")):
        subs[name] = context.socket(zmq.SUB)
        subs[name].setsockopt(zmq.SUBSCRIBE, b"")
        subs[name].connect(address)
    rng = random.Random(77)
    try:
        await asyncio.sleep(0.5)  # PUB/SUB joins asynchronously
        for name in subs:
            await stored_blocks(subs[name])  # drop what earlier tests left
        for prompt_tokens in (2 * BLOCK_SIZE, 2 * BLOCK_SIZE + 1, 3 * BLOCK_SIZE - 1):
            for generated in (1, 2, 40):
                expected = (prompt_tokens + generated - 1) // BLOCK_SIZE
                # Real vLLM: token ids in (the tiny model has 4,096), token ids out, nothing cached before.
                prompt = [rng.randrange(300, 4_000) for _ in range(prompt_tokens)]
                body = {
                    "model": SERVED_NAME,
                    "prompt": prompt,
                    "max_tokens": generated,
                    "ignore_eos": True,
                    "return_token_ids": True,
                }
                reply = await call("POST", f"{server['url']}/v1/completions", body)
                assert reply.status == 200, reply.body
                output = reply.json()["choices"][0]["token_ids"]
                assert len(output) == generated
                real = await stored_blocks(subs["real"], expected)
                ids = [t for event in real for t in event.token_ids]
                assert sum(len(e.block_hashes) for e in real) == expected, (prompt_tokens, generated)
                assert ids == (prompt + output)[: expected * BLOCK_SIZE]
                assert one_chain(real)
                # The simulator: a prompt of the same token count (4 characters a token).
                text = "".join(rng.choice("abcdefghij") for _ in range(4 * prompt_tokens))
                sim_body = {"model": SERVED_NAME, "prompt": text, "max_tokens": generated}
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(sim.make_url("/v1/completions"), json=sim_body) as response,
                ):
                    assert response.status == 200, await response.text()
                simulated = await stored_blocks(subs["sim"], expected)
                assert sum(len(e.block_hashes) for e in simulated) == expected, (prompt_tokens, generated)
                assert one_chain(simulated)
    finally:
        for socket in subs.values():
            socket.close(linger=0)
        context.term()
        await sim.close()
