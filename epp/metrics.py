"""Every Prometheus series the EPP exports, and the HTTP endpoint that serves them (``--metrics-port``).

Two groups live here: the scheduling core's series (module-level, in prometheus_client's default
registry: decisions, picks, rejections by the director, scrapes, pool saturation) and the protocol
layer's request-level series (:class:`ServerMetrics`, one registry per server so tests can make
their own). :class:`MetricsHttpServer` serves both registries on one page.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

# ---- scheduling core (default registry) -------------------------------------------------------
DECISION_SECONDS = Histogram(
    "epp_scheduler_decision_duration_seconds",
    "Time from a parsed request to a scheduling decision (admission, scheduling, pre-request hooks).",
    buckets=(25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.1),
)
PICKS = Counter(
    "epp_scheduler_picks_total",
    "Requests scheduled to an endpoint, by profile (e.g. decode / prefill).",
    ["endpoint", "profile"],
)
REJECTIONS = Counter(
    "epp_scheduler_rejections_total",
    "Requests the director refused, by HTTP status and drop reason.",
    ["status", "reason"],
)
IN_FLIGHT = Gauge("epp_scheduler_in_flight_requests", "Requests scheduled and not yet completed.")
POOL_SATURATION = Gauge(
    "epp_pool_saturation", "Pool saturation from the saturation detector (>= 1 saturated)."
)
SCRAPE_SECONDS = Histogram(
    "epp_metrics_scrape_duration_seconds",
    "Wall time of one model-server /metrics scrape (fetch and parse).",
    buckets=(1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0),
)
SCRAPE_ERRORS = Counter(
    "epp_metrics_scrape_errors_total", "Failed model-server /metrics scrapes.", ["endpoint"]
)
SCRAPES_SKIPPED = Counter(
    "epp_metrics_scrapes_skipped_total",
    "Scrape ticks of quiet endpoints (idle, unchanged, nothing routed since) that reused the last page "
    "(--refresh-metrics-idle-interval).",
)
FILTERED_ENDPOINTS = Gauge(
    "epp_metrics_filtered_endpoints",
    "Endpoints scraped with a page filtered to the metrics the EPP reads (--metrics-name-filter), "
    "after it was checked against their full page.",
)
SCRAPE_TASK_RESTARTS = Counter(
    "epp_metrics_scrape_task_restarts_total",
    "Per-endpoint metrics poll tasks that ended unexpectedly and were restarted (a bug if ever > 0).",
)
ENDPOINTS = Gauge("epp_pool_endpoints", "Endpoints currently in the pool.")
DISCOVERY_INVALID_OBJECTS = Counter(
    "epp_discovery_invalid_objects_total",
    "Watched InferencePool/InferenceObjective/InferenceModelRewrite versions skipped for a bad spec "
    "(the warning log names the object and the field).",
    ["kind"],
)

# ---- flow control (default registry) ----------------------------------------------------------
# llm-d's names (llm-d-router pkg/epp/metrics/llm_d_router_metrics.go).
# llm-d emits these under the ``llm_d_epp`` subsystem only (no legacy twin for the newer ones).
# ``fairness_id`` and the model labels come from the request, so their values are capped (llm-d caps
# them at 1,000 distinct values each, pkg/epp/metrics/cardinality.go), and so are their combinations;
# see FlowLabels.
_MODEL_LABELS = ("model_name", "target_model_name")
FLOW_QUEUE_DURATION = Histogram(
    "llm_d_epp_flow_control_request_queue_duration_seconds",
    "Distribution of total time requests spend in the Flow Control layer (from enqueue to final outcome).",
    ["fairness_id", "priority", "outcome", "inference_pool", *_MODEL_LABELS],
    buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
FLOW_DISPATCH_CYCLE = Histogram(
    "llm_d_epp_flow_control_dispatch_cycle_duration_seconds",
    "Distribution of time taken for each internal dispatch cycle in the Flow Control layer.",
    buckets=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1),
)
FLOW_ENQUEUE_DURATION = Histogram(
    "llm_d_epp_flow_control_request_enqueue_duration_seconds",
    "Distribution of time taken to enqueue requests into the Flow Control layer.",
    ["fairness_id", "priority", "outcome"],
    buckets=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1),
)
FLOW_QUEUE_SIZE = Gauge(
    "llm_d_epp_flow_control_queue_size",
    "Current number of requests actively held in the Flow Control queue.",
    ["fairness_id", "priority", "inference_pool", *_MODEL_LABELS],
)
FLOW_QUEUE_BYTES = Gauge(
    "llm_d_epp_flow_control_queue_bytes",
    "Current total size in bytes of requests actively held in the Flow Control queue.",
    ["fairness_id", "priority", "inference_pool", *_MODEL_LABELS],
)
FLOW_POOL_SATURATION = Gauge(
    "llm_d_epp_flow_control_pool_saturation",
    "Pool saturation signal gating Flow Control dispatch, by stage (prefill, decode, and 'effective' = "
    "their maximum, the value compared with each band's usage limit; an empty pool reads 1.0).",
    ["inference_pool", "stage"],
)
FLOW_CAPACITY_REQUESTS = Gauge(
    "llm_d_epp_flow_control_capacity_utilization_requests",
    "Fraction of a priority band's request-count capacity currently occupied (0.0-1.0).",
    ["priority", "inference_pool"],
)
FLOW_CAPACITY_BYTES = Gauge(
    "llm_d_epp_flow_control_capacity_utilization_bytes",
    "Fraction of a priority band's byte-size capacity currently occupied (0.0-1.0).",
    ["priority", "inference_pool"],
)
FLOW_GLOBAL_CAPACITY_REQUESTS = Gauge(
    "llm_d_epp_flow_control_global_capacity_utilization_requests",
    "Fraction of the global request-count capacity occupied across all bands (only when one is configured).",
    ["inference_pool"],
)
FLOW_GLOBAL_CAPACITY_BYTES = Gauge(
    "llm_d_epp_flow_control_global_capacity_utilization_bytes",
    "Fraction of the global byte-size capacity occupied across all bands (only when one is configured).",
    ["inference_pool"],
)
FLOW_REQUESTS = Counter(
    "llm_d_epp_flow_control_requests",  # exported as llm_d_epp_flow_control_requests_total
    "Total number of requests processed by the Flow Control layer, by final outcome.",
    ["outcome", "priority", "inference_pool"],
)

OVERFLOW_LABEL = "other"
# Distinct (fairness_id, model_name, target_model_name) label sets the flow-control series may hold.
MAX_FLOW_LABEL_SETS = 1000
# Longer request-derived values report ``other``: a label value is written on every line of its series
# on every scrape, and a header may be tens of KiB (30 requests with 8 KiB ids grew the page by 13 MB).
# Kubernetes object names (what an operator names models and tenants after) are at most 253 characters.
MAX_LABEL_VALUE_LENGTH = 256
FLOW_LABEL_OVERFLOWS = Counter(
    "llm_d_epp_flow_control_label_overflows",  # exported as ..._overflows_total
    "Flow-control requests whose fairness id or model names were reported as 'other': past 1,000 "
    "distinct values of one label, 1,000 distinct combinations of the three, or longer than 256 characters.",
)


class BoundedLabel:
    """Caps the distinct values a request-derived label may take (a client picks its fairness id
    and model name); values past the cap collapse to ``other``. A value once admitted always maps
    to itself, so paired gauge increments and decrements stay balanced. Pinned values (names the
    operator configured) always keep their own label and take no slot, as llm-d's PreAdmitModelLabels
    (pkg/epp/metrics/cardinality.go): without that, a flood of made-up names sent before the first
    real request would report the served model as ``other`` for the life of the process."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._pinned: set[str] = set()

    def __call__(self, value: str) -> str:
        if not value or value in self._seen or value in self._pinned:
            return value
        if len(self._seen) >= self.limit or len(value) > MAX_LABEL_VALUE_LENGTH:
            return OVERFLOW_LABEL
        self._seen.add(value)
        return value

    def pin(self, values: Iterable[str]) -> None:
        """Never unpinned (as llm-d): a name dropped from the config keeps its series either way."""
        self._pinned.update(v for v in values if v)

    def pinned_or_other(self, value: str) -> str:
        return value if not value or value in self._pinned else OVERFLOW_LABEL

    def __len__(self) -> int:
        return len(self._seen) + len(self._pinned)


