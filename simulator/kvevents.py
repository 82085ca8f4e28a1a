"""KV-cache events from the simulator, as vLLM 0.32 publishes them (``--kv-events-config``).

With events on, the simulator computes its prefix-cache block keys the way vLLM does, over its
pseudo-tokenizer's ids (:mod:`simulator.tokens`: 4 characters per token), and publishes every
block its pool caches or evicts:

* **keys** (``vllm/v1/core/kv_cache_utils.py`` ``hash_block_tokens``): ``hash_i = H((hash_{i-1},
  tuple(block_i_tokens), None))`` over full blocks, ``hash_{-1} = H(seed)`` with the seed
  ``PYTHONHASHSEED`` when set, else ``"vllm-none-hash"`` for the sha256 algorithms and random per
  process for the xxhash ones; ``H`` is ``--prefix-caching-hash-algo`` (``sha256`` = SHA-256 of the
  pickle, ``sha256_cbor`` = of canonical CBOR, ``xxhash``/``xxhash_cbor`` = XXH3-128). Events carry
  the digest's low 64 bits as an int (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``).
* **wire** (``vllm/distributed/kv_events.py``): each engine step's events go out as one ZMQ
  multipart ``(topic, seq as 8 bytes big-endian from 0, msgpack([ts, [event, ...], dp_rank]))``;
  events are maps tagged by ``"type"`` (``BlockStored``, ``BlockRemoved``) with vLLM's field
  order and defaults omitted. The publisher binds when the endpoint has ``*`` (or ``::``, ipc,
  inproc) and connects otherwise, like vLLM; the replay ROUTER (``replay_endpoint``) answers
  ``(b"", start_seq)`` with every buffered batch from there, then an end marker.
* **batches**: the pool reports stores and evictions synchronously inside an engine step; they
  are flushed as one batch on the next loop turn, after the step (vLLM publishes per step too).

The EPP image must not import the simulator and vice versa, so this is written here rather than
shared with ``epp/kvevents``; ``tests/simulator/test_kvevents.py`` decodes these frames with the
EPP's decoder and checks the keys against the EPP's hasher.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import cbor2
import msgpack
import xxhash
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

HASH_ALGORITHMS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
MEDIUM_GPU = "GPU"
END_SEQ = (-1).to_bytes(8, "big", signed=True)
_KEY_MASK = (1 << 64) - 1


def _sha256(obj: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(obj: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def _xxhash(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _xxhash_cbor(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(cbor2.dumps(obj, canonical=True))


_HASH_FUNCTIONS: dict[str, Callable[[Any], bytes]] = {
    "sha256": _sha256,
    "sha256_cbor": _sha256_cbor,
    "xxhash": _xxhash,
    "xxhash_cbor": _xxhash_cbor,
}


def none_hash_seed(algorithm: str) -> str:
    """vLLM's ``resolve_none_hash_seed``: PYTHONHASHSEED, else a fixed or a random seed."""
    seed = os.environ.get("PYTHONHASHSEED")
    if seed is not None:
        return seed
    return os.urandom(32).hex() if algorithm.startswith("xxhash") else DEFAULT_NONE_HASH_SEED


