"""Data-layer plugins: they configure the metrics scraper rather than take part in scheduling."""

from __future__ import annotations

from typing import Self

from epp.scheduling.framework import DataLayerPlugin, MetricsExtractor, MetricsSource
from epp.scheduling.params import Params
from epp.scheduling.registry import register


@register("metrics-data-source")
class MetricsDataSource(MetricsSource):
    """Where to GET each endpoint's Prometheus metrics: ``scheme://ip:metricsPort/path``."""

    def __init__(self, name: str, scheme: str, path: str, insecure_skip_verify: bool) -> None:
        super().__init__(name)
        self.scheme, self.path, self.insecure_skip_verify = scheme, path, insecure_skip_verify

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        path = params.string("path", "/metrics")
        if not path.startswith("/"):
            raise params.error("path", f"must start with '/', got {path!r}")
        return cls(
            name,
            params.string("scheme", "http", choices=("http", "https")),
            path,
            params.boolean("insecureSkipVerify", True),
        )


@register("core-metrics-extractor")
class CoreMetricsExtractor(MetricsExtractor):
    """Maps engine metrics to queue / running / KV usage / LoRA / cache info. Only the vLLM
    mapping is implemented; selecting another engine is a start-up error, not a silent no-op."""

    def __init__(self, name: str, engine: str) -> None:
        super().__init__(name)
        self.engine = engine

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        engine = params.string("defaultEngine", "vllm")
        if engine != "vllm":
            raise params.error(
                "defaultEngine", f"{engine!r} is not supported (this EPP reads vLLM metrics only)"
            )
        return cls(name, engine)


@register("inflight-load-producer")
class InflightLoadProducer(DataLayerPlugin):
    """Accepted for llm-d config compatibility: the director always keeps exact in-flight counts
    per endpoint (``load-aware-scorer`` reads them), so this plugin has nothing further to do."""

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        return cls(name)