class FlowLabels:
    """The request-derived labels of the flow-control series: (fairness_id, model_name,
    target_model_name), each capped at ``limit`` values as llm-d caps them. llm-d caps them one by
    one only, so their product still reaches 1,000 x 1,000 histograms (a client sending 100,000
    requests with fresh (fairness id, model) pairs made 100,000 queue-duration series here). The
    combinations are capped too: past ``label_sets`` of them a new one reports its fairness id and
    any unpinned model name as ``other``, leaving at most (pinned names + 2)^2 overflow sets. The
    mapping of a combination never changes once made, so gauge pairs stay balanced."""

    def __init__(self, limit: int = 1000, label_sets: int = MAX_FLOW_LABEL_SETS) -> None:
        self.fairness = BoundedLabel(limit)
        self.model = BoundedLabel(limit)  # shared by both model labels, as llm-d's modelLabelLimiter
        self.label_sets = label_sets
        self._sets: set[tuple[str, str, str]] = set()
        self.overflows = 0

    def pin_models(self, names: Iterable[str]) -> None:
        self.model.pin(names)

    def __call__(self, fairness_id: str, model_name: str, target_model_name: str) -> tuple[str, str, str]:
        labels = (self.fairness(fairness_id), self.model(model_name), self.model(target_model_name))
        if labels not in self._sets:
            if len(self._sets) < self.label_sets:
                self._sets.add(labels)
            else:
                labels = (
                    OVERFLOW_LABEL,
                    self.model.pinned_or_other(labels[1]),
                    self.model.pinned_or_other(labels[2]),
                )
        if labels != (fairness_id, model_name, target_model_name):
            self.overflows += 1
            FLOW_LABEL_OVERFLOWS.inc()
        return labels

    def memory(self) -> int:
        """Entries held (values and combinations): bounded by 2 x limit + label_sets + pinned."""
        return len(self.fairness) + len(self.model) + len(self._sets)


