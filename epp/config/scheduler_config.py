"""The built scheduler configuration: what :func:`epp.config.loader.load_config` returns and the
director and runtime consume (so neither needs the YAML loader)."""

from __future__ import annotations

from dataclasses import dataclass, field

from epp.flowcontrol.config import FlowControlConfig
from epp.scheduling.framework import (
    DataProducer,
    EndpointSetObserver,
    Lifecycle,
    MetricsExtractor,
    MetricsSource,
    Plugin,
    Preparer,
    PreRequest,
    SaturationDetector,
)
from epp.scheduling.scheduler import Scheduler


@dataclass
class SchedulerConfig:
    plugins: dict[str, Plugin]
    scheduler: Scheduler
    producers: list[DataProducer]
    pre_request: list[PreRequest]
    observers: list[EndpointSetObserver]
    saturation_detector: SaturationDetector
    metrics_source: MetricsSource
    metrics_extractor: MetricsExtractor
    # None unless the flowControl feature gate is on.
    flow_control: FlowControlConfig | None = None
    feature_gates: dict[str, bool] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Awaited before each decision, producers before consumers (empty for most configs).
    preparers: list[Preparer] = field(default_factory=list)
    # Plugins with background work, started and stopped with the EPP.
    lifecycles: list[Lifecycle] = field(default_factory=list)
