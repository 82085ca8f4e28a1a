"""The flow controller: queues requests per priority band and flow, and dispatches them to the
scheduler while the saturation detector says the pool has room.

Behaviour follows llm-d-router's ``pkg/epp/flowcontrol`` (controller/internal/processor.go):

* **Enqueue.** A request joins its flow's queue in its priority band unless the band, or the global
  limit, is full: then it is rejected at once (``RejectedCapacity`` → 429; with an empty pool
  ``RejectedNoEndpoints`` → 503).
* **Dispatch cycle.** The pool saturation is the maximum over its stages (prefill pods, decode pods;
  an empty pool reads 1.0). Bands are visited from the highest priority down; once the saturation
  reaches a band's usage-limit ceiling the cycle stops (head-of-line blocking: lower bands never
  pass a blocked higher one). Otherwise the band's fairness policy picks a flow and the head of
  that flow (ordering policy) is dispatched. One request per cycle.
* **Expiry.** A queued request is evicted when its queue-wait budget runs out: ``defaultRequestTTL``
  while the pool has endpoints (``EvictedTTL`` → 429), ``noEndpointRequestTTL`` while it has none
  (``EvictedNoEndpoints`` → 503). A change of regime starts a fresh budget. Zero means no budget.
* **Cancellation.** A client that goes away (its stream task is cancelled) leaves the queue at
  once, releasing its place and bytes (``EvictedContextCancelled``).

Asyncio instead of llm-d's goroutines: a waiting request awaits a future; one dispatcher task runs
the cycles, woken by arrivals, completions (:meth:`notify`), its next deadline, or a short tick
while it is blocked (scraped metrics change without telling anyone). After each dispatch it yields
once, so the woken request reaches the scheduler (and its in-flight count) before the next cycle
reads the saturation again: a detector on in-flight counts never sees a stale pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from epp import metrics as m
from epp.datastore import Endpoint
from epp.flowcontrol.config import BandConfig, FlowControlConfig
from epp.flowcontrol.framework import BandView, ItemState, QueueItem

log = logging.getLogger(__name__)

ROLE_LABEL = "llm-d.ai/role"
# llm-d's partition of the pool by role label (processor.go partitionEndpoints): pods serving both
# stages count in both; encode-only and unknown roles in neither; no label means decode.
_PREFILL_ROLES = frozenset({"prefill", "encode-prefill"})
_DECODE_ROLES = frozenset({"decode", ""})
_BOTH_ROLES = frozenset({"prefill-decode", "both", "encode-prefill-decode"})
# While blocked, the dispatcher re-checks the gate this often: scraped metrics change without telling
# anyone (every 50 ms by default), completions and arrivals wake it at once.
DEFAULT_TICK = 0.005
# A band provisioned for an unlisted priority is dropped after this long empty, as llm-d's registry
# does (PriorityBandGCTimeout, 10 min): the set of bands decides the usage-limit ceilings.
BAND_IDLE_TIMEOUT = 600.0
# Departed entries the TTL heap may hold beyond as many as it has live ones (_compact_deadlines).
_DEADLINE_SLACK = 64


class Outcome(Enum):
    """llm-d's QueueOutcome (flowcontrol/types/outcomes.go); the value is its metric label."""

    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_NO_ENDPOINTS = "RejectedNoEndpoints"
    REJECTED_OTHER = "RejectedOther"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_NO_ENDPOINTS = "EvictedNoEndpoints"
    EVICTED_CONTEXT_CANCELLED = "EvictedContextCancelled"
    EVICTED_OTHER = "EvictedOther"


class FlowControlRejected(Exception):
    """The request was not dispatched; ``outcome`` says why (the director maps it to 429/503)."""

    def __init__(self, outcome: Outcome, message: str, *, shutting_down: bool = False) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.shutting_down = shutting_down


@dataclass(frozen=True, slots=True)
class FlowRequest:
    """What flow control needs to know about a request."""

    request_id: str
    fairness_id: str
    priority: int
    byte_size: int = 0
    received_at: float | None = None  # defaults to the enqueue time
    headers: Mapping[str, str] = field(default_factory=dict)
    model_name: str = ""
    target_model_name: str = ""