# One per process, as llm-d's limiters: the series they bound are process-wide.
FLOW_LABELS = FlowLabels()


# ---- precise prefix cache: KV events from the model servers (default registry) ----------------
KVEVENTS_BATCHES = Counter(
    "epp_kvevents_batches_total",
    "KV-event batches applied to the index, by how they arrived (live or replay).",
    ["endpoint", "source"],
)
KVEVENTS_EVENTS = Counter(
    "epp_kvevents_events_total",
    "KV events applied, by type (BlockStored, BlockRemoved, AllBlocksCleared).",
    ["type"],
)
KVEVENTS_DROPPED = Counter(
    "epp_kvevents_dropped_total",
    "Frames, batches or events dropped, by reason (malformed payload, unknown event type, "
    "KV-cache group not indexed, medium past the limit, duplicate or stale sequence number).",
    ["reason"],
)
KVEVENTS_UNKNOWN_REMOVALS = Counter(
    "epp_kvevents_unknown_removals_total",
    "BlockRemoved keys the index did not hold (events missed before subscribing or bound-evicted).",
)
KVEVENTS_GAPS = Counter(
    "epp_kvevents_gaps_total",
    "Sequence gaps detected, by outcome (replayed: filled from the pod's replay buffer; "
    "resynced: the pod's entries were dropped).",
    ["outcome"],
)
KVEVENTS_MISSED_BATCHES = Counter(
    "epp_kvevents_missed_batches_total", "Batches missing from the sequence when gaps were detected."
)
KVEVENTS_REPLAYED_BATCHES = Counter(
    "epp_kvevents_replayed_batches_total", "Batches received from replay sockets."
)
KVEVENTS_RESYNCS = Counter(
    "epp_kvevents_resyncs_total",
    "Times an endpoint's index entries were dropped to resynchronise, by reason.",
    ["reason"],
)
KVEVENTS_RECONNECTS = Counter(
    "epp_kvevents_reconnects_total", "Subscriber connections re-established after a disconnect."
)
KVEVENTS_HASH_MISMATCHES = Counter(
    "epp_kvevents_hash_mismatch_total",
    "Chain-start BlockStored events whose keys differ from the EPP's own computation from their "
    "token ids: the EPP's hash algorithm, seed or block size does not match the pod's.",
)
KVEVENTS_LAG_SECONDS = Histogram(
    "epp_kvevents_lag_seconds",
    "Batch age when applied: local time minus the batch timestamp set by vLLM (includes clock skew "
    "between nodes).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
KVEVENTS_INDEX_ENTRIES = Gauge(
    "epp_kvevents_index_entries", "(block, endpoint, medium) entries in the precise prefix index."
)
KVEVENTS_INDEX_BLOCKS = Gauge("epp_kvevents_index_blocks", "Distinct (block, medium) keys in the index.")
KVEVENTS_INDEX_EVICTIONS = Counter(
    "epp_kvevents_index_evictions_total", "Entries evicted to keep the index within its memory bound."
)
KVEVENTS_ENDPOINT_ENTRIES = Gauge(
    "epp_kvevents_endpoint_entries", "Index entries held by each endpoint.", ["endpoint"]
)
KVEVENTS_SUBSCRIBERS = Gauge("epp_kvevents_subscribers", "Endpoints with an active KV-event subscription.")
KVEVENTS_LAST_SEQUENCE = Gauge(
    "epp_kvevents_last_sequence", "Last sequence number applied per endpoint.", ["endpoint"]
)
# Precise prefix routing's request path (token-producer, precise-prefix-cache-producer).
PREPARE_SECONDS = Histogram(
    "epp_scheduler_prepare_duration_seconds",
    "Asynchronous preparation before a decision (tokenization), for configs that have some.",
    buckets=(50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0),
)
PREPARE_FAILURES = Counter(
    "epp_scheduler_prepare_failures_total",
    "Preparations that raised (the request was scheduled without what they would have produced).",
    ["plugin"],
)
TOKENIZATION_SKIPPED = Counter(
    "epp_tokenization_skipped_total",
    "Requests a token-producer left untokenized (precise prefix routing then skips them), by reason.",
    ["plugin", "reason"],
)
PRECISE_LOOKUPS = Counter(
    "epp_precise_prefix_lookups_total",
    "Precise prefix-cache lookups, by outcome: hit (some endpoint holds block 0), miss, no_tokens "
    "(nothing to look up: untokenized or shorter than a block), unpredictable (LoRA without a path).",
    ["outcome"],
)


def kvevents_forget_endpoint(endpoint: str) -> None:
    """Drop a departed endpoint's KV-event series."""
    for gauge in (KVEVENTS_ENDPOINT_ENTRIES, KVEVENTS_LAST_SEQUENCE):
        with contextlib.suppress(KeyError):
            gauge.remove(endpoint)
    for source in ("live", "replay"):
        with contextlib.suppress(KeyError):
            KVEVENTS_BATCHES.remove(endpoint, source)


# ---- protocol layer (one registry per server) -------------------------------------------------

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
_SIZE_BUCKETS = tuple(float(2**n) for n in range(6, 25, 2))  # 64 B .. 16 MiB


class ServerMetrics:
    """Request-level metrics of the protocol layer. One instance per process (or per test registry).

    They are updated several times per request on the event loop thread, so they are the loop
    metrics below rather than prometheus_client's, which take a lock and scan the buckets on every
    update: a request's ten updates cost 12-21 µs of CPU with prometheus_client and 2-3.5 µs as loop
    metrics (timeit, interleaved, 2-core machine at load 2.8), about a tenth of what
    ``benchmarks.stream_cpu`` measures per request. The page they produce is the same
    (tests/epp/test_loop_metrics.py)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = LoopCounter(
            "epp_requests", "Requests handled, by the HTTP status the client got.", ("code",)
        )
        self.rejections = LoopCounter(
            "epp_rejected_requests",
            "Requests the EPP answered itself, by status and drop reason.",
            ("code", "reason"),
        )
        self.in_flight = LoopGauge("epp_requests_in_flight", "Requests between headers and response end.")
        self.duration = LoopHistogram(
            "epp_request_duration_seconds",
            "From request headers at the EPP to the end of the response.",
            _LATENCY_BUCKETS,
        )
        self.scheduling = LoopHistogram(
            "epp_scheduling_duration_seconds",
            "Time spent in the Director deciding where a request goes.",
            _LATENCY_BUCKETS,
        )
        self.ttft = LoopHistogram(
            "epp_time_to_first_token_seconds",
            "From request headers at the EPP to the first response body bytes.",
            _LATENCY_BUCKETS,
        )
        self.request_bytes = LoopHistogram("epp_request_body_bytes", "Request body sizes.", _SIZE_BUCKETS)
        self.response_bytes = LoopHistogram("epp_response_body_bytes", "Response body sizes.", _SIZE_BUCKETS)
        self.tokens = LoopCounter("epp_tokens", "Tokens reported in response usage.", ("kind",))
        self.stream_errors = LoopCounter(
            "epp_stream_errors", "ext_proc streams that ended by an unexpected error."
        )
        self.registry.register(
            LoopCollector(
                [
                    self.requests,
                    self.rejections,
                    self.in_flight,
                    self.duration,
                    self.scheduling,
                    self.ttft,
                    self.request_bytes,
                    self.response_bytes,
                    self.tokens,
                    self.stream_errors,
                ]
            )
        )


# ---- loop metrics ---------------------------------------------------------------------------------
# Counters, a gauge and histograms for values updated only on the event loop thread (the page is
# rendered on it too, by MetricsHttpServer), so no lock is taken: an update is an addition, a
# histogram's bucket is found by bisection. They expose exactly what prometheus_client's classes
# of the same kind expose (including the ``_created`` series).


class _LoopValue:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopCounter:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], _LoopValue] = {}
        self._unlabelled = _LoopValue() if not self.labelnames else None

    def labels(self, *values: str) -> _LoopValue:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
            child = self._children[values] = _LoopValue()
        return child

    def inc(self, amount: float = 1.0) -> None:
        if self._unlabelled is None:  # as prometheus_client refuses it (a ValueError)
            raise ValueError(f"{self.name} has labels {self.labelnames}: use labels(...).inc()")
        self._unlabelled.value += amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        items = self._children.items() if self._unlabelled is None else [((), self._unlabelled)]
        for values, child in items:
            family.add_metric(list(values), child.value, created=child.created)
        return family


class LoopGauge:
    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value

    def family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.documentation, value=self.value)


class LoopHistogram:
    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = sorted(float(b) for b in buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._created = time.time()

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative, buckets = 0, []
        for bound, count in zip([*self._bounds, math.inf], self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric([], buckets, self._sum)
        family.samples.append(Sample(self.name + "_created", {}, self._created))
        return family


class LoopCollector(Collector):
    def __init__(self, metrics: Sequence[LoopCounter | LoopGauge | LoopHistogram]) -> None:
        self._metrics = list(metrics)

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        return [metric.family() for metric in self._metrics]


class MetricsHttpServer:
    """``GET /metrics`` in the Prometheus text format, on its own port."""

    def __init__(self, metrics: ServerMetrics, host: str, port: int) -> None:
        self._registries = [metrics.registry, prometheus_client.REGISTRY]
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        log.info("metrics on http://%s:%d/metrics", self._host, self._port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, _request: web.Request) -> web.Response:
        text = b"".join(prometheus_client.generate_latest(registry) for registry in self._registries)
        return web.Response(body=text, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
