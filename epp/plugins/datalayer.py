"""Data-layer plugins: they configure the metrics scraper rather than take part in scheduling."""

from __future__ import annotations

from collections import defaultdict
from typing import Self

from epp.scheduling.framework import (
    DataLayerPlugin,
    EndpointEvent,
    EndpointExtractor,
    EndpointNotifier,
    EndpointSetObserver,
    MetricsExtractor,
    MetricsSource,
)
from epp.scheduling.params import Params
from epp.scheduling.registry import register

_TLS = "the scrape neither verifies nor presents certificates (insecureSkipVerify)"
_UNSUPPORTED_SOURCE_PARAMETERS = {
    "caCertPath": _TLS,
    "clientCertPath": _TLS,
    "clientKeyPath": _TLS,
}


@register("metrics-data-source")
class MetricsDataSource(MetricsSource):
    """Where to GET each endpoint's Prometheus metrics: ``scheme://ip:metricsPort/path``.
    ``port`` (llm-d's) scrapes every endpoint on that port instead; ``interval`` (a duration)
    scrapes every that long, rounded to a multiple of ``--refresh-metrics-interval`` (at least
    one). ``caCertPath``, ``clientCertPath`` and ``clientKeyPath`` are refused: this EPP does not
    verify or present scrape certificates."""

    def __init__(
        self,
        name: str,
        scheme: str,
        path: str,
        insecure_skip_verify: bool,
        port: int | None = None,
        interval: float | None = None,
    ) -> None:
        super().__init__(name)
        self.scheme, self.path, self.insecure_skip_verify = scheme, path, insecure_skip_verify
        self.port, self.interval = port, interval

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        path = params.string("path", "/metrics")
        if not path.startswith("/"):
            raise params.error("path", f"must start with '/', got {path!r}")
        # llm-d-router source/metrics/datasource.go metricsDatasourceParams: port and interval are
        # taken; the TLS file paths are refused by name, with the way to get the same.
        for key, instead in _UNSUPPORTED_SOURCE_PARAMETERS.items():
            if params.has(key):
                params.raw(key)
                raise params.error(key, f"is llm-d's but not supported by this EPP: {instead}")
        port = params.integer("port", 0, minimum=1, maximum=65535) if params.has("port") else None
        interval = params.duration("interval", 0.0) or None
        return cls(
            name,
            params.string("scheme", "http", choices=("http", "https")),
            path,
            params.boolean("insecureSkipVerify", True),
            port,
            interval,
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
        # llm-d-router's extractor/metrics mapping parameters: refused by name, not as unknown keys.
        for key in ("engineLabelKey", "engineConfigs", "customMetrics"):
            if params.has(key):
                params.raw(key)
                raise params.error(
                    key, "is llm-d's but not supported by this EPP: it reads vLLM's metric names only"
                )
        return cls(name, engine)


@register("inflight-load-producer")
class InflightLoadProducer(DataLayerPlugin):
    """Accepted for llm-d config compatibility: the director always keeps exact in-flight counts
    per endpoint (``active-request-scorer`` reads them), so this plugin has nothing further to do.
    llm-d's parameters are accepted and checked: ``prefixMatchInfoProducerName`` and
    ``syncCrossReplicaState`` (counts here are per replica) change nothing;
    ``addEstimatedOutputTokens: true`` (hold estimated output tokens until the response ends) is
    refused, as this EPP releases an endpoint's tokens at the first response byte."""

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router dataproducer/inflightload/producer.go Config and its factory's checks.
        if params.boolean("addEstimatedOutputTokens", False):
            raise params.error(
                "addEstimatedOutputTokens",
                "true is not supported: this EPP releases prompt tokens at the first response byte",
            )
        params.number("outputRatio", 1.5, minimum=0.0)
        params.integer("maxEstimatedOutputTokens", 0, minimum=0)
        params.string("prefixMatchInfoProducerName", "")
        params.boolean("syncCrossReplicaState", True)
        return cls(name)


@register("endpoint-notification-source")
class EndpointNotificationSource(EndpointNotifier, EndpointSetObserver):
    """Tells the extractors wired to it in dataLayer.sources (precise-prefix-cache-producer) about every
    endpoint added to or removed from the pool, with its address and data-parallel rank."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.extractors: list[EndpointExtractor] = []
        self._known: dict[str, EndpointEvent] = {}

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router source/notifications/factory.go EndpointSourceFactory ignores parameters.
        params.ignore_all()
        return cls(name)

    def attach(self, extractor: EndpointExtractor) -> None:
        self.extractors.append(extractor)
        for event in self._known.values():  # an extractor attached late still sees the pool
            extractor.extract_endpoint(event)

    def endpoints_changed(self, live_hostports: frozenset[str]) -> None:
        current = _events(live_hostports)
        for hostport in [h for h in self._known if h not in current]:
            removed = self._known.pop(hostport)
            self._notify(EndpointEvent(False, hostport, removed.address, removed.port, removed.rank))
        for hostport, event in current.items():
            if self._known.get(hostport) != event:  # new, or its rank moved
                self._known[hostport] = event
                self._notify(event)

    def _notify(self, event: EndpointEvent) -> None:
        for extractor in self.extractors:
            extractor.extract_endpoint(event)


def _events(hostports: frozenset[str]) -> dict[str, EndpointEvent]:
    """Add events for the live set; an endpoint's rank is its place among its pod's ports (the
    InferencePool lists a data-parallel pod's ports in rank order; ascending here)."""
    by_address: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for hostport in hostports:
        host, _, port_text = hostport.rpartition(":")
        if not host or not port_text.isdigit():
            continue
        by_address[host.strip("[]")].append((int(port_text), hostport))
    events: dict[str, EndpointEvent] = {}
    for address, ports in by_address.items():
        for rank, (number, hostport) in enumerate(sorted(ports)):
            events[hostport] = EndpointEvent(True, hostport, address, number, rank)
    return events