class _Band:
    __slots__ = ("bytes", "config", "configured", "last_used", "length", "view")

    def __init__(self, config: BandConfig, configured: bool, now: float) -> None:
        self.config = config
        self.configured = configured  # listed in priorityBands (never collected)
        self.view = BandView(config.priority, config.ordering, config.fairness.new_state())
        self.length = 0
        self.bytes = 0
        self.last_used = now


class FlowController:
    def __init__(
        self,
        config: FlowControlConfig,
        endpoints: Callable[[], Sequence[Endpoint]],
        *,
        pool_name: str = "",
        clock: Callable[[], float] = time.monotonic,
        tick: float = DEFAULT_TICK,
        dispatcher: bool = True,
        labels: m.FlowLabels | None = None,
    ) -> None:
        """``dispatcher=False``: no background task; the caller drives :meth:`dispatch_cycle` and
        :meth:`expire` (deterministic tests on an injected ``clock``). ``labels`` bounds the
        request-derived label values (default: the process-wide :data:`epp.metrics.FLOW_LABELS`)."""
        self.config = config
        self.labels = labels if labels is not None else m.FLOW_LABELS
        self._dispatcher = dispatcher
        self._endpoints = endpoints
        self.pool_name = pool_name
        self._clock = clock
        self.tick = tick
        self._bands: dict[int, _Band] = {}
        self._order: list[int] = []  # band priorities, highest first
        for priority in sorted(config.bands):
            self._bands[priority] = _Band(config.bands[priority], True, clock())
        self._order = sorted(self._bands, reverse=True)
        self._length = 0
        self._bytes = 0
        self._seq = 0
        self._deadlines: list[tuple[float, int, QueueItem]] = []
        self._pool_empty = False
        self._regime_since = clock()
        self._partition_of: tuple[Endpoint, ...] | None = None
        self._stages: tuple[list[Endpoint], list[Endpoint]] = ([], [])
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_collection = clock()
        self._saturation_gauges = {
            stage: m.FLOW_POOL_SATURATION.labels(pool_name, stage)
            for stage in ("prefill", "decode", "effective")
        }
        # labels() validates and locks on every call: look each series up once (label values are
        # bounded: FlowLabels caps the request-derived ones and their combinations).
        self._series: dict[tuple[object, tuple[str, ...]], Any] = {}
        self.last_saturation = 1.0

    # ---- the public surface ------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return self._length

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def deadline_entries(self) -> int:
        """Entries in the TTL heap, live or departed (see _compact_deadlines)."""
        return len(self._deadlines)

    def flow_lengths(self) -> dict[tuple[int, str], int]:
        """Queued requests per (priority, fairness id)."""
        return {
            (priority, fid): len(queue)
            for priority, band in self._bands.items()
            for fid, queue in band.view.flows.items()
            if len(queue)
        }

    async def admit(self, request: FlowRequest) -> None:
        """Return when the request may be scheduled; raise :class:`FlowControlRejected` when it is
        rejected or evicted. Cancellation (the client went away) removes it from the queue first."""
        item = self.enqueue(request)
        if item.state is ItemState.DISPATCHED:
            return
        if item.state is ItemState.QUEUED:
            self._ensure_dispatcher()
            try:
                assert item.future is not None
                await item.future
            except asyncio.CancelledError:
                if item.state is ItemState.QUEUED:
                    self._finalize(item, Outcome.EVICTED_CONTEXT_CANCELLED)
                raise
        if item.outcome is not Outcome.DISPATCHED:
            raise self._rejection(item)

    def enqueue(self, request: FlowRequest) -> QueueItem:
        """Synchronous part of :meth:`admit`: capacity check, then queue. With nothing else queued
        the new request gets a dispatch cycle at once, so an idle pool adds no wait."""
        started = time.perf_counter()
        now = self._clock()
        self._observe_regime(now)
        band = self._band(request.priority, now)
        self._seq += 1
        item = QueueItem(
            request_id=request.request_id,
            fairness_id=request.fairness_id,
            priority=request.priority,
            byte_size=max(0, request.byte_size),
            received_at=now if request.received_at is None else request.received_at,
            enqueued_at=now,
            seq=self._seq,
            ttl=self.config.default_request_ttl,
            headers=request.headers,
            model_name=request.model_name,
            target_model_name=request.target_model_name,
        )
        # Once per request: every series it touches uses the same bounded values (gauges balance).
        item.labels = self.labels(item.fairness_id, item.model_name, item.target_model_name)
        if self._closed:
            self._finalize(item, Outcome.REJECTED_OTHER, queued=False)
        elif not self._has_capacity(band, item.byte_size):
            outcome = Outcome.REJECTED_NO_ENDPOINTS if self._pool_empty else Outcome.REJECTED_CAPACITY
            self._finalize(item, outcome, queued=False)
        else:
            item.key = band.config.ordering.key(item)
            self._push(band, item, now)
            if self._length == 1:
                self.dispatch_cycle(now)
            if item.state is ItemState.QUEUED:
                # Still waiting: now it counts in the queue gauges (an item dispatched within its
                # own enqueue never does, which keeps the idle-pool path cheap).
                item.gauged = True
                self._queue_gauges(item, 1)
                self._capacity_gauges(band)
                item.future = asyncio.get_running_loop().create_future()
                self.notify()
        self._series_of(
            m.FLOW_ENQUEUE_DURATION,
            item.labels[0],
            str(item.priority),
            self._enqueue_label(item),
        ).observe(time.perf_counter() - started)
        return item

    def notify(self) -> None:
        """Something that may open the gate happened (a request finished, the pool changed)."""
        if self._wake is not None:
            self._wake.set()

    def dispatch_cycle(self, now: float | None = None) -> bool:
        """Dispatch at most one request; True if one was."""
        started = time.perf_counter()
        try:
            return self._dispatch_cycle(self._clock() if now is None else now)
        finally:
            m.FLOW_DISPATCH_CYCLE.observe(time.perf_counter() - started)

    def expire(self, now: float | None = None) -> int:
        """Evict every queued request whose budget has run out; returns how many."""
        now = self._clock() if now is None else now
        self._observe_regime(now)
        evicted = 0
        heap = self._deadlines
        outcome = Outcome.EVICTED_NO_ENDPOINTS if self._pool_empty else Outcome.EVICTED_TTL
        while heap and (heap[0][2].state is not ItemState.QUEUED or heap[0][0] <= now):
            _, _, item = heapq.heappop(heap)
            if item.state is ItemState.QUEUED:
                self._finalize(item, outcome)
                evicted += 1
        return evicted

    def next_deadline(self) -> float:
        heap = self._deadlines
        while heap and heap[0][2].state is not ItemState.QUEUED:
            heapq.heappop(heap)
        return heap[0][0] if heap else float("inf")

    async def close(self) -> None:
        """Stop dispatching; every queued request is answered (503, shutting down)."""
        self._closed = True
        for band in self._bands.values():
            for queue in list(band.view.flows.values()):
                for item in queue.items():
                    self._finalize(item, Outcome.EVICTED_OTHER)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- dispatch ----------------------------------------------------------------------------
    def _dispatch_cycle(self, now: float) -> bool:
        saturation = self._saturation(now)
        if self._length == 0:
            return False
        ceilings = self.config.usage_limit.ceilings(saturation, self._order)
        for priority, ceiling in zip(self._order, ceilings, strict=True):
            if saturation >= ceiling:
                return False  # head-of-line blocking: no lower band may pass this one
            band = self._bands[priority]
            if band.length == 0:
                continue
            queue = band.config.fairness.pick(band.view)
            head = queue.peek() if queue is not None else None
            if head is None:
                continue
            self._finalize(head, Outcome.DISPATCHED)
            return True
        return False

    def _saturation(self, now: float) -> float:
        pool = tuple(self._endpoints())
        self._observe_regime(now, pool)
        if pool is not self._partition_of:
            self._partition_of = pool
            self._stages = _partition(pool)
        detector = self.config.detector
        saturation = -1.0
        for stage, part in zip(("prefill", "decode"), self._stages, strict=True):
            if part:
                value = detector.pool_saturation(part, now)
                self._saturation_gauges[stage].set(value)
                saturation = max(saturation, value)
        if saturation < 0:
            saturation = detector.pool_saturation(pool, now)
        self._saturation_gauges["effective"].set(saturation)
        self.last_saturation = saturation
        return saturation

    def _observe_regime(self, now: float, pool: Sequence[Endpoint] | None = None) -> None:
        empty = not (self._endpoints() if pool is None else pool)
        if empty == self._pool_empty:
            return
        self._pool_empty = empty
        self._regime_since = now
        # A new regime starts every queued request's budget afresh (llm-d processor.go isExpired).
        budget = self.config.no_endpoint_request_ttl if empty else self.config.default_request_ttl
        deadlines = []
        for band in self._bands.values():
            for queue in band.view.flows.values():
                for item in queue.items():
                    item.deadline = now + budget if budget > 0 else float("inf")
                    deadlines.append((item.deadline, item.seq, item))
        heapq.heapify(deadlines)
        self._deadlines = deadlines

    # ---- queue bookkeeping -------------------------------------------------------------------
    def _band(self, priority: int, now: float) -> _Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = _Band(self.config.band_for(priority), False, now)
            self._order = sorted(self._bands, reverse=True)
        band.last_used = now
        return band

    def collect_idle_bands(self, now: float | None = None) -> list[int]:
        """Drop the unlisted bands that have been empty for BAND_IDLE_TIMEOUT; returns their priorities."""
        now = self._clock() if now is None else now
        idle = [
            priority
            for priority, band in self._bands.items()
            if not band.configured and band.length == 0 and now - band.last_used >= BAND_IDLE_TIMEOUT
        ]
        for priority in idle:
            del self._bands[priority]
        if idle:
            self._order = sorted(self._bands, reverse=True)
        return idle

    def _has_capacity(self, band: _Band, size: int) -> bool:
        config = self.config
        if config.max_bytes and self._bytes + size > config.max_bytes:
            return False
        if config.max_requests and self._length + 1 > config.max_requests:
            return False
        if band.bytes + size > band.config.max_bytes:
            return False
        return band.length + 1 <= band.config.max_requests

    def _push(self, band: _Band, item: QueueItem, now: float) -> None:
        band.view.push(item)
        band.length += 1
        band.bytes += item.byte_size
        self._length += 1
        self._bytes += item.byte_size
        budget = self.config.no_endpoint_request_ttl if self._pool_empty else item.ttl
        start = max(now, self._regime_since)
        item.deadline = start + budget if budget > 0 else float("inf")
        if item.deadline != float("inf"):
            heapq.heappush(self._deadlines, (item.deadline, item.seq, item))

    def _finalize(self, item: QueueItem, outcome: Outcome, *, queued: bool = True) -> None:
        """``item`` leaves flow control with ``outcome``; wakes its waiter."""
        item.outcome = outcome
        if queued and item.state is ItemState.QUEUED:
            band = self._bands[item.priority]
            item.state = ItemState.DISPATCHED if outcome is Outcome.DISPATCHED else ItemState.FINALIZED
            band.view.discard(item)
            band.length -= 1
            band.bytes -= item.byte_size
            band.last_used = self._clock()
            self._length -= 1
            self._bytes -= item.byte_size
            if item.gauged:
                self._queue_gauges(item, -1)
                self._capacity_gauges(band)
            if len(self._deadlines) > 2 * self._length + _DEADLINE_SLACK:
                self._compact_deadlines()
        else:
            item.state = ItemState.DISPATCHED if outcome is Outcome.DISPATCHED else ItemState.FINALIZED
        priority = str(item.priority)
        self._series_of(m.FLOW_REQUESTS, outcome.value, priority, self.pool_name).inc()
        self._series_of(
            m.FLOW_QUEUE_DURATION,
            item.labels[0],
            priority,
            outcome.value,
            self.pool_name,
            item.labels[1],
            item.labels[2],
        ).observe(max(0.0, self._clock() - item.enqueued_at))
        if item.future is not None and not item.future.done():
            item.future.set_result(None)
        if outcome is not Outcome.DISPATCHED and outcome is not Outcome.EVICTED_CONTEXT_CANCELLED:
            log.debug("request %s left flow control: %s", item.request_id, outcome.value)

    def _compact_deadlines(self) -> None:
        """Drop the entries of requests that left. ``expire`` pops departed entries only from the
        heap's head, so behind one request that waits (a held-back band, for up to its TTL) every
        request that queued and left since, dispatched or cancelled, stayed referenced with its
        headers: memory growing with the request rate times the TTL. Rebuilt only once departed
        entries outnumber live ones (plus slack), so the cost per request stays O(1) amortized."""
        self._deadlines = [entry for entry in self._deadlines if entry[2].state is ItemState.QUEUED]
        heapq.heapify(self._deadlines)

    def _queue_gauges(self, item: QueueItem, sign: int) -> None:
        fairness, model, target = item.labels
        labels = (fairness, str(item.priority), self.pool_name, model, target)
        self._series_of(m.FLOW_QUEUE_SIZE, *labels).inc(sign)
        self._series_of(m.FLOW_QUEUE_BYTES, *labels).inc(sign * item.byte_size)

    def _capacity_gauges(self, band: _Band) -> None:
        priority = str(band.config.priority)
        self._series_of(m.FLOW_CAPACITY_REQUESTS, priority, self.pool_name).set(
            band.length / band.config.max_requests
        )
        self._series_of(m.FLOW_CAPACITY_BYTES, priority, self.pool_name).set(
            band.bytes / band.config.max_bytes
        )
        if self.config.max_requests:
            m.FLOW_GLOBAL_CAPACITY_REQUESTS.labels(self.pool_name).set(
                self._length / self.config.max_requests
            )
        if self.config.max_bytes:
            m.FLOW_GLOBAL_CAPACITY_BYTES.labels(self.pool_name).set(self._bytes / self.config.max_bytes)

    def _series_of(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return series

    def _enqueue_label(self, item: QueueItem) -> str:
        if item.state is ItemState.QUEUED:
            return "NotYetFinalized"
        return str(item.outcome.value)

    def _rejection(self, item: QueueItem) -> FlowControlRejected:
        outcome = item.outcome
        texts = {
            Outcome.REJECTED_CAPACITY: "queue at capacity",
            Outcome.REJECTED_NO_ENDPOINTS: "queue at capacity and no endpoints are available",
            Outcome.EVICTED_TTL: "request timed out in queue",
            Outcome.EVICTED_NO_ENDPOINTS: "request timed out in queue and no endpoints are available",
            Outcome.EVICTED_CONTEXT_CANCELLED: "client disconnected",
        }
        if self._closed and outcome in (Outcome.REJECTED_OTHER, Outcome.EVICTED_OTHER):
            return FlowControlRejected(outcome, "flow controller shutting down", shutting_down=True)
        return FlowControlRejected(outcome, texts.get(outcome, "request rejected by flow control"))

    # ---- the dispatcher task -----------------------------------------------------------------
    def _ensure_dispatcher(self) -> None:
        if self._dispatcher and (self._task is None or self._task.done()):
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flow-control dispatcher")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        while not self._closed:
            wake.clear()
            now = self._clock()
            try:
                self.expire(now)
                if now - self._last_collection >= BAND_IDLE_TIMEOUT / 10:
                    self._last_collection = now
                    self.collect_idle_bands(now)
                dispatched = bool(self._length) and self.dispatch_cycle(now)
            except Exception:
                # A failing plugin must not strand the queue: log, and try again after a tick (the
                # requests still leave by their TTL or their client's timeout).
                log.exception("flow-control dispatch cycle failed")
                dispatched = False
            if dispatched:
                # Let the dispatched request reach the scheduler before the next cycle.
                await asyncio.sleep(0)
                continue
            if self._length == 0:
                await wake.wait()
                continue
            delay = min(self.tick, max(0.0, self.next_deadline() - now))
            timer = loop.call_later(delay, wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()


def _partition(pool: Sequence[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
    prefill: list[Endpoint] = []
    decode: list[Endpoint] = []
    for endpoint in pool:
        role = endpoint.labels.get(ROLE_LABEL, "")
        if role in _PREFILL_ROLES:
            prefill.append(endpoint)
        elif role in _DECODE_ROLES:
            decode.append(endpoint)
        elif role in _BOTH_ROLES:
            prefill.append(endpoint)
            decode.append(endpoint)
    return prefill, decode
