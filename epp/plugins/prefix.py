"""Approximate prefix-cache affinity: chained block hashes of the prompt, an LRU index of which
endpoint holds which block, and a scorer by longest cached prefix.

Without a tokenizer in the request path we estimate tokens as llm-d's ``estimate`` token backend
does: about 4 UTF-8 bytes per token. A block of ``blockSizeTokens`` tokens is therefore
``4 x blockSizeTokens`` bytes of the prompt's UTF-8 encoding (legacy ``hashBlockSize`` gives the
block in characters/bytes directly, as GIE v1.0 did). Block i's hash is
``xxh3_64(block_i, seed=hash_{i-1})`` with ``hash_{-1} = xxh3_64(model ‖ 0 ‖ cache_salt)``, so a
block hash stands for the whole prefix up to it; a short trailing block is not hashed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import xxhash

from epp.datastore import Endpoint
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import (
    DataProducer,
    EndpointSetObserver,
    Plugin,
    PreRequest,
    SchedulingRequest,
    SchedulingResult,
    Scorer,
)
from epp.scheduling.params import Params
from epp.scheduling.registry import register

log = logging.getLogger(__name__)

BYTES_PER_TOKEN = 4
MIN_BLOCK_TOKENS = 64  # llm-d clamps smaller block sizes to 64 tokens at request time
DEFAULT_LRU_CAPACITY_PER_SERVER = 31250
DEFAULT_MAX_PREFIX_TOKENS = 131072  # llm-d-router approximateprefix defaultMaxPrefixTokens
UNLIMITED_BLOCKS = 2**62  # maxPrefixTokensToMatch: 0 and maxPrefixBlocksToMatch: 0
PRODUCER_TYPE = "approx-prefix-cache-producer"
# The data key of a request's prefix-match info (llm-d's PrefixCacheMatchInfo): written by a prefix
# producer, read by prefix-cache-scorer and the P/D deciders.
PREFIX_MATCH = "prefix-cache-match-info"

_hash = xxhash.xxh3_64_intdigest


def estimate_tokens(prompt: bytes) -> int:
    return -(-len(prompt) // BYTES_PER_TOKEN)


def block_hashes(
    model: str,
    prompt: bytes,
    block_bytes: int,
    max_blocks: int,
    salt: str = "",
    *,
    start: int = 0,
    known: Sequence[int] = (),
) -> list[int]:
    """Chained hashes of the prompt's full blocks, at most ``max_blocks`` of them. ``known`` are
    already-computed hashes of blocks ``0..start-1`` (see :class:`ChainCache`)."""
    count = min(len(prompt) // block_bytes, max_blocks)
    hashes = list(known[:start])
    previous = hashes[-1] if hashes else _hash(f"{model}\0{salt}".encode())
    view = memoryview(prompt)
    offset = len(hashes) * block_bytes
    append = hashes.append
    for _ in range(len(hashes), count):
        end = offset + block_bytes
        previous = _hash(view[offset:end], previous)
        append(previous)
        offset = end
    return hashes


class ChainCache:
    """Recently hashed prompts, keyed by their first block's hash, so a prompt that shares a long
    prefix with a recent one (the shared system prompt of an agent or chat app) re-hashes only
    the blocks after the shared part. Shared blocks are found by binary search with in-place
    byte comparisons (``bytes.startswith`` on a memoryview: a memcmp, no copies), so the result is
    exactly what :func:`block_hashes` computes from scratch."""

    MIN_BLOCKS = 32  # below this, hashing from scratch costs no more than the lookup

    def __init__(self, entries: int = 128, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.entries = entries
        self.max_bytes = max_bytes  # prompts are kept by reference; this bounds their memory
        self._recent: OrderedDict[int, tuple[bytes, list[int]]] = OrderedDict()
        self._bytes = 0

    def hashes(
        self, model: str, prompt: bytes, block_bytes: int, max_blocks: int, salt: str = ""
    ) -> list[int]:
        count = min(len(prompt) // block_bytes, max_blocks)
        if count < self.MIN_BLOCKS:
            return block_hashes(model, prompt, block_bytes, max_blocks, salt)
        first = block_hashes(model, prompt[:block_bytes], block_bytes, 1, salt)
        cached = self._recent.get(first[0])
        if cached is None:
            hashes = block_hashes(model, prompt, block_bytes, max_blocks, salt, start=1, known=first)
        else:
            previous_prompt, previous_hashes = cached
            shared = _shared_blocks(prompt, previous_prompt, block_bytes, min(count, len(previous_hashes)))
            hashes = block_hashes(
                model, prompt, block_bytes, max_blocks, salt, start=shared, known=previous_hashes
            )
        if len(prompt) <= self.max_bytes:
            replaced = self._recent.pop(first[0], None)
            if replaced is not None:
                self._bytes -= len(replaced[0])
            self._recent[first[0]] = (prompt, hashes)
            self._bytes += len(prompt)
            while len(self._recent) > self.entries or self._bytes > self.max_bytes:
                _, (evicted, _) = self._recent.popitem(last=False)
                self._bytes -= len(evicted)
        return hashes

    @property
    def cached_bytes(self) -> int:
        return self._bytes


def _shared_blocks(prompt: bytes, other: bytes, block_bytes: int, limit: int) -> int:
    """How many leading full blocks (at most ``limit``) the two prompts have byte-for-byte equal."""
    view = memoryview(other)
    low, high = 0, limit  # blocks [0, low) are equal; blocks [0, high + 1) are not all equal
    while low < high:
        middle = (low + high + 1) // 2
        if prompt.startswith(view[low * block_bytes : middle * block_bytes], low * block_bytes):
            low = middle
        else:
            high = middle - 1
    return low


class PrefixIndex:
    """block hash → endpoints holding it, bounded by an LRU of hashes per endpoint.

    :meth:`add` touches a chain's blocks last-to-first, so block 0 is the most recently used and
    eviction takes chains from their tail, as vLLM frees a request's blocks. Every add is a whole
    chain from block 0, so an endpoint holding block i of a chain also holds blocks 0..i-1. That
    invariant lets :meth:`match_lengths` binary-search the match depth (about 8 probes for a
    256-block prompt, shared by endpoints that hold the same prefix) instead of walking every block.
    """

    def __init__(self, capacity_per_endpoint: int) -> None:
        self.default_capacity = capacity_per_endpoint
        self._holders: dict[int, set[str]] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}

    def match_lengths(self, hashes: Sequence[int]) -> dict[str, int]:
        """For each endpoint holding block 0: how many consecutive blocks from 0 it holds.

        A binary search over depth run for groups of endpoints at once: at each probe the group
        splits (with C-level set operations) into those holding that block and those not, so
        endpoints that cache the same prefix share one search path."""
        if not hashes:
            return {}
        holders = self._holders
        first = holders.get(hashes[0])
        if not first:
            return {}
        total = len(hashes)
        matched: dict[str, int] = {}
        complete = first.intersection(holders.get(hashes[-1], ()))
        for hostport in complete:  # the whole prompt is cached there: the common repeat case
            matched[hostport] = total
        # Each entry: every endpoint in the group holds hashes[:low] and none holds hashes[:high + 1].
        pending = [(1, total - 1, first - complete)] if len(complete) != len(first) else []
        while pending:
            low, high, group = pending.pop()
            if low >= high:
                for hostport in group:
                    matched[hostport] = low
                continue
            middle = (low + high + 1) // 2
            deeper = group.intersection(holders.get(hashes[middle - 1], ()))
            if deeper:
                pending.append((middle, high, deeper))
            if len(deeper) != len(group):
                pending.append((low, middle - 1, group - deeper))
        return matched

    def add(self, hostport: str, hashes: Sequence[int], capacity: int | None = None) -> None:
        """Record that ``hostport`` now caches the chain ``hashes`` (which starts at block 0)."""
        lru = self._lru.get(hostport)
        if lru is None:
            lru = self._lru[hostport] = OrderedDict()
        holders = self._holders
        touch = lru.move_to_end
        for block_hash in reversed(hashes):
            if block_hash in lru:
                touch(block_hash)
                continue
            lru[block_hash] = None
            pods = holders.get(block_hash)
            if pods is None:
                holders[block_hash] = {hostport}
            else:
                pods.add(hostport)
        limit = capacity or self.default_capacity
        while len(lru) > limit:
            evicted, _ = lru.popitem(last=False)
            self._forget(evicted, hostport)

    def remove_endpoint(self, hostport: str) -> None:
        for block_hash in self._lru.pop(hostport, {}):
            self._forget(block_hash, hostport)

    def endpoints(self) -> frozenset[str]:
        return frozenset(self._lru)

    def size(self, hostport: str) -> int:
        return len(self._lru.get(hostport, ()))

    def _forget(self, block_hash: int, hostport: str) -> None:
        pods = self._holders.get(block_hash)
        if pods is not None:
            pods.discard(hostport)
            if not pods:
                del self._holders[block_hash]


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The producer's per-request result, read by the scorer and the P/D decider."""

    hashes: list[int]
    block_tokens: int
    prompt_tokens: int
    matched_blocks: dict[str, int]  # hostport → consecutive cached blocks from the start
    block_bytes: int = 0
    prompt_bytes: int = 0
    # The precise producer's medium-weighted block counts over the same prefix (llm-d's
    # LongestPrefixScorer: a block held only in CPU counts 0.8); None when they equal matched_blocks.
    weighted_blocks: dict[str, float] | None = None
    # The prompt's full blocks when ``hashes`` holds only the ones looked up (the precise producer
    # stops hashing at the first block no endpoint holds); None: ``len(hashes)``.
    total_blocks: int | None = None

    @property
    def blocks(self) -> int:
        return len(self.hashes) if self.total_blocks is None else self.total_blocks

    def fraction(self, hostport: str) -> float:
        if not self.blocks:
            return 0.0
        return self.matched_blocks.get(hostport, 0) / self.blocks

    def cached_bytes(self, hostport: str) -> int:
        return min(self.prompt_bytes, self.matched_blocks.get(hostport, 0) * self.block_bytes)

    def cached_tokens(self, hostport: str) -> int:
        return min(self.prompt_tokens, self.matched_blocks.get(hostport, 0) * self.block_tokens)


