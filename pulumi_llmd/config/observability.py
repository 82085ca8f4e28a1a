"""Stack-config models for seeing and scaling a stack: ``llmd:monitoring``, ``llmd:autoscaling`` and
``llmd:tracing`` (every default of these lives here, as everywhere else in :mod:`pulumi_llmd.config`).

What is on by default, and why:

- Prometheus Operator monitors (PodMonitors) and rules (PrometheusRule): on. They need the
  ``monitoring.coreos.com/v1`` CRDs (kube-prometheus-stack or any Prometheus Operator), as llm-d's own
  guides assume when monitoring is on by default; a cluster without them sets ``monitoring.enabled:
  false`` (the kind example does).
- Grafana dashboards: on. They are plain ConfigMaps (no CRD); Grafana's dashboard sidecar picks them
  up by label, and nothing happens on a cluster without one.
- Autoscaling (KEDA ScaledObjects or HPAs): off. It takes the replica count away from
  ``prefill.replicas``/``decode.replicas`` and needs KEDA (or a Prometheus adapter) installed, so
  turning it on is a decision, not a default.
- OTLP tracing: off, and free when off (no SDK is imported).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator

from pulumi_llmd.config.base import ConfigModel

# Label keys and values as Kubernetes accepts them (for the labels Prometheus and Grafana select by).
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
# Prometheus durations ("30s", "5m", "1h").
PROM_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"

# The EPP's `epp_time_to_first_token_seconds` bucket boundaries (epp/metrics.py, _LATENCY_BUCKETS):
# a TTFT objective is counted from the bucket at its threshold, so the threshold must be one of them.
# The library may not import the EPP; tests/pulumi_llmd/components/test_observability_metrics.py
# reads the live EPP's /metrics and fails if these drift.
EPP_TTFT_BUCKETS = (
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

Labels = dict[str, str]


def _label_problems(labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes label syntax (checked here: the component schema's maps carry plain strings)."""
    for key, value in labels.items():
        if not re.match(LABEL_KEY, key) or len(key) > 253:
            raise ValueError(f"{key!r} is not a Kubernetes label key")
        if not re.match(LABEL_VALUE, value):
            raise ValueError(f"{value!r} (label {key}) is not a Kubernetes label value")
    return labels


class AlertThresholds(ConfigModel):
    """When the PrometheusRule's alerts fire."""

    for_duration: str = Field(
        default="5m",
        pattern=PROM_DURATION,
        description="How long a condition must hold before an alert fires (`for`), except the burn-rate "
        "alerts, whose windows already smooth.",
    )
    queue_per_replica: float = Field(
        default=8,
        gt=0,
        description="Queue growing: mean vLLM requests waiting per pod of a role, above which a still "
        "growing queue alerts.",
    )
    saturation: float = Field(
        default=1.0,
        gt=0,
        description="Pool saturated: the EPP's pool saturation (mean over endpoints of max(waiting / "
        "queue threshold, KV use / KV threshold); 1 = every endpoint at its threshold) at or above this.",
    )
    fallback_ratio: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="P/D fallbacks: the fraction of disaggregated requests the sidecar prefilled locally "
        "(remote prefill failed) above which it alerts.",
    )
    scrape_error_ratio: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Scrape errors: the fraction of the EPP's model-server /metrics scrapes that fail "
        "above which it alerts (the EPP routes blind on stale metrics).",
    )


class TtftSlo(ConfigModel):
    """The TTFT objective of the burn-rate alerts, as the EPP measures TTFT."""

    # Measured from request headers at the EPP to the first response bytes: what a client behind the
    # gateway sees, P/D prefill leg included. Alerting: Google SRE workbook, ch. 5 (multi-window,
    # multi-burn-rate).

    threshold_seconds: float = Field(
        default=1.0,
        description="A request is good when its TTFT is at most this; must be one of the EPP's TTFT "
        "histogram buckets.",
    )
    objective: float = Field(
        default=0.99, gt=0.5, lt=1, description="Fraction of requests that must be good (0.99 = 99 %)."
    )

    @field_validator("threshold_seconds")
    @classmethod
    def _a_bucket(cls, value: float) -> float:
        if value not in EPP_TTFT_BUCKETS:
            raise ValueError(
                "must be a bucket boundary of the EPP's TTFT histogram: one of "
                + ", ".join(f"{b:g}" for b in EPP_TTFT_BUCKETS)
            )
        return value


class DashboardsConfig(ConfigModel):
    """Grafana dashboards (EPP, pools, P/D) as ConfigMaps for Grafana's dashboard sidecar."""

    enabled: bool = Field(default=True, description="Render the dashboard ConfigMaps.")
    labels: Labels = Field(
        default_factory=lambda: {"grafana_dashboard": "1"},
        description="Labels on the ConfigMaps: what Grafana's dashboard sidecar watches for "
        '(kube-prometheus-stack: `grafana_dashboard: "1"`, its `sidecar.dashboards.label`).',
    )
    namespace: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)] | None = (
        Field(
            default=None,
            description="Namespace of the ConfigMaps (the sidecar's `searchNamespace`); unset puts them in "
            "the stack's namespace.",
        )
    )
    _labels = field_validator("labels")(_label_problems)

    folder: str | None = Field(
        default=None,
        min_length=1,
        description="Grafana folder (the `grafana_folder` annotation, honoured when the sidecar sets "
        "`folderAnnotation: grafana_folder`).",
    )


