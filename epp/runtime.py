"""Builds the scheduling core for the protocol layer: config → plugins, discovery, metrics
scraping, and the director, behind the small :class:`Runtime` start/stop interface."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from epp import metrics as epp_metrics
from epp.config.loader import load_config
from epp.config.scheduler_config import SchedulerConfig
from epp.datastore import Datastore
from epp.director import SchedulingDirector
from epp.discovery.static import StaticDiscovery
from epp.scheduling.errors import ConfigError
from epp.scrape.scraper import MetricsScraper

if TYPE_CHECKING:
    from epp.leader import LeaderElector

log = logging.getLogger(__name__)

__all__ = ["ConfigError", "Runtime", "RuntimeOptions", "build_runtime"]

MIN_REFRESH_INTERVAL = 0.001


@dataclass
class RuntimeOptions:
    config_text: str  # EndpointPickerConfig YAML (the CLI resolves file/default to text)
    pool_name: str | None = None
    pool_namespace: str = "default"
    pool_group: str = "inference.networking.k8s.io"
    endpoints_file: Path | None = None
    refresh_metrics_interval: float = 0.05
    # Quiet pods (idle, unchanged, nothing routed there since) are scraped this often; 0, or anything
    # not above refresh_metrics_interval, scrapes every pod every tick.
    refresh_metrics_idle_interval: float = 0.5
    # Scrape the page filtered to the metrics read, where a pod verifiably serves one (epp.scrape.scraper).
    metrics_name_filter: bool = True
    metrics_staleness_threshold: float = 2.0
    served_models: frozenset[str] | None = None
    # Active-passive HA on a Lease (Kubernetes discovery only); POD_NAME is the holder identity.
    leader_election: bool = False
    # OTLP spans of each scheduling decision (epp.tracing), configured by the OTEL_* environment.
    tracing: bool = False


class _Discovery(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Runtime:
    def __init__(
        self,
        director: SchedulingDirector,
        datastore: Datastore,
        config: SchedulerConfig,
        discovery: _Discovery,
        scraper: MetricsScraper,
        elector: LeaderElector | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.director = director
        self.tracer_provider = tracer_provider
        self.datastore = datastore
        self.config = config
        self.discovery = discovery
        self.scraper = scraper
        self.elector = elector
        self._gauge_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Plugins' background work first (KV-event subscriptions, a tokenizer download), so they
        # follow the endpoint set from the first one discovery delivers.
        for plugin in self.config.lifecycles:
            await plugin.start()
        await self.scraper.start()  # before discovery, so it sees the first endpoint set
        await self.discovery.start()
        if self.elector is not None:
            # Standbys discover and scrape too, so a takeover starts with a warm datastore.
            await self.elector.start()
        self._gauge_task = asyncio.create_task(self._update_saturation_gauge(), name="saturation gauge")

    async def step_down(self) -> None:
        """Give up leadership now (on SIGTERM, before draining) so a standby takes over while this
        replica finishes its streams; no-op without leader election."""
        if self.elector is not None:
            await self.elector.stop()

    async def stop(self) -> None:
        await self.director.close()  # queued requests get their 503 before the server goes
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauge_task
        if self.elector is not None:
            await self.elector.close()
        await self.discovery.stop()
        await self.scraper.stop()
        for plugin in reversed(self.config.lifecycles):
            try:
                await plugin.stop()
            except Exception:  # one plugin failing to stop must not keep the others running
                log.exception("stopping plugin %s failed", plugin.name)
        if self.tracer_provider is not None:
            # Last, after the plugins: flushes the batch of spans not yet exported (blocking,
            # bounded by the exporter's timeout).
            await asyncio.to_thread(self.tracer_provider.shutdown)

    async def _update_saturation_gauge(self) -> None:
        detector = self.config.saturation_detector
        while True:
            endpoints = self.datastore.endpoints()
            epp_metrics.POOL_SATURATION.set(detector.pool_saturation(endpoints, time.monotonic()))
            await asyncio.sleep(1.0)


def scrape_interval(base: float, source_interval: float | None) -> float:
    """The metrics source's ``interval`` as llm-d-router's interval dispatcher takes it
    (pkg/epp/datalayer/interval_dispatcher.go): rounded to the nearest multiple of the base tick
    (``--refresh-metrics-interval``), at least one; unset: every base tick."""
    if source_interval is None:
        return base
    return max(1, round(source_interval / base)) * base


def build_runtime(options: RuntimeOptions) -> Runtime:
    """Validate everything that can be validated before start; raises ConfigError."""
    if (options.pool_name is None) == (options.endpoints_file is None):
        raise ConfigError("exactly one of --pool-name and --endpoints-file must be given")
    if options.refresh_metrics_interval < MIN_REFRESH_INTERVAL:
        raise ConfigError(
            f"--refresh-metrics-interval must be >= {MIN_REFRESH_INTERVAL}s, "
            f"got {options.refresh_metrics_interval}"
        )
    if options.metrics_staleness_threshold <= 0:
        raise ConfigError(
            f"--metrics-staleness-threshold must be > 0, got {options.metrics_staleness_threshold}"
        )
    if options.served_models is not None and not options.served_models:
        raise ConfigError("--served-models must name at least one model when given")

    if options.leader_election and options.pool_name is None:
        raise ConfigError("--ha-enable-leader-election needs --pool-name (it elects among a pool's EPPs)")

    config = load_config(options.config_text)
    datastore = Datastore()
    elector = _leader_elector(options) if options.leader_election else None
    provider, wrap_decide = None, None
    if options.tracing:
        from epp.tracing import decision_tracer, tracer_provider

        provider = tracer_provider()
        wrap_decide = decision_tracer(provider).wrap
    director = SchedulingDirector(
        datastore,
        config,
        served_models=options.served_models,
        metrics_staleness=options.metrics_staleness_threshold,
        leadership=(lambda: elector.is_leader) if elector is not None else None,
        pool_name=options.pool_name or "",
        wrap_decide=wrap_decide,
    )
    source = config.metrics_source
    interval = scrape_interval(options.refresh_metrics_interval, source.interval)
    scraper = MetricsScraper(
        datastore,
        interval=interval,
        idle_interval=options.refresh_metrics_idle_interval,
        name_filter=options.metrics_name_filter,
        timeout=min(1.0, options.metrics_staleness_threshold),
        scheme=source.scheme,
        path=source.path,
        insecure_skip_verify=source.insecure_skip_verify,
        port=source.port,
    )
    discovery: _Discovery
    if options.endpoints_file is not None:
        static = StaticDiscovery(options.endpoints_file, datastore)
        static.load()  # a missing or malformed file is a start-up ConfigError, like a bad config
        discovery = static
    else:
        from epp.discovery.kubernetes import KubernetesDiscovery

        assert options.pool_name is not None
        discovery = KubernetesDiscovery(
            datastore,
            pool_name=options.pool_name,
            namespace=options.pool_namespace,
            pool_group=options.pool_group,
        )
    return Runtime(director, datastore, config, discovery, scraper, elector, provider)


def _leader_elector(options: RuntimeOptions) -> LeaderElector:
    from epp.discovery.kubernetes import kubernetes_client
    from epp.leader import LeaderElector, lease_name

    assert options.pool_name is not None
    identity = os.environ.get("POD_NAME", "")
    if not identity:
        raise ConfigError(
            "--ha-enable-leader-election needs the POD_NAME environment variable (the Lease holder "
            "identity; set it from the pod's metadata.name)"
        )
    namespace = options.pool_namespace or "default"
    return LeaderElector(
        kubernetes_client(),
        name=lease_name(namespace, options.pool_name),
        namespace=namespace,
        identity=identity,
    )
