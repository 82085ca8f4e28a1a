"""Autoscalers for the model-server pools: KEDA ScaledObjects (Prometheus triggers) or plain HPAs.

Prefill and decode each get their own autoscaler on their own pods' signals (llm-d's P/D guidance:
the two phases are bound by different resources, so they scale independently). Every signal is a
pool-wide sum with a per-replica target (``AverageValue``): the HPA asks for ``ceil(sum / target)``
replicas, the largest over a pool's triggers.

Cold starts: a new vLLM pod takes minutes (image pull, weight download or load, warm-up) before it
serves, and until then the demand it will absorb stays visible. So scale-up adds one pod per
``scaleUpPeriodSeconds`` with no stabilization (react at once, but never stampede), and scale-down
waits ``scaleDownWindowSeconds`` and then removes one pod per 5 minutes (llm-d's token-aware KEDA
guide makes the same trade). docs/observability.md has the rest (whole-node GPU pods, maxSurge 0).

``mode: hpa`` renders ``autoscaling/v2`` HPAs on External metrics instead; prometheus-adapter serves
them with the rules of :func:`prometheus_adapter_rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from pulumi_llmd.components import naming
from pulumi_llmd.components.inputs import PoolAutoscalingArgs
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.promql import ROLE_LABEL, STACK_LABEL, Component, Scope, picks_selector
from pulumi_llmd.config.inputs import model_args
from pulumi_llmd.config.observability import AutoscalingMode, RoleAutoscalingConfig, ScalingSignal

Autoscaling = PoolAutoscalingArgs

KEDA_API = "keda.sh/v1alpha1"
# Removing a warm model server throws away its KV cache; one at a time, this far apart.
SCALE_DOWN_PERIOD_SECONDS = 300


@dataclass(frozen=True)
class Signal:
    """How one signal reads from Prometheus."""

    metric: str  # the raw series
    external_name: str  # the External metric prometheus-adapter serves it as (mode hpa)
    rate: bool = False  # a counter: read as a per-second rate over a minute


SIGNALS = {
    ScalingSignal.QUEUE: Signal("vllm:num_requests_waiting", "llmd_vllm_requests_waiting"),
    ScalingSignal.RUNNING: Signal("vllm:num_requests_running", "llmd_vllm_requests_running"),
    ScalingSignal.KV_CACHE: Signal("vllm:kv_cache_usage_perc", "llmd_vllm_kv_cache_usage"),
    ScalingSignal.REQUEST_RATE: Signal("epp_scheduler_picks_total", "llmd_epp_picks_rate", rate=True),
}


def _selector(autoscaling: Autoscaling, role: Role, signal: ScalingSignal) -> str:
    scope = Scope(autoscaling.namespace, autoscaling.instance)
    if signal is ScalingSignal.REQUEST_RATE:
        return picks_selector(scope, role, disaggregated=autoscaling.disaggregated)
    return scope.pool(role)


def trigger_query(autoscaling: Autoscaling, role: Role, signal: ScalingSignal) -> str:
    """One value for the pool (KEDA requires a single-element vector): the sum over its pods, or 0
    when there is no series yet (a pool whose pods are all starting)."""
    spec = SIGNALS[signal]
    series = f"{spec.metric}{{{_selector(autoscaling, role, signal)}}}"
    inner = f"rate({series}[1m])" if spec.rate else series
    return f"sum({inner}) or vector(0)"


def _role_settings(autoscaling: Autoscaling, role: Role) -> RoleAutoscalingConfig:
    return autoscaling.settings.prefill if role is Role.PREFILL else autoscaling.settings.decode


def behavior(autoscaling: Autoscaling) -> dict[str, Any]:
    settings = autoscaling.settings
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": settings.scale_up_period_seconds}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": settings.scale_down_window_seconds,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": SCALE_DOWN_PERIOD_SECONDS}],
        },
    }


def _metadata(autoscaling: Autoscaling, role: Role) -> dict[str, Any]:
    return {
        "name": autoscaling.workloads[role],
        "namespace": autoscaling.namespace,
        "labels": {**naming.common_labels(autoscaling.instance, "autoscaling"), naming.ROLE_LABEL: str(role)},
    }


def _target(autoscaling: Autoscaling, role: Role) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": autoscaling.workloads[role]}


def scaled_object_manifest(autoscaling: Autoscaling, role: Role) -> dict[str, Any]:
    settings = autoscaling.settings
    pool = _role_settings(autoscaling, role)
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": _metadata(autoscaling, role),
        "spec": {
            "scaleTargetRef": _target(autoscaling, role),
            "pollingInterval": settings.polling_interval_seconds,
            "minReplicaCount": pool.min_replicas,
            "maxReplicaCount": pool.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(autoscaling)}},
            "triggers": [
                {
                    "type": "prometheus",
                    "name": f"{role}-{trigger.signal}".lower(),
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": settings.prometheus_address,
                        "query": trigger_query(autoscaling, role, trigger.signal),
                        "threshold": f"{trigger.target:g}",
                    },
                }
                for trigger in pool.triggers
            ],
        },
    }


def external_selector(autoscaling: Autoscaling, role: Role, signal: ScalingSignal) -> dict[str, str]:
    """The labels an HPA's External metric selects (prometheus-adapter turns them into matchers; the
    namespace comes from the HPA's own)."""
    if signal is ScalingSignal.REQUEST_RATE:
        labels = {STACK_LABEL: autoscaling.instance}
        if autoscaling.disaggregated:
            labels["profile"] = str(role)
        return labels
    return {STACK_LABEL: autoscaling.instance, ROLE_LABEL: str(role)}


