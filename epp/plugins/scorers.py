"""Load and LoRA scorers. Each returns one score in [0, 1] per endpoint, higher is better."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

from epp.datastore import Endpoint
from epp.plugins.datalayer import InflightLoadProducer
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import Plugin, SchedulingRequest, Scorer, uncached_prompt_tokens
from epp.scheduling.params import Params
from epp.scheduling.registry import register


def _min_max_inverted(values: Sequence[float]) -> list[float]:
    """Lowest value → 1.0, highest → 0.0, linear between; all equal → 1.0 each."""
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    span = high - low
    return [(high - value) / span for value in values]


def _in_flight_producer(params: Params) -> str | None:
    """llm-d-router's ``inFlightLoadProducerName`` (active-request and token-load scorers): which
    inflight-load-producer's counts to read. This EPP keeps one set of counts, in the director, so
    the name only has to refer to a configured inflight-load-producer."""
    return params.string("inFlightLoadProducerName", "") or None


def _check_in_flight_producer(owner: Plugin, wanted: str | None, plugins: Mapping[str, Plugin]) -> None:
    if wanted is not None and not isinstance(plugins.get(wanted), InflightLoadProducer):
        raise ConfigError(
            f"plugin {owner.name!r} (type {owner.type_name}): inFlightLoadProducerName {wanted!r} "
            "is not a configured inflight-load-producer"
        )


class _Stateless(Scorer):
    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router's factories of these scorers never decode parameters: any are accepted.
        params.ignore_all()
        return cls(name)


@register("queue-scorer")
class QueueScorer(_Stateless):
    """Shorter queue scores higher (min-max over the candidates). The queue is the scraped
    ``vllm:num_requests_waiting`` or, when larger, the requests this EPP sent there that have not
    answered a byte yet (:attr:`Endpoint.queue_depth`): a burst between two scrapes would otherwise
    see every queue as it was up to a scrape interval ago and herd onto one endpoint."""

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        return _min_max_inverted([endpoint.queue_depth for endpoint in endpoints])


@register("running-requests-size-scorer")
class RunningRequestsScorer(_Stateless):
    """Fewer running requests on the model server scores higher (min-max over the candidates)."""

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        return _min_max_inverted([endpoint.metrics.running for endpoint in endpoints])


@register("kv-cache-utilization-scorer")
class KvCacheUtilizationScorer(_Stateless):
    """Less KV-cache in use on the model server scores higher: ``1 - kv_cache_usage``."""

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        # kv_usage is clamped to [0, 1] when scraped, so no clamping is needed here.
        return [1.0 - endpoint.metrics.kv_usage for endpoint in endpoints]


@register("load-aware-scorer")
class LoadAwareScorer(Scorer):
    """llm-d's shape on the request queue: empty queue → 0.5, at or above ``threshold`` → 0,
    linear in between, so an idle pod never outweighs a full-weight cache hit. The queue is
    :attr:`Endpoint.queue_depth`, as for ``queue-scorer``: the scraped ``vllm:num_requests_waiting``
    (what llm-d reads) or, when larger, the requests this EPP sent there that have not answered a
    byte yet, so a burst between two scrapes counts at once. Requests already running (decoding)
    do not count, as in llm-d."""

    def __init__(self, name: str, threshold: int) -> None:
        super().__init__(name)
        self.threshold = threshold

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router scorer/loadaware/load_aware.go: QueueThresholdDefault = 128.
        return cls(name, params.integer("threshold", 128, minimum=1))

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        # llm-d-router scorer/loadaware/load_aware.go Score reads WaitingQueueSize; we read the
        # in-flight count until now, so a pod busy decoding scored as if its queue were full.
        threshold = self.threshold
        scores = []
        for endpoint in endpoints:
            queue = endpoint.queue_depth
            scores.append(0.5 * (1.0 - queue / threshold) if queue < threshold else 0.0)
        return scores


@register("lora-affinity-scorer")
class LoraAffinityScorer(_Stateless):
    """1.0 adapter active on the server; 0.8 room for one more adapter (or no LoRA information
    yet); 0.6 it is waiting there; 0 no room. The director names the request's target model as
    the adapter (llm-d matches that name), so on a pool without LoRA every endpoint scores the
    same; a request with no model scores 1.0.

    "Room" counts the adapters in the running and waiting lists once each: vLLM 0.32 fills both
    labels of ``vllm:lora_requests_info`` from the same set (the adapters with running requests;
    see tests/epp/scrape/fixtures/vllm-0.32-lora-busy.txt), so adding the two lengths counted every
    adapter twice and a server with one free slot looked full. llm-d-router's scorer
    (pkg/epp/framework/plugins/scheduling/scorer/loraaffinity) still adds the two lengths."""

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        adapter = request.lora_adapter
        if adapter is None:
            return [1.0] * len(endpoints)
        scores = []
        for endpoint in endpoints:
            metrics = endpoint.metrics
            running, waiting = metrics.running_loras, metrics.waiting_loras
            if adapter in running:
                scores.append(1.0)
            elif metrics.max_loras <= 0 or len(running | waiting) < metrics.max_loras:
                # max_lora 0 is no LoRA information, never a full server: vLLM needs max_loras >= 1
                # to enable LoRA, and with LoRA on it exports no vllm:lora_requests_info sample
                # until its first request (a new or restarted pod: every slot is free). Scored 0, as
                # llm-d-router's scorer does (0 + 0 < 0 is false), such a pod lost every adapter
                # request to busy ones. Without LoRA at all every pod reads 0: a uniform score.
                scores.append(0.8)
            elif adapter in waiting:
                scores.append(0.6)
            else:
                scores.append(0.0)
        return scores


@register("active-request-scorer")
class ActiveRequestScorer(Scorer):
    """llm-d's in-flight balancer on the director's exact in-flight counts: endpoints with at most
    ``idleThreshold`` requests score 1.0; busier ones ``maxBusyScore x (max - n) / max``, where max
    is the busiest candidate. ``requestTimeout`` (upstream's expiry for requests whose completion
    it never saw) is accepted and validated, but counts here are released on every completion."""

    def __init__(
        self, name: str, idle_threshold: int, max_busy_score: float, producer: str | None = None
    ) -> None:
        super().__init__(name)
        self.idle_threshold = idle_threshold
        self.max_busy_score = max_busy_score
        self.producer_name = producer

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        params.duration("requestTimeout", 120.0)
        # llm-d-router's active_request.go reads its counts from the named inflight-load-producer;
        # the director's own counts are those here (as for concurrency-detector).
        return cls(
            name,
            params.integer("idleThreshold", 0, minimum=0),
            params.number("maxBusyScore", 1.0, minimum=0.0, maximum=1.0),
            _in_flight_producer(params),
        )

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        _check_in_flight_producer(self, self.producer_name, plugins)

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        counts = [endpoint.in_flight for endpoint in endpoints]
        busiest = max(counts)
        idle, scale = self.idle_threshold, self.max_busy_score
        return [1.0 if n <= idle else (busiest - n) / busiest * scale for n in counts]


@register("token-load-scorer")
class TokenLoadScorer(Scorer):
    """llm-d's token-load scorer: ``1 - min(1, tokens / queueThresholdTokens)``, where tokens are
    the uncached prompt tokens this EPP sent to the endpoint that have not answered a byte yet
    (released at the first response byte, as llm-d's inflight-load-producer does without output
    estimates) plus this request's own prompt tokens not cached there (the prefix producer's
    match; the whole prompt without one). That is the prefill work the endpoint would have queued
    with this request, current to the request, so of two equally loaded endpoints the one caching
    more of the prompt scores higher. ``nonTextTokenWeight`` is accepted and validated; this EPP
    counts no multimodal tokens, so it weighs nothing."""

    def __init__(self, name: str, threshold: int, producer: str | None = None) -> None:
        super().__init__(name)
        self.threshold = threshold
        self.producer_name = producer

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        params.number("nonTextTokenWeight", 1.0)
        # llm-d's default, 4 Mi tokens (128 requests of 32K tokens): on small prompts every
        # endpoint then scores ~1.0; set it near the pool's prefill knee.
        return cls(
            name, params.integer("queueThresholdTokens", 4_194_304, minimum=1), _in_flight_producer(params)
        )

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        _check_in_flight_producer(self, self.producer_name, plugins)

    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        threshold = self.threshold
        # llm-d-router scorer/tokenload/token_load.go Score adds UncachedRequestTokens, which
        # dataproducer/inflightload/producer.go Produce sets per endpoint to this request's input
        # tokens less the prefix-cache match there (uncachedInputTokens).
        own = uncached_prompt_tokens(request.prompt_text, request.state, [e.hostport for e in endpoints])
        loads = [endpoint.pending_tokens + tokens for endpoint, tokens in zip(endpoints, own, strict=True)]
        return [1.0 - load / threshold if load < threshold else 0.0 for load in loads]
