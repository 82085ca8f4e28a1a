"""Prometheus metrics with vLLM 0.32's names, types and label sets (``engine``, ``model_name``).

Gauges describing the engine's state are read at scrape time; counters and histograms are updated by
the engine's hooks as things happen, like vLLM's logger does.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from simulator.engine import Engine, EngineObserver, Sequence
from simulator.exposition import CONTENT_TYPE, CounterFamily, HistogramFamily, Registry
from simulator.params import SimParams

# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py), so histograms line up in dashboards.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

__all__ = ["CONTENT_TYPE", "SimMetrics"]


class SimMetrics(EngineObserver):
    def __init__(self, params: SimParams) -> None:
        self.registry = Registry()
        labels = ("engine", "model_name")
        self._labels = {"engine": "0", "model_name": params.model}
        r = self.registry

        def counter(name: str, doc: str) -> CounterFamily:
            return r.counter(name, doc, labels)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> HistogramFamily:
            return r.histogram(name, doc, labels, buckets)

        self.waiting = r.gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", labels)
        self.running = r.gauge("vllm:num_requests_running", "Requests in model execution batches.", labels)
        self.kv_usage = r.gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels
        )
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.external_queries = counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector, in tokens.",
        )
        self.external_hits = counter(
            "vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector, in tokens."
        )
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = r.counter(
            "vllm:request_success", "Count of successfully processed requests.", (*labels, "finished_reason")
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", ITL_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "End to end request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        cache_info = {
            "block_size": str(params.block_size),
            "enable_prefix_caching": "True",
            "num_gpu_blocks": str(params.num_blocks),
            "kv_cache_size_tokens": str(params.num_blocks * params.block_size),
        }
        r.gauge(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", ("engine", *cache_info)
        ).labels(engine="0", **cache_info).set(1)
        # NixlConnector's transfer metrics, reported by the decode side of a P/D pair.
        self.nixl_xfer_time = histogram(
            "vllm:nixl_xfer_time_seconds",
            "Histogram of transfer duration for NIXL KV Cache transfers.",
            ITL_BUCKETS,
        )
        self.nixl_bytes = histogram(
            "vllm:nixl_bytes_transferred",
            "Histogram of bytes transferred per NIXL KV Cache transfers.",
            (2**20, 2**22, 2**24, 2**26, 2**28, 2**30),
        )
        self.nixl_failed = counter(
            "vllm:nixl_num_failed_transfers", "Number of failed NIXL KV Cache transfers."
        )
        # LoRA: vLLM creates this gauge only with --enable-lora (vllm/v1/metrics/loggers.py), without
        # the engine/model_name labels; its value is the time of the update (set_to_current_time).
        self._max_loras = str(params.max_loras)
        self.lora_info = (
            r.gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ("max_lora", "waiting_lora_adapters", "running_lora_adapters"),
            )
            if params.enable_lora
            else None
        )
        # Not a vLLM series: the adapter loads into GPU slots the simulator models (simulator.lora).
        self.lora_loads = (
            r.counter("simulator:lora_loads", "LoRA adapters put into a GPU slot (simulated).", labels)
            if params.enable_lora
            else None
        )
        # vLLM exports every series from startup, zero-valued, so dashboards and scrapers see them at once.
        for metric in (
            self.waiting,
            self.running,
            self.kv_usage,
            self.prefix_queries,
            self.prefix_hits,
            self.external_queries,
            self.external_hits,
            self.preemptions,
            self.prompt_tokens,
            self.generation_tokens,
            self.ttft,
            self.itl,
            self.e2e,
            self.queue_time,
            self.prefill_time,
            self.decode_time,
            self.nixl_xfer_time,
            self.nixl_bytes,
            self.nixl_failed,
        ):
            metric.labels(**self._labels)
        for reason in FINISH_REASONS:
            self.success.labels(**self._labels, finished_reason=reason)
        if self.lora_loads is not None:
            self.lora_loads.labels(**self._labels)
        self._engine: Engine | None = None

    def bind(self, engine: Engine) -> None:
        self._engine = engine

    def render(self, names: Collection[str] | None = None) -> bytes:
        """The page, or only the families named (see ``Registry.render``)."""
        if self._engine is not None:
            self.waiting.labels(**self._labels).set(len(self._engine.waiting))
            self.running.labels(**self._labels).set(len(self._engine.running))
            self.kv_usage.labels(**self._labels).set(self._engine.pool.usage)
            if self.lora_info is not None and self._engine.steps:
                # Adapters with running requests, in both lists, as real vLLM 0.32 lists them; each
                # label set seen stays with its last time, the current one is the newest. None
                # before the engine's first step: vLLM sets this gauge from scheduler stats, so a
                # new or restarted server shows the family without a sample (checked on vLLM 0.32
                # CPU), and the EPP must cope with that (see lora-affinity-scorer).
                active = ",".join(sorted(self._engine.active_loras()))
                self.lora_info.labels(
                    max_lora=self._max_loras, waiting_lora_adapters=active, running_lora_adapters=active
                ).set(time.time())
        return self.registry.render(names)

    def on_lora_load(self, adapter: str) -> None:
        if self.lora_loads is not None:
            self.lora_loads.labels(**self._labels).inc()

    def nixl_transfer(self, seconds: float, num_bytes: int) -> None:
        self.nixl_xfer_time.labels(**self._labels).observe(seconds)
        self.nixl_bytes.labels(**self._labels).observe(num_bytes)

    def nixl_failure(self) -> None:
        self.nixl_failed.labels(**self._labels).inc()

    # --- engine hooks --------------------------------------------------------------------------

    def on_scheduled(self, seq: Sequence) -> None:
        if seq.generated:  # a preempted sequence coming back is not a new query
            return
        local_query = seq.prompt_tokens
        self.prefix_queries.labels(**self._labels).inc(local_query)
        self.prefix_hits.labels(**self._labels).inc(seq.cached_tokens)
        if seq.remote_prefilled:
            self.external_queries.labels(**self._labels).inc(seq.prompt_tokens - seq.cached_tokens)
            self.external_hits.labels(**self._labels).inc(seq.external_cached_tokens)
        if seq.admitted_at is not None:
            self.queue_time.labels(**self._labels).observe(seq.admitted_at - seq.arrival)

    def on_first_token(self, seq: Sequence) -> None:
        if seq.first_token_at is not None:
            self.ttft.labels(**self._labels).observe(seq.first_token_at - seq.arrival)

    def on_token(self, seq: Sequence, gap_s: float) -> None:
        self.itl.labels(**self._labels).observe(gap_s)

    def on_preempted(self, seq: Sequence) -> None:
        self.preemptions.labels(**self._labels).inc()

    def on_finished(self, seq: Sequence) -> None:
        self.success.labels(**self._labels, finished_reason=seq.finish_reason or "abort").inc()
        if seq.finish_reason == "abort":
            return
        self.prompt_tokens.labels(**self._labels).inc(seq.prompt_tokens)
        self.generation_tokens.labels(**self._labels).inc(seq.generated)
        if seq.finished_at is not None:
            self.e2e.labels(**self._labels).observe(seq.finished_at - seq.arrival)
            if seq.admitted_at is not None and seq.prefill_done_at is not None:
                self.prefill_time.labels(**self._labels).observe(seq.prefill_done_at - seq.admitted_at)
                self.decode_time.labels(**self._labels).observe(seq.finished_at - seq.prefill_done_at)