def hpa_manifest(autoscaling: Autoscaling, role: Role) -> dict[str, Any]:
    pool = _role_settings(autoscaling, role)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(autoscaling, role),
        "spec": {
            "scaleTargetRef": _target(autoscaling, role),
            "minReplicas": pool.min_replicas,
            "maxReplicas": pool.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": SIGNALS[trigger.signal].external_name,
                            "selector": {"matchLabels": external_selector(autoscaling, role, trigger.signal)},
                        },
                        "target": {"type": "AverageValue", "averageValue": f"{trigger.target:g}"},
                    },
                }
                for trigger in pool.triggers
            ],
            "behavior": behavior(autoscaling),
        },
    }


def prometheus_adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter ``externalRules`` serving the External metrics of ``mode: hpa`` (the
    ``rules.external`` value of its Helm chart). ``<<.LabelMatchers>>`` holds the HPA's selector and
    namespace; only series our PodMonitors labelled are considered."""
    rules = []
    for spec in SIGNALS.values():
        component = Component.EPP if spec.rate else Component.MODEL_SERVER
        inner = (
            "rate(<<.Series>>{<<.LabelMatchers>>}[1m])" if spec.rate else "<<.Series>>{<<.LabelMatchers>>}"
        )
        rules.append(
            {
                "seriesQuery": f'{spec.metric}{{{STACK_LABEL}!="",llmd_component="{component}"}}',
                "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
                "name": {"as": spec.external_name},
                "metricsQuery": f"sum({inner}) by (<<.GroupBy>>)",
            }
        )
    return rules


def autoscaler_manifests(autoscaling: Autoscaling) -> list[dict[str, Any]]:
    roles = [Role.PREFILL, Role.DECODE] if autoscaling.disaggregated else [Role.DECODE]
    build = scaled_object_manifest if autoscaling.settings.mode is AutoscalingMode.KEDA else hpa_manifest
    return [build(autoscaling, role) for role in roles]


class PoolAutoscaling(pulumi.ComponentResource):
    """A KEDA ScaledObject (or an HPA) per model-server pool (Python only).

    Args (:class:`~pulumi_llmd.components.inputs.PoolAutoscalingArgs`): the stack's ``instance`` and
    ``namespace``, whether it is ``disaggregated``, each role's Deployment (``workloads``) and the
    ``autoscaling`` section as ``settings``. Provider and ``depends_on`` (the pools) come through ``opts``.
    """

    def __init__(
        self,
        name: str,
        args: PoolAutoscalingArgs | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        manifests = autoscaler_manifests(model_args(PoolAutoscalingArgs, args, component="PoolAutoscaling"))
        super().__init__("llmd:index:PoolAutoscaling", name, None, opts)
        self.objects = [register(manifest, child_options(self, opts)) for manifest in manifests]
        self.register_outputs({"objects": [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]})
