"""Saturation detectors (llm-d defaults): ``utilization-detector`` on scraped model-server metrics,
``concurrency-detector`` on the EPP's own in-flight counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from epp.datastore import Endpoint
from epp.scheduling.framework import Filter, SaturationDetector, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.registry import register


@register("utilization-detector")
class UtilizationDetector(SaturationDetector, Filter):
    """Endpoint saturation = max(queue / queueDepthThreshold, kv / kvCacheUtilThreshold) (queue:
    :attr:`Endpoint.queue_depth`, the scraped waiting queue or the EPP's own count if larger); an
    endpoint whose metrics are older than ``metricsStalenessThreshold`` (or whose last scrape
    failed) counts as fully saturated (fail-closed). Pool saturation is the mean over endpoints;
    the pool is saturated at >= 1. As a filter it keeps endpoints with fresh metrics below
    ``queueDepthThreshold x (1 + headroom)`` and ``kvCacheUtilThreshold x (1 + headroom)``, or
    every endpoint when none is (fail-open, as in llm-d)."""

    def __init__(self, name: str, queue_depth: float, kv_util: float, staleness: float, headroom: float):
        super().__init__(name)
        self.queue_depth = queue_depth
        self.kv_util = kv_util
        self.staleness = staleness
        self.headroom = headroom

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        return cls(
            name,
            queue_depth=params.number("queueDepthThreshold", 5, minimum=1e-9),
            kv_util=params.number("kvCacheUtilThreshold", 0.8, minimum=1e-9, maximum=1.0),
            staleness=params.duration("metricsStalenessThreshold", 0.2),
            headroom=params.number("headroom", 0.0, minimum=0.0),
        )

    def endpoint_saturation(self, endpoint: Endpoint, now: float) -> float:
        if not endpoint.metrics_fresh(now, self.staleness):
            return 1.0
        # queue_depth: the scraped queue, or this EPP's own unanswered dispatches when larger, so
        # the gate closes on a burst before the next scrape shows it.
        return max(endpoint.queue_depth / self.queue_depth, endpoint.metrics.kv_usage / self.kv_util)

    def pool_saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        if not endpoints:
            return 1.0
        return sum(self.endpoint_saturation(e, now) for e in endpoints) / len(endpoints)

    def is_saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        # llm-d-router requestcontrol/admission.go rejectIfSheddableAndSaturated: Saturation >= 1.0;
        # headroom is only the filter's per-endpoint burst allowance (utilization/detector.go).
        return self.pool_saturation(endpoints, now) >= 1.0

    def filter(self, request: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        # llm-d-router saturationdetector/utilization/detector.go Filter: stale endpoints and
        # those at either limit x (1 + headroom) are dropped; if that drops all, none is.
        queue_limit = self.queue_depth * (1.0 + self.headroom)
        kv_limit = self.kv_util * (1.0 + self.headroom)
        now = request.now
        kept = [
            e
            for e in endpoints
            if e.metrics_fresh(now, self.staleness)
            and e.queue_depth < queue_limit
            and e.metrics.kv_usage < kv_limit
        ]
        return kept or endpoints


@register("concurrency-detector")
class ConcurrencyDetector(SaturationDetector, Filter):
    """Saturation from the EPP's own in-flight counts, current to the request (scraped metrics lag
    by up to a refresh interval). ``concurrencyMode``:

    * ``requests``: pool saturation = requests in flight / (endpoints x ``maxConcurrency``);
    * ``tokens``: uncached prompt tokens not yet answered / (endpoints x ``maxTokenConcurrency``),
      i.e. the prefill work queued in the pool (llm-d's inflight-load-producer releases prompt
      tokens at the first response byte), which decode-phase requests do not inflate;
    * ``hybrid``: the mean over endpoints of each one's larger ratio (requests or tokens), so
      one endpoint full of requests and another full of tokens make a saturated pool.

    As a filter it drops endpoints at ``int(limit x (1 + headroom))`` in either counted dimension
    (no fail-open, as in llm-d; pkg/epp/framework/plugins/flowcontrol/saturationdetector/concurrency)."""

    reads_in_flight = True

    def __init__(
        self,
        name: str,
        max_concurrency: int,
        headroom: float,
        mode: str = "requests",
        max_tokens: int = 1_000_000,
    ) -> None:
        super().__init__(name)
        self.max_concurrency = max_concurrency
        self.max_tokens = max_tokens
        self.headroom = headroom
        self.mode = mode
        self.count_requests = mode in ("requests", "hybrid")
        self.count_tokens = mode in ("tokens", "hybrid")
        # llm-d-router concurrency/detector.go Filter truncates the limits to int64.
        self.limit = int(max_concurrency * (1.0 + headroom))
        self.token_limit = int(max_tokens * (1.0 + headroom))

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        params.string("inFlightLoadProducerName", "inflight-load-producer")
        return cls(
            name,
            max_concurrency=params.integer("maxConcurrency", 100, minimum=1),
            headroom=params.number("headroom", 0.0, minimum=0.0),
            mode=params.string("concurrencyMode", "requests", choices=("requests", "tokens", "hybrid")),
            max_tokens=params.integer("maxTokenConcurrency", 1_000_000, minimum=1),
        )

    def pool_saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        if not endpoints:
            return 1.0
        if self.count_requests and self.count_tokens:
            # llm-d-router concurrency/detector.go Saturation, modeHybrid: the mean of each
            # endpoint's larger ratio, not the larger of the two pool ratios.
            requests, tokens = self.max_concurrency, self.max_tokens
            return sum(max(e.in_flight / requests, e.pending_tokens / tokens) for e in endpoints) / len(
                endpoints
            )
        if self.count_requests:
            return sum(e.in_flight for e in endpoints) / (len(endpoints) * self.max_concurrency)
        return sum(e.pending_tokens for e in endpoints) / (len(endpoints) * self.max_tokens)

    def is_saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        return self.pool_saturation(endpoints, now) >= 1.0

    def filter(self, request: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        limit, token_limit = self.limit, self.token_limit
        if not self.count_tokens:
            return [e for e in endpoints if e.in_flight < limit]
        if not self.count_requests:
            return [e for e in endpoints if e.pending_tokens < token_limit]
        return [e for e in endpoints if e.in_flight < limit and e.pending_tokens < token_limit]