class BlockKeyer:
    """vLLM's block keys of a token sequence (text prompts: no multimodal or salt keys). Digests are
    memoized per (parent, block) in two bounded generations, so a repeated prefix costs a dict
    lookup per block rather than an encoding and a hash."""

    def __init__(self, algorithm: str, block_size: int, seed: str, memo_entries: int = 65_536) -> None:
        if algorithm not in _HASH_FUNCTIONS:
            raise ValueError(f"unknown hash algorithm {algorithm!r}; expected one of {HASH_ALGORITHMS}")
        self.algorithm = algorithm
        self.block_size = block_size
        self._function = _HASH_FUNCTIONS[algorithm]
        self.none_hash = self._function(seed)
        self._limit = max(1, memo_entries // 2)
        self._current: dict[Any, bytes] = {}
        self._previous: dict[Any, bytes] = {}

    def keys(self, token_ids: Sequence[int], extra_keys: tuple[Any, ...] | None = None) -> list[int]:
        """``extra_keys`` is vLLM's per-request extra key of every block (a LoRA request's
        ``(("lora", name, path),)``), None for the base model."""
        return self.chain(token_ids, extra_keys)[0]

    def chain(
        self, token_ids: Sequence[int], extra_keys: tuple[Any, ...] | None = None, parent: bytes | None = None
    ) -> tuple[list[int], bytes]:
        """The keys of the full blocks of ``token_ids``, chained from ``parent`` (the digest of the
        block before them; None: they start a chain), and the last block's digest, to go on from."""
        size = self.block_size
        parent = self.none_hash if parent is None else parent
        out: list[int] = []
        for start in range(0, len(token_ids) - size + 1, size):
            block = (parent, tuple(token_ids[start : start + size]), extra_keys)
            digest = self._current.get(block) or self._previous.get(block)
            if digest is None:
                digest = self._function(block)
            self._current[block] = digest
            if len(self._current) >= self._limit:
                self._previous, self._current = self._current, {}
            out.append(int.from_bytes(digest, "big") & _KEY_MASK)
            parent = digest
        return out, parent


@dataclass(frozen=True, slots=True)
class KvEventsConfig:
    """vLLM's ``--kv-events-config`` (JSON), with its defaults."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def enabled(self) -> bool:
        publisher = self.publisher or ("zmq" if self.enable_kv_cache_events else "null")
        return self.enable_kv_cache_events and publisher == "zmq"

    @classmethod
    def parse(cls, text: str) -> KvEventsConfig:
        """Parse the JSON; ValueError naming the field at fault."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--kv-events-config is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("--kv-events-config must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"--kv-events-config: unknown field(s) {', '.join(unknown)}")
        types = {"enable_kv_cache_events": bool, "buffer_steps": int, "hwm": int, "max_queue_size": int}
        for name, value in raw.items():
            expected = types.get(name, str)
            optional = name in ("publisher", "replay_endpoint")
            if value is None and optional:
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"--kv-events-config: {name} must be a {expected.__name__}, got {value!r}")
        if raw.get("publisher") not in (None, "null", "zmq"):
            raise ValueError(f"--kv-events-config: publisher must be null or zmq, got {raw['publisher']!r}")
        config = cls(**raw)
        if config.buffer_steps < 1 or config.hwm < 0:
            raise ValueError("--kv-events-config: buffer_steps must be >= 1 and hwm >= 0")
        return config


def encode_batch(ts: float, events: Sequence[dict[str, Any]], data_parallel_rank: int | None = None) -> bytes:
    """msgpack of vLLM's ``KVEventBatch`` (array-like: ``[ts, events, data_parallel_rank]``)."""
    packed: bytes = msgpack.packb([ts, list(events), data_parallel_rank], use_bin_type=True)
    return packed


def block_stored(
    keys: Sequence[int], parent: int | None, token_ids: Sequence[int], block_size: int
) -> dict[str, Any]:
    # vLLM's BlockStored field order; lora_name is always present, extra_keys/group_idx... are
    # omitted at their defaults.
    return {
        "type": "BlockStored",
        "block_hashes": list(keys),
        "parent_block_hash": parent,
        "token_ids": list(token_ids),
        "block_size": block_size,
        "lora_id": None,
        "medium": MEDIUM_GPU,
        "lora_name": None,
    }


def block_removed(keys: Sequence[int]) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": list(keys), "medium": MEDIUM_GPU}


def all_blocks_cleared() -> dict[str, Any]:
    return {"type": "AllBlocksCleared"}