class PrefixMatchProducer(DataProducer):
    """A producer of :data:`PREFIX_MATCH`: stores a :class:`PrefixMatch` in
    ``request.state[self.name]`` for the consumers that resolved it by name."""

    produces = frozenset({PREFIX_MATCH})


@register(PRODUCER_TYPE, default_producer=True)
class ApproxPrefixCacheProducer(PrefixMatchProducer, PreRequest, EndpointSetObserver):
    """Guesses each endpoint's prefix cache from the EPP's own routing history: chained block hashes of
    the prompt (about 4 bytes per token) and an LRU index per endpoint, updated after each decision.
    At most ``maxPrefixTokensToMatch`` (131072) of the prompt is hashed; as in llm-d,
    ``maxPrefixBlocksToMatch`` counts only when that is 0 (and 0 blocks is then no limit). With
    ``autoTune`` (default) a block is the model servers' own KV block size once scraped
    (``vllm:cache_config_info``; still at least 64 tokens), as in llm-d."""

    deferrable = True  # the index update is bookkeeping for later requests

    def __init__(
        self,
        name: str,
        *,
        block_bytes: int,
        max_blocks: int,
        lru_capacity: int,
        auto_tune: bool,
        max_tokens: int = 0,
        server_block_size: bool = False,
    ) -> None:
        super().__init__(name)
        self.block_bytes = block_bytes
        self.block_tokens = max(1, block_bytes // BYTES_PER_TOKEN)
        self.max_blocks = max_blocks
        self.auto_tune = auto_tune
        # The token cap max_blocks came from (0: the block cap rules), for other block sizes.
        self.max_tokens = max_tokens
        # autoTune on a token block size: hash in the servers' KV block size when they report one.
        self.server_block_size = server_block_size and auto_tune
        self.index = PrefixIndex(lru_capacity)
        self.chains = ChainCache()

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        legacy_block_chars = params.integer("hashBlockSize", 0, minimum=1)
        block_tokens = max(MIN_BLOCK_TOKENS, params.integer("blockSizeTokens", 16, minimum=1))
        block_tokens = max(MIN_BLOCK_TOKENS, params.integer("blockSize", block_tokens, minimum=1))
        block_bytes = legacy_block_chars or block_tokens * BYTES_PER_TOKEN
        tokens_per_block = max(1, block_bytes // BYTES_PER_TOKEN)
        max_tokens = 0
        if legacy_block_chars:
            # GIE's character blocks came with a block cap only.
            max_blocks = params.integer("maxPrefixBlocksToMatch", 2048, minimum=1)
            if params.has("maxPrefixTokensToMatch"):
                max_blocks = max(
                    1, params.integer("maxPrefixTokensToMatch", 0, minimum=1) // tokens_per_block
                )
        else:
            # llm-d-router approximateprefix resolveMaxBlocks: maxPrefixTokensToMatch (default
            # 131072) takes precedence whenever it is > 0, so maxPrefixBlocksToMatch counts only
            # with maxPrefixTokensToMatch: 0, and then 0 blocks means no limit.
            max_tokens = params.integer("maxPrefixTokensToMatch", DEFAULT_MAX_PREFIX_TOKENS, minimum=0)
            max_blocks = params.integer("maxPrefixBlocksToMatch", 2048, minimum=0)
            if max_tokens > 0:
                max_blocks = max_tokens // tokens_per_block
            elif max_blocks == 0:
                max_blocks = UNLIMITED_BLOCKS
        return cls(
            name,
            block_bytes=block_bytes,
            max_blocks=max_blocks,
            lru_capacity=params.integer("lruCapacityPerServer", DEFAULT_LRU_CAPACITY_PER_SERVER, minimum=1),
            auto_tune=params.boolean("autoTune", True),
            max_tokens=max_tokens,
            server_block_size=not legacy_block_chars,
        )

    def _geometry(self, endpoints: Sequence[Endpoint]) -> tuple[int, int, int]:
        """(tokens a block, its bytes, the block cap) for this request. llm-d-router
        approximateprefix GetBlockSize: with autoTune, the servers' reported KV block size (we
        take the first endpoint that reports one; llm-d the first endpoint), at least 64 tokens;
        resolveMaxBlocks then divides the token cap by it."""
        if self.server_block_size:
            reported = next((e.metrics.block_size for e in endpoints if e.metrics.block_size), None)
            if reported:
                tokens = max(MIN_BLOCK_TOKENS, reported)
                if tokens != self.block_tokens:
                    max_blocks = self.max_tokens // tokens if self.max_tokens else self.max_blocks
                    return tokens, tokens * BYTES_PER_TOKEN, max_blocks
        return self.block_tokens, self.block_bytes, self.max_blocks

    def produce(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> None:
        prompt = request.prompt_text.encode()
        salt = request.state.get("cache_salt", "")
        block_tokens, block_bytes, max_blocks = self._geometry(endpoints)
        hashes = self.chains.hashes(request.target_model, prompt, block_bytes, max_blocks, salt)
        request.state[self.name] = PrefixMatch(
            hashes=hashes,
            block_tokens=block_tokens,
            prompt_tokens=estimate_tokens(prompt),
            matched_blocks=self.index.match_lengths(hashes) if hashes else {},
            block_bytes=block_bytes,
            prompt_bytes=len(prompt),
        )

    def pre_request(self, request: SchedulingRequest, result: SchedulingResult) -> None:
        """The chosen endpoints (decode, and prefill under P/D) will now hold this prompt's KV."""
        match: PrefixMatch | None = request.state.get(self.name)
        if match is None or not match.hashes:
            return
        for profile_result in result.results.values():
            if profile_result is not None and profile_result.targets:
                target = profile_result.targets[0]
                self.index.add(target.hostport, match.hashes, self._capacity(target, match.block_tokens))

    def endpoints_changed(self, live_hostports: frozenset[str]) -> None:
        for hostport in self.index.endpoints() - live_hostports:
            self.index.remove_endpoint(hostport)

    def _capacity(self, endpoint: Endpoint, block_tokens: int) -> int | None:
        """With autoTune, size the endpoint's LRU to what its KV cache can really hold."""
        metrics = endpoint.metrics
        if not self.auto_tune or not metrics.num_gpu_blocks or not metrics.block_size:
            return None
        return max(1, metrics.num_gpu_blocks * metrics.block_size // block_tokens)


def find_producer(plugins: Mapping[str, Plugin], wanted: str | None, owner: Plugin) -> PrefixMatchProducer:
    """The named prefix producer, or the only one configured (the loader adds a default one)."""
    if wanted is not None:
        plugin = plugins.get(wanted)
        if not isinstance(plugin, PrefixMatchProducer):
            raise ConfigError(
                f"plugin {owner.name!r} (type {owner.type_name}): {wanted!r} is not a configured "
                f"producer of {PREFIX_MATCH} (e.g. {PRODUCER_TYPE})"
            )
        return plugin
    producers = [p for p in plugins.values() if isinstance(p, PrefixMatchProducer)]
    if len(producers) != 1:
        raise ConfigError(
            f"plugin {owner.name!r} (type {owner.type_name}): found {len(producers)} producers of "
            f"{PREFIX_MATCH}; name one with prefixMatchInfoProducerName"
        )
    return producers[0]


# Parameters of the producer that llm-d/GIE also accepted on the scorer itself; they configure the
# producer the loader creates when the config has none.
INDEX_PARAMETERS = (
    "hashBlockSize",
    "blockSize",
    "blockSizeTokens",
    "maxPrefixBlocksToMatch",
    "maxPrefixTokensToMatch",
    "lruCapacityPerServer",
    "autoTune",
)


@register("prefix-cache-scorer")
class PrefixCacheScorer(Scorer):
    """Score = fraction of the prompt's blocks cached on the endpoint (longest prefix from block 0).
    With ``matchLengthWeight`` w > 0 (llm-d's, default 0): ``(1 - w) x fraction + w x
    min(1, cached tokens / matchLengthScaleTokens)^2``, so a long cached prefix outranks a short
    one that covers more of a short prompt."""

    def __init__(
        self,
        name: str,
        producer_name: str | None,
        index_parameters: dict[str, Any],
        match_length_weight: float = 0.0,
        match_length_scale_tokens: int = 8192,
    ) -> None:
        super().__init__(name)
        self.producer_name = producer_name
        self.index_parameters = index_parameters
        self.producer: PrefixMatchProducer | None = None
        self.match_length_weight = match_length_weight
        self.match_length_scale_tokens = match_length_scale_tokens

    def consumes(self) -> frozenset[str]:
        return frozenset({PREFIX_MATCH})

    def producer_parameters(self, key: str) -> Mapping[str, Any]:
        return self.index_parameters if key == PREFIX_MATCH else {}

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        producer_name = params.string("prefixMatchInfoProducerName", "") or None
        index_parameters = {key: params.raw(key) for key in INDEX_PARAMETERS if params.has(key)}
        # llm-d-router scorer/prefix/plugin.go (matchLengthWeight in [0, 1], scale 8192 tokens,
        # which must be > 0 when the weight is); these were refused here as unknown parameters.
        weight = params.number("matchLengthWeight", 0.0, minimum=0.0, maximum=1.0)
        scale = params.integer("matchLengthScaleTokens", 8192)
        if weight > 0 and scale <= 0:
            raise params.error(
                "matchLengthScaleTokens", f"must be > 0 when matchLengthWeight is > 0, got {scale}"
            )
        return cls(name, producer_name, index_parameters, weight, scale)

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        self.producer = find_producer(plugins, self.producer_name, self)

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        assert self.producer is not None, "resolve() not called"
        match: PrefixMatch | None = request.state.get(self.producer.name)
        if match is None or not match.matched_blocks:
            return [0.0] * len(endpoints)
        total = match.blocks
        matched: Mapping[str, float] = match.weighted_blocks or match.matched_blocks
        weight = self.match_length_weight
        if weight <= 0 or match.block_tokens <= 0:
            return [matched.get(endpoint.hostport, 0) / total for endpoint in endpoints]
        scores = []
        for endpoint in endpoints:
            blocks = matched.get(endpoint.hostport, 0)
            length = min(1.0, blocks * match.block_tokens / self.match_length_scale_tokens)
            scores.append(weight * length * length + (1.0 - weight) * blocks / total)
        return scores