class MonitoringConfig(ConfigModel):
    """Prometheus Operator monitors and alert/recording rules, and the Grafana dashboards."""

    enabled: bool = Field(
        default=True,
        description="PodMonitors for the EPP, the model servers, the P/D sidecars and the gateway, and a "
        "PrometheusRule; needs the Prometheus Operator CRDs (monitoring.coreos.com/v1).",
    )
    rules: bool = Field(default=True, description="Render the PrometheusRule (alerts and recording rules).")
    labels: Labels = Field(
        default_factory=dict,
        description="Extra labels on the PodMonitors and the PrometheusRule: what your Prometheus selects "
        "them by (kube-prometheus-stack: `release: <its release name>`).",
    )
    _labels = field_validator("labels")(_label_problems)

    scrape_interval: str = Field(default="15s", pattern=PROM_DURATION, description="Scrape interval.")
    alerts: AlertThresholds = Field(default_factory=AlertThresholds, description="Alert thresholds.")
    ttft_slo: TtftSlo = Field(
        default_factory=TtftSlo, description="The TTFT objective of the burn-rate alerts."
    )
    dashboards: DashboardsConfig = Field(default_factory=DashboardsConfig, description="Grafana dashboards.")


class AutoscalingMode(StrEnum):
    """What scales the model-server pools."""

    KEDA = "keda"
    """KEDA ScaledObjects with Prometheus triggers (KEDA creates and owns the HPAs)."""
    HPA = "hpa"
    """autoscaling/v2 HorizontalPodAutoscalers on External metrics (served by prometheus-adapter)."""


class ScalingSignal(StrEnum):
    """What a pool scales on; each is a per-replica target (the HPA divides the pool's total by it)."""

    QUEUE = "queue"
    """vLLM requests waiting (`vllm:num_requests_waiting`) summed over the role's pods."""
    RUNNING = "running"
    """vLLM requests running (`vllm:num_requests_running`) summed over the role's pods."""
    KV_CACHE = "kvCache"
    """vLLM KV-cache usage (`vllm:kv_cache_usage_perc`, 0-1) summed over the role's pods: a target of 0.8
    keeps the mean at 80 %."""
    REQUEST_RATE = "requestRate"
    """Requests per second the EPP sends to the role (`epp_scheduler_picks_total`, by scheduling
    profile: `prefill`/`decode` with P/D, every profile without)."""


class ScalingTrigger(ConfigModel):
    signal: ScalingSignal = Field(description="The metric.")
    target: float = Field(gt=0, description="Per-replica target value of the signal.")


class RoleAutoscalingConfig(ConfigModel):
    """One pool's autoscaler. Prefill and decode scale independently, each on its own pods' signals."""

    min_replicas: int = Field(
        default=1,
        ge=1,
        description="Fewest replicas. Not 0: with flow control off (the default) nothing holds requests "
        "while a pool scales up from zero.",
    )
    max_replicas: int = Field(default=4, ge=1, description="Most replicas (your accelerator quota).")
    triggers: list[ScalingTrigger] = Field(
        min_length=1,
        description="Signals; with several, the HPA takes the largest replica count any of them asks for.",
    )


class AutoscalingConfig(ConfigModel):
    """Scaling the model-server pools on EPP and vLLM metrics (docs/observability.md, "Autoscaling")."""

    enabled: bool = Field(
        default=False,
        description="Autoscale the pools; the pools' `replicas` are then only the count before the first "
        "scaling decision.",
    )
    mode: AutoscalingMode = Field(default=AutoscalingMode.KEDA, description="`keda` or `hpa`.")
    prometheus_address: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Prometheus the KEDA triggers query (mode keda).",
    )
    polling_interval_seconds: int = Field(default=15, ge=1, description="KEDA polling interval.")
    scale_up_period_seconds: int = Field(
        default=180,
        ge=15,
        description="Add at most one pod per this period: a new model server takes minutes to load, and "
        "the demand it will absorb stays visible until it is Ready.",
    )
    scale_down_window_seconds: int = Field(
        default=600,
        ge=0,
        description="Scale-down stabilization window; pods are removed one per 5 minutes after it.",
    )
    prefill: RoleAutoscalingConfig = Field(
        default_factory=lambda: RoleAutoscalingConfig(
            triggers=[ScalingTrigger(signal=ScalingSignal.QUEUE, target=2)]
        ),
        description="The prefill pool's autoscaler (P/D stacks).",
    )
    decode: RoleAutoscalingConfig = Field(
        default_factory=lambda: RoleAutoscalingConfig(
            triggers=[
                ScalingTrigger(signal=ScalingSignal.QUEUE, target=4),
                ScalingTrigger(signal=ScalingSignal.RUNNING, target=16),
            ]
        ),
        description="The decode pool's autoscaler.",
    )


class TracingConfig(ConfigModel):
    """OTLP tracing of the EPP's scheduling decision and of the P/D sidecar's prefill and decode legs."""

    enabled: bool = Field(default=False, description="Export spans (`--tracing` on the EPP and the sidecar).")
    endpoint: str = Field(
        default="http://opentelemetry-collector.monitoring.svc:4317",
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="OTLP/gRPC collector (`OTEL_EXPORTER_OTLP_ENDPOINT`).",
    )
    sample_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Fraction of traces started here that are sampled (parent-based: a sampled caller's "
        "trace is always followed).",
    )