def _binds(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KvEventPublisher:
    """The block pool's observer: turns stores and evictions into vLLM's batches on ZMQ.

    The server registers each live request's chain (:meth:`track`) so a stored block's parent and
    token ids are known when the pool reports it (the pool only knows keys). A block stored with
    no live chain (none in practice: blocks are stored while their request runs) cannot be
    described as vLLM would, so it is skipped and counted in :attr:`undescribed`."""

    def __init__(self, config: KvEventsConfig, block_size: int) -> None:
        self.config = config
        self.block_size = block_size
        self._chains: dict[int, list[Any]] = {}  # key -> [live requests, parent key, token ids]
        self._pending: list[dict[str, Any]] = []
        self._flush_scheduled = False
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._next_seq = 0
        self._topic = config.topic.encode()
        self._context: zmq.asyncio.Context | None = None
        # The PUB is a plain socket: a PUB never blocks (it drops at its high-water mark), so a
        # non-blocking send from the engine's step needs no future.
        self._pub_context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._pub: zmq.Socket[bytes] | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.undescribed = 0
        self.dropped = 0

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._context = zmq.asyncio.Context()
        self._pub_context = zmq.Context()
        self._pub = self._pub_context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, self.config.hwm)
        if _binds(self.config.endpoint):
            self._pub.bind(self.config.endpoint)
        else:
            self._pub.connect(self.config.endpoint)
        if self.config.replay_endpoint is not None:
            self._router = self._context.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.bind(self.config.replay_endpoint)
            self._replay_task = asyncio.get_running_loop().create_task(self._serve_replay())
        log.info(
            "KV events: publishing on %s%s",
            self.config.endpoint,
            f", replay on {self.config.replay_endpoint}" if self.config.replay_endpoint else "",
        )

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        if self._router is not None:
            self._router.close(linger=0)
        if self._pub is not None:
            self._pub.close(linger=0)
        for context in (self._context, self._pub_context):
            if context is not None:
                context.term()
        self._pub = None
        self._router = None
        self._context = None
        self._pub_context = None

    @property
    def events_address(self) -> str | None:
        return None if self._pub is None else self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    # ---- chains of live requests --------------------------------------------------------------

    def track(self, keys: Sequence[int], token_ids: Sequence[int], parent: int | None = None) -> None:
        """A request with these block keys is live: its blocks may be stored while it runs.
        ``parent`` is the key of the block before the first one (None: they start a chain)."""
        size = self.block_size
        for index, key in enumerate(keys):
            entry = self._chains.get(key)
            if entry is None:
                self._chains[key] = [1, parent, token_ids[index * size : (index + 1) * size]]
            else:
                entry[0] += 1
            parent = key

    def untrack(self, keys: Sequence[int]) -> None:
        for key in keys:
            entry = self._chains.get(key)
            if entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    del self._chains[key]

    # ---- the pool's observer ------------------------------------------------------------------

    def blocks_stored(self, keys: Sequence[int]) -> None:
        run: list[int] = []
        tokens: list[int] = []
        run_parent: int | None = None
        for key in keys:
            entry = self._chains.get(key)
            if entry is None:
                self.undescribed += 1
                continue
            _, parent, block_tokens = entry
            if run and parent != run[-1]:
                self._add(block_stored(run, run_parent, tokens, self.block_size))
                run, tokens = [], []
            if not run:
                run_parent = parent
            run.append(key)
            tokens.extend(block_tokens)
        if run:
            self._add(block_stored(run, run_parent, tokens, self.block_size))

    def blocks_removed(self, keys: Sequence[int]) -> None:
        if keys:
            self._add(block_removed(keys))

    def all_blocks_cleared(self) -> None:
        self._add(all_blocks_cleared())

    def _add(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        events, self._pending = self._pending, []
        if not events:
            return
        seq = self._next_seq
        self._next_seq += 1
        payload = encode_batch(time.time(), events)
        self._buffer.append((seq, payload))
        if self._pub is None:
            return
        try:
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)
        except zmq.Again:  # a PUB at its high-water mark drops, as vLLM's does
            self.dropped += 1

    async def _serve_replay(self) -> None:
        assert self._router is not None
        router = self._router
        while True:
            frames = await router.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning("KV events: ignoring a malformed replay request (%d frames)", len(frames))
                continue
            identity, _, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await router.send_multipart((identity, b"", self._topic, seq.to_bytes(8, "big"), payload))
            await router.send_multipart((identity, b"", b"", END_SEQ, b""))
