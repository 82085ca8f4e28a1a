"""``precise-prefix-cache-producer``: prefix-cache matches from the model servers' own KV events.

It subscribes to every endpoint's vLLM KV-event stream (through the ``endpoint-notification-source``
it is wired to), keeps the exact block index of :mod:`epp.kvevents`, and for each request computes
the engine's block keys from the token ids a ``token-producer`` prepared, then writes the same
:class:`~epp.plugins.prefix.PrefixMatch` the approximate producer writes, so ``prefix-cache-scorer``
(``prefixMatchInfoProducerName: precise-prefix-cache-producer``) and the P/D deciders work unchanged.

Parameters are llm-d-router v0.10's (``pkg/epp/framework/plugins/requestcontrol/dataproducer/
preciseprefixcache``, llm-d-kv-cache ``docs/configuration.md``), read strictly: an unknown key
anywhere is an error naming its full path. One difference in meaning: llm-d re-hashes the events'
token ids into its own keys, so its ``tokenProcessorConfig`` need not match the engine; this EPP
looks up vLLM's own block hashes (:mod:`epp.kvevents.hashing`), so ``tokenProcessorConfig`` must
describe the pods: ``blockSizeTokens`` = vLLM's ``--block-size``, ``hashAlgorithm`` = its
``--prefix-caching-hash-algo`` (``sha256`` default, ``sha256_cbor``, ``xxhash``, ``xxhash_cbor``;
llm-d's own ``cbor-fnv``/``xxh64`` are refused) and ``hashSeed`` = its ``PYTHONHASHSEED`` (empty:
vLLM's default seed). A mismatch shows in ``epp_kvevents_hash_mismatch_total``.

Refused with the key named, because they cannot work here: ``kvEventsConfig.zmqEndpoint`` (llm-d's
centralized mode, where every vLLM connects out to one EPP address: vLLM connects to one address
only, so several active EPP replicas could not all receive every pod's events; per-pod subscription
is what lets every replica hold the same index), ``discoverPods: false`` (then nothing subscribes),
``engineType`` other than ``vllm``, ``redisConfig``/``costAwareMemoryConfig`` (the index is in
memory, bounded by ``inMemoryConfig.size`` (index entries) and ``tokenizersPoolConfig``. Accepted
without effect: ``concurrency`` (events are applied on the event loop, ~5 us per block),
``podCacheSize`` (the index holds any number of endpoints per block), ``enableMetrics`` and
``metricsLoggingInterval`` (the ``epp_kvevents_*`` series are always exported), and
``podDiscoveryConfig.podLabelSelector``/``podNamespace`` (the pool's endpoints are the pods).

``speculativeIndexing`` (llm-d's, off by default) records a routed request's blocks on its target
for ``speculativeTTL`` before the pod's events confirm them, so a burst of requests sharing a new
prefix follows the first one instead of spreading while its prefill runs.

Extension: ``loraAdapterPaths`` (adapter name → the path vLLM loaded it from): vLLM hashes a LoRA
request's blocks with the adapter's name and path, so requests for an adapter that is not listed
cannot be matched (they score zero, counted as "unpredictable" lookups, and are not speculatively
indexed). An adapter is told from the base model by the pods' ``vllm:lora_requests_info``; until a
pod has run it, its requests are still hashed as the base model's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Self

from epp import metrics
from epp.datastore import Endpoint
from epp.kvevents.hashing import HASH_ALGORITHMS, BlockHasher, DigestMemo
from epp.kvevents.index import DEFAULT_MAX_ENTRIES, KVBlockIndex
from epp.kvevents.pool import DEFAULT_SOCKET_PORT, KVEventSubscriptions, tcp_address
from epp.kvevents.subscriber import EventSource
from epp.plugins.prefix import BYTES_PER_TOKEN, PrefixMatch, PrefixMatchProducer
from epp.plugins.tokens import TOKENIZED_PROMPT, TokenProducer, find_token_producer, tokenized_prompt
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import (
    EndpointEvent,
    EndpointExtractor,
    Lifecycle,
    Plugin,
    PreRequest,
    SchedulingRequest,
    SchedulingResult,
)
from epp.scheduling.params import Params
from epp.scheduling.registry import register

log = logging.getLogger(__name__)

PRODUCER_TYPE = "precise-prefix-cache-producer"
SPECULATIVE_MEDIUM = "speculative"
DEFAULT_MEDIUM_WEIGHTS = {"gpu": 1.0, "cpu": 0.8}  # llm-d's kvCacheBackendConfigs defaults
LLMD_HASH_ALGORITHMS = ("cbor-fnv", "xxh64")
_MAX_REMEMBERED_ADAPTERS = 4096


@register(PRODUCER_TYPE)
class PrecisePrefixCacheProducer(PrefixMatchProducer, PreRequest, EndpointExtractor, Lifecycle):
    """Prefix-cache matches from the pods' own vLLM KV events: subscribes to every endpoint (fed by
    endpoint-notification-source), keeps an exact bounded block index, and matches the engine's block
    keys computed from a token-producer's token ids (llm-d's parameters; tokenProcessorConfig must
    match the pods' --block-size, --prefix-caching-hash-algo and PYTHONHASHSEED)."""

    deferrable = True  # speculative indexing is bookkeeping for later requests

    def __init__(
        self,
        name: str,
        *,
        hasher: BlockHasher,
        index: KVBlockIndex,
        socket_port: int,
        replay_port: int | None,
        topic_filter: str,
        medium_weights: Mapping[str, float],
        speculative: bool,
        speculative_ttl: float,
        lora_paths: Mapping[str, str],
        replay_timeout: float = 2.0,
    ) -> None:
        super().__init__(name)
        self.hasher = hasher
        self.index = index
        self.socket_port = socket_port
        self.replay_port = replay_port
        self.topic_filter = topic_filter
        self.medium_weights = dict(medium_weights)
        self.speculative = speculative
        self.speculative_ttl = speculative_ttl
        self.lora_paths = dict(lora_paths)
        self.replay_timeout = replay_timeout
        self.tokens: TokenProducer | None = None
        self.subscriptions: KVEventSubscriptions | None = None
        self._sources: dict[str, EventSource] = {}  # the endpoints to follow, by hostport
        self._expiries: deque[tuple[float, str, list[int]]] = deque()  # speculative entries
        self._sweeper: asyncio.Task[None] | None = None
        # labels() validates and locks: resolve each series once (this is the request path).
        self._lookups = {
            o: metrics.PRECISE_LOOKUPS.labels(o) for o in ("hit", "miss", "no_tokens", "unpredictable")
        }
        # Names seen as LoRA adapters in the pods' vllm:lora_requests_info (bounded: cleared when full).
        self._adapters: set[str] = set()

    # ---- configuration ---------------------------------------------------------------------------

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        tokens = params.section("tokenProcessorConfig")
        block_size = tokens.integer("blockSizeTokens", 0, minimum=1)
        legacy = tokens.integer("blockSize", 0, minimum=1)
        block_size = block_size or legacy or 16
        seed = tokens.raw("hashSeed")
        if seed is not None and not isinstance(seed, str | int):
            raise tokens.error("hashSeed", f"must be a string (the pods' PYTHONHASHSEED), got {seed!r}")
        algorithm = tokens.raw("hashAlgorithm") or "sha256"
        if algorithm in LLMD_HASH_ALGORITHMS:
            raise tokens.error(
                "hashAlgorithm",
                f"{algorithm!r} is llm-d's own request-key hash; this EPP matches vLLM's block hashes, so "
                f"give the pods' --prefix-caching-hash-algo: one of {', '.join(HASH_ALGORITHMS)}",
            )
        if algorithm not in HASH_ALGORITHMS:
            raise tokens.error(
                "hashAlgorithm", f"must be one of {', '.join(HASH_ALGORITHMS)}; got {algorithm!r}"
            )
        tokens.finish()
        try:
            hasher = BlockHasher(
                algorithm, block_size, str(seed) if seed not in (None, "") else None, DigestMemo()
            )
        except ValueError as exc:
            raise tokens.error("hashSeed", str(exc)) from exc

        indexer = params.section("indexerConfig")
        if indexer.has("tokenizersPoolConfig"):
            indexer.raw("tokenizersPoolConfig")
            raise indexer.error("tokenizersPoolConfig", "is not supported: configure a token-producer plugin")
        block_index = indexer.section("kvBlockIndexConfig")
        for unsupported in ("redisConfig", "costAwareMemoryConfig"):
            if block_index.has(unsupported):
                block_index.raw(unsupported)
                raise block_index.error(
                    unsupported, "is not supported: the index is in memory (inMemoryConfig)"
                )
        memory = block_index.section("inMemoryConfig")
        size = memory.integer("size", DEFAULT_MAX_ENTRIES, minimum=1)
        memory.integer("podCacheSize", 10, minimum=1)
        memory.finish()
        block_index.boolean("enableMetrics", False)
        # A Go time.Duration upstream (llm-d-kv-cache kvblock.IndexConfig): numbers are nanoseconds.
        block_index.duration("metricsLoggingInterval", 0.0, nanoseconds=True)
        block_index.finish()
        weights = dict(DEFAULT_MEDIUM_WEIGHTS)
        for position, entry in enumerate(indexer.sequence("kvCacheBackendConfigs")):
            if (
                not isinstance(entry, Mapping)
                or not isinstance(entry.get("name"), str)
                or isinstance(entry.get("weight"), bool)
                or not isinstance(entry.get("weight"), int | float)
                or set(entry) - {"name", "weight"}
            ):
                raise indexer.error(
                    f"kvCacheBackendConfigs[{position}]",
                    f"must be {{name: <medium>, weight: <number>}}, got {entry!r}",
                )
            weights[entry["name"].lower()] = float(entry["weight"])
        indexer.finish()

        events = params.section("kvEventsConfig")
        if events.has("zmqEndpoint"):
            events.raw("zmqEndpoint")
            raise events.error(
                "zmqEndpoint",
                "(centralized mode) is not supported: vLLM connects out to one address, so several EPP "
                "replicas could not all see every pod's events; use per-pod subscription (discoverPods, "
                "podDiscoveryConfig.socketPort)",
            )
        events.string("engineType", "vllm", choices=("vllm",))
        if not events.boolean("discoverPods", True):
            raise events.error(
                "discoverPods", "false leaves nothing to subscribe to (centralized mode is not supported)"
            )
        topic_filter = events.raw("topicFilter")
        if topic_filter is None:
            topic_filter = "kv@"
        if not isinstance(topic_filter, str):
            raise events.error("topicFilter", f"must be a string, got {topic_filter!r}")
        events.integer("concurrency", 4, minimum=1)
        discovery = events.section("podDiscoveryConfig")
        socket_port = discovery.integer("socketPort", DEFAULT_SOCKET_PORT, minimum=1, maximum=65535)
        replay_port = discovery.integer("replaySocketPort", 0, minimum=0, maximum=65535) or None
        discovery.raw("podLabelSelector")
        discovery.raw("podNamespace")
        discovery.finish()
        replay_timeout = events.duration("replayTimeout", 2.0)
        events.finish()

        lora_paths = params.mapping("loraAdapterPaths")
        for adapter, path in lora_paths.items():
            if not isinstance(path, str) or not path:
                raise params.error(
                    "loraAdapterPaths", f"maps {adapter!r} to {path!r}; expected the adapter's path"
                )
        return cls(
            name,
            hasher=hasher,
            index=KVBlockIndex(max_entries=size),
            socket_port=socket_port,
            replay_port=replay_port,
            topic_filter=topic_filter,
            medium_weights=weights,
            speculative=params.boolean("speculativeIndexing", False),
            speculative_ttl=params.duration("speculativeTTL", 2.0),
            lora_paths=lora_paths,
            replay_timeout=replay_timeout,
        )

    def consumes(self) -> frozenset[str]:
        return frozenset({TOKENIZED_PROMPT})

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        self.tokens = find_token_producer(plugins, self)
        if not self.tokens.backend.exact:
            raise ConfigError(
                f"plugin {self.name!r} (type {self.type_name}) needs the engine's token ids, but "
                f"token-producer {self.tokens.name!r} uses the {self.tokens.backend.name} backend (byte "
                "estimates, which never match a KV event); configure its 'local', 'vllm' (modelName) or "
                "'simulator' backend"
            )

    # ---- request path ------------------------------------------------------------------------------

    def produce(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> None:
        assert self.tokens is not None, "resolve() not called"
        if self._expiries:
            self._expire(time.monotonic())
        prompt = tokenized_prompt(request, self.tokens.name)
        if prompt is not None and self._unpredictable(request, endpoints):
            self._lookups["unpredictable"].inc()
            request.state[self.name] = self._match([], len(prompt.token_ids), {}, None)
            return
        if prompt is None:
            self._lookups["no_tokens"].inc()
            # Keep the prompt length for the P/D deciders (an estimate, as nothing is cached).
            estimate = -(-len(request.prompt_text) // BYTES_PER_TOKEN)
            request.state[self.name] = self._match([], estimate, {}, None)
            return
        # Keys are computed lazily as the index walk draws them: the walk stops at the first block
        # no endpoint holds, so a long prompt with a short cached prefix hashes only that prefix
        # (speculative indexing computes the rest after the decision, off the critical path).
        keys: list[int] = []
        lazy = self.hasher.iter_keys(
            prompt.token_ids,
            lora=self._lora(request),
            cache_salt=_salt(request),
            record=keys,
            packed=prompt.packed,
        )
        matched = self.index.longest_prefix(lazy)
        lazy.close()  # the walk may have stopped early: the memo remembers what was computed
        weighted = None
        if matched and any(self.medium_weights.get(m, 1.0) != 1.0 for m in self.index.media()):
            weighted = self.index.weighted_prefix(keys, self.medium_weights)
        total = len(prompt.token_ids) // self.hasher.block_size
        self._lookups["hit" if matched else "miss" if total else "no_tokens"].inc()
        request.state[self.name] = self._match(keys, len(prompt.token_ids), matched, weighted, total)

    def _unpredictable(self, request: SchedulingRequest, endpoints: Sequence[Endpoint] = ()) -> bool:
        """Whether the request names a LoRA adapter whose path is not configured. vLLM keys an
        adapter's blocks with ("lora", name, path) (vllm/v1/core/kv_cache_utils.py,
        _gen_lora_extra_hash_keys), so without the path its keys cannot be computed; hashing the
        prompt as the base model's (what _lora falls back to) matched base-model blocks the
        adapter cannot use, and speculative indexing stored the adapter request's blocks as
        base-model ones. The director names the base model as the "adapter" too, so an adapter is
        told from it by the pods' vllm:lora_requests_info, remembered once seen."""
        adapter = request.lora_adapter
        if adapter is None or adapter in self.lora_paths:
            return False
        if adapter in self._adapters:
            return True
        for endpoint in endpoints:
            metrics_ = endpoint.metrics
            if adapter in metrics_.running_loras or adapter in metrics_.waiting_loras:
                if len(self._adapters) >= _MAX_REMEMBERED_ADAPTERS:
                    self._adapters.clear()
                self._adapters.add(adapter)
                return True
        return False

    def _lora(self, request: SchedulingRequest) -> tuple[str, str] | None:
        if request.lora_adapter is None:
            return None
        path = self.lora_paths.get(request.lora_adapter)
        return None if path is None else (request.lora_adapter, path)

    def _match(
        self,
        keys: list[int],
        tokens: int,
        matched: dict[str, int],
        weighted: dict[str, float] | None,
        total: int | None = None,
    ) -> PrefixMatch:
        block = self.hasher.block_size
        # Bytes stand in as 4 per token for the deprecated byte-threshold P/D decider.
        return PrefixMatch(
            hashes=keys,
            block_tokens=block,
            prompt_tokens=tokens,
            matched_blocks=matched,
            block_bytes=block * BYTES_PER_TOKEN,
            prompt_bytes=tokens * BYTES_PER_TOKEN,
            weighted_blocks=weighted,
            total_blocks=total,
        )

    def pre_request(self, request: SchedulingRequest, result: SchedulingResult) -> None:
        """With speculativeIndexing, the chosen endpoints hold the prompt's blocks until the TTL
        (the pods' own events take over as their prefills complete)."""
        if not self.speculative:
            return
        assert self.tokens is not None
        prompt = tokenized_prompt(request, self.tokens.name)
        if prompt is None or len(prompt.token_ids) < self.hasher.block_size or self._unpredictable(request):
            return
        # All of the prompt's blocks (the decision computed only what it looked up; the memo makes
        # that part a lookup here).
        keys = self.hasher.block_keys(
            prompt.token_ids, lora=self._lora(request), cache_salt=_salt(request), packed=prompt.packed
        )
        expiry = time.monotonic() + self.speculative_ttl
        for profile_result in result.results.values():
            if profile_result is not None and profile_result.targets:
                hostport = profile_result.targets[0].hostport
                if hostport in self._sources:
                    self.index.store(hostport, keys, SPECULATIVE_MEDIUM)
                    self._expiries.append((expiry, hostport, keys))
        metrics.KVEVENTS_INDEX_ENTRIES.set(self.index.size)

    def _expire(self, now: float) -> None:
        expiries = self._expiries
        if not expiries or expiries[0][0] > now:
            return
        while expiries and expiries[0][0] <= now:
            _, hostport, keys = expiries.popleft()
            self.index.remove(hostport, keys, SPECULATIVE_MEDIUM)
        metrics.KVEVENTS_INDEX_ENTRIES.set(self.index.size)

    async def _sweep(self) -> None:
        """Expire speculative entries when no request comes to do it (an idle pool)."""
        period = min(1.0, max(0.05, self.speculative_ttl / 2))
        while True:
            await asyncio.sleep(period)
            self._expire(time.monotonic())

    # ---- endpoints and events ----------------------------------------------------------------------

    def extract_endpoint(self, event: EndpointEvent) -> None:
        if event.added:
            replay = tcp_address(event.address, self.replay_port + event.rank) if self.replay_port else None
            source = EventSource(
                event.hostport, tcp_address(event.address, self.socket_port + event.rank), replay
            )
            self._sources[event.hostport] = source
            if self.subscriptions is not None:
                self.subscriptions.add_endpoint(event.hostport, source)
        else:
            self._sources.pop(event.hostport, None)
            if self.subscriptions is not None:
                self.subscriptions.remove_endpoint(event.hostport)
            else:
                self.index.remove_endpoint(event.hostport)

    async def start(self) -> None:
        self.subscriptions = KVEventSubscriptions(
            self.index,
            socket_port=self.socket_port,
            replay_port=self.replay_port,
            topic_filter=self.topic_filter,
            hasher=self.hasher,
            replay_timeout=self.replay_timeout,
        )
        for hostport, source in self._sources.items():
            self.subscriptions.add_endpoint(hostport, source)
        if self.speculative:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name=f"{self.name}: sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.subscriptions is not None:
            subscriptions, self.subscriptions = self.subscriptions, None
            await subscriptions.close()

    def describe(self) -> dict[str, Any]:
        """Operational state for logs and tests (llm-d's DumpState, without the index)."""
        return {
            "subscribers": sorted(self.subscriptions.endpoints()) if self.subscriptions else [],
            "blockSizeTokens": self.hasher.block_size,
            "hashAlgorithm": self.hasher.algorithm,
            "indexEntries": self.index.size,
            "speculativeEntries": len(self._expiries),
        }


def _salt(request: SchedulingRequest) -> str | None:
    salt = request.state.get("cache_salt")
    return salt if isinstance(salt, str) else None
