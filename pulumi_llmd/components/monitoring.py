"""Prometheus Operator objects for one stack: PodMonitors and a PrometheusRule (alerts and recording rules).

PodMonitors rather than ServiceMonitors: the model servers and the sidecars have no Service of their
own (the InferencePool selects pods), and one kind for everything keeps the scrape labels uniform.
Every monitor adds the ``llmd_*`` target labels of :mod:`.promql`, which is what the rules, the
dashboards and the autoscalers select by.

The gateway's proxies differ per provider (their pods, port and path), so each GatewayClass gets a
hook in :data:`GATEWAY_MONITORS`; a class without one (a cloud-managed gateway, whose proxies are not
pods) gets no gateway monitor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from pulumi_llmd.components import naming
from pulumi_llmd.components.dashboards import dashboard_config_maps
from pulumi_llmd.components.inputs import InferenceMonitoringArgs
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.modelserver import selector_labels
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.picker import epp_selector
from pulumi_llmd.components.promql import (
    BURN_RATES,
    COMPONENT_LABEL,
    MODEL_LABEL,
    ROLE_LABEL,
    STACK_LABEL,
    Component,
    Scope,
    recording_rules,
)
from pulumi_llmd.config.inputs import model_args

MONITORING_API = "monitoring.coreos.com/v1"

Monitoring = InferenceMonitoringArgs


def scope_of(monitoring: Monitoring) -> Scope:
    return Scope(monitoring.namespace, monitoring.instance)


def _sanitized(label: str) -> str:
    """A pod label as Kubernetes service discovery names it (``__meta_kubernetes_pod_label_<this>``)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in label)


def _static(label: str, value: str) -> dict[str, Any]:
    return {"action": "replace", "targetLabel": label, "replacement": value}


def _from_pod_label(pod_label: str, target: str) -> dict[str, Any]:
    return {
        "action": "replace",
        "sourceLabels": [f"__meta_kubernetes_pod_label_{_sanitized(pod_label)}"],
        "targetLabel": target,
    }


def stack_relabelings(instance: str, component: str, *, pool_pod: bool) -> list[dict[str, Any]]:
    """The ``llmd_*`` target labels (see :mod:`.promql`)."""
    relabelings = [_static(STACK_LABEL, instance), _static(COMPONENT_LABEL, component)]
    if pool_pod:
        relabelings += [
            _from_pod_label(naming.ROLE_LABEL, ROLE_LABEL),
            _from_pod_label(naming.MODEL_LABEL, MODEL_LABEL),
        ]
    return relabelings


def _metadata(monitoring: Monitoring, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": monitoring.namespace,
        "labels": {**naming.common_labels(monitoring.instance, "monitoring"), **monitoring.settings.labels},
    }


def pod_monitor(
    monitoring: Monitoring,
    name: str,
    selector: dict[str, str],
    *,
    port: str,
    component: str,
    pool_pod: bool,
    path: str = "/metrics",
    namespace: str | None = None,
) -> dict[str, Any]:
    # The Gateway's proxies and the body router belong to the stack, not to one model of it.
    shared = component in (Component.GATEWAY, Component.BODY_ROUTER)
    stack = monitoring.gateway_stack if shared else monitoring.instance
    return {
        "apiVersion": MONITORING_API,
        "kind": "PodMonitor",
        "metadata": _metadata(monitoring, name),
        "spec": {
            "selector": {"matchLabels": dict(selector)},
            "namespaceSelector": {"matchNames": [namespace or monitoring.namespace]},
            "podMetricsEndpoints": [
                {
                    "port": port,
                    "path": path,
                    "interval": monitoring.settings.scrape_interval,
                    "relabelings": stack_relabelings(stack, component, pool_pod=pool_pod),
                }
            ],
        },
    }


def epp_monitor(monitoring: Monitoring) -> dict[str, Any]:
    pool = monitoring.pool_name
    return pod_monitor(
        monitoring,
        naming.epp_name(pool),
        epp_selector(pool),
        port="metrics",
        component=Component.EPP,
        pool_pod=False,
    )


def model_server_monitor(monitoring: Monitoring, role: Role) -> dict[str, Any]:
    """vLLM's own /metrics: on the pool port, or behind the P/D sidecar on decode pods (``vllm-http``,
    never the sidecar's port, which would proxy the same page a second time)."""
    behind_sidecar = role is Role.DECODE and monitoring.disaggregated
    return pod_monitor(
        monitoring,
        naming.model_server_name(monitoring.instance, role),
        selector_labels(monitoring.instance, role),
        port="vllm-http" if behind_sidecar else "http",
        component=Component.MODEL_SERVER,
        pool_pod=True,
    )


def sidecar_monitor(monitoring: Monitoring) -> dict[str, Any]:
    name = f"{naming.model_server_name(monitoring.instance, Role.DECODE)}-sidecar"
    return pod_monitor(
        monitoring,
        name,
        selector_labels(monitoring.instance, Role.DECODE),
        port=naming.SIDECAR_METRICS_PORT_NAME,
        component=Component.SIDECAR,
        pool_pod=True,
    )


@dataclass(frozen=True)
class GatewayTarget:
    """What a provider's hook knows about the stack's gateway."""

    monitoring: Monitoring
    gateway_name: str


def _proxy_monitor(target: GatewayTarget, port: str, path: str = "/metrics") -> dict[str, Any]:
    """Every in-cluster provider labels its proxy pods with their Gateway's name; they differ in the
    metrics port and path only."""
    return pod_monitor(
        target.monitoring,
        target.gateway_name,
        {naming.GATEWAY_NAME_LABEL: target.gateway_name},
        port=port,
        path=path,
        component=Component.GATEWAY,
        pool_pod=False,
    )


def kgateway_envoy_monitor(target: GatewayTarget) -> dict[str, Any]:
    """kgateway's Envoy proxies: Envoy's stats on port ``http-monitoring`` (9091) at ``/metrics``
    (kgateway-dev/kgateway internal/kgateway/helm/kgateway/templates/gateway/proxy-deployment.yaml)."""
    return _proxy_monitor(target, "http-monitoring")


def agentgateway_monitor(target: GatewayTarget) -> dict[str, Any]:
    """agentgateway's proxies (its own controller, or kgateway 2.1's agentgateway data plane):
    Prometheus text on the container port ``metrics`` (15020) at ``/metrics`` (the agentgateway
    deployer's container ports: http, readiness 15021, metrics 15020)."""
    return _proxy_monitor(target, "metrics")


def istio_gateway_monitor(target: GatewayTarget) -> dict[str, Any]:
    """Istio's automated Gateway deployment: Envoy's stats, including Istio's standard
    ``istio_requests_total``, on ``http-envoy-prom`` (15090) at ``/stats/prometheus`` (istio/istio
    manifests/charts/istio-control/istio-discovery/files/kube-gateway.yaml; the path Istio's own
    prometheus-operator sample scrapes)."""
    return _proxy_monitor(target, "http-envoy-prom", "/stats/prometheus")


GatewayMonitorHook = Callable[[GatewayTarget], dict[str, Any]]
# GatewayClass -> the PodMonitor of its proxies. A provider added to the stack adds its hook here; a
# class missing here (e.g. GKE's managed gke-l7-* classes, whose proxies are Google's) gets none.
# "agentgateway" is the class of both the agentgateway provider and kgateway 2.1's agentgateway data
# plane; "kgateway" is kgateway 2.1's deprecated Envoy data plane.
GATEWAY_MONITORS: dict[str, GatewayMonitorHook] = {
    "agentgateway": agentgateway_monitor,
    "istio": istio_gateway_monitor,
    "kgateway": kgateway_envoy_monitor,
}


def gateway_monitor(monitoring: Monitoring) -> dict[str, Any] | None:
    hook = GATEWAY_MONITORS.get(monitoring.gateway_class)
    if hook is None or not monitoring.watch_gateway:
        return None
    gateway = naming.gateway_name(monitoring.gateway_instance or monitoring.instance)
    return hook(GatewayTarget(monitoring, gateway))


def body_router_monitor(monitoring: Monitoring) -> dict[str, Any]:
    """The body router's own /metrics (``bbr_*``, bbr/metrics.py) on its ``metrics`` port."""
    instance = monitoring.gateway_stack
    return pod_monitor(
        monitoring,
        naming.body_router_name(instance),
        naming.body_router_selector(instance),
        port="metrics",
        component=Component.BODY_ROUTER,
        pool_pod=False,
    )


def monitor_manifests(monitoring: Monitoring) -> list[dict[str, Any]]:
    monitors = [epp_monitor(monitoring)]
    monitors += [model_server_monitor(monitoring, role) for role in monitoring.roles]
    if monitoring.sidecar_metrics:
        monitors.append(sidecar_monitor(monitoring))
    if (gateway := gateway_monitor(monitoring)) is not None:
        monitors.append(gateway)
    if monitoring.watch_body_router:
        monitors.append(body_router_monitor(monitoring))
    return monitors


# ---- rules ------------------------------------------------------------------------------------


def _alert(
    name: str, expr: str, severity: str, summary: str, description: str, *, duration: str | None, scope: Scope
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if duration is not None:
        rule["for"] = duration
    # Static labels too: aggregations drop the stack's labels, routing needs them.
    rule["labels"] = {"severity": severity, "namespace": scope.namespace, STACK_LABEL: scope.stack}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def alert_rules(monitoring: Monitoring) -> list[dict[str, Any]]:
    scope = scope_of(monitoring)
    settings = monitoring.settings
    thresholds = settings.alerts
    wait = thresholds.for_duration
    epp = scope.select(Component.EPP)
    pool_key = f"{{{{ $labels.{ROLE_LABEL} }}}} pool of {{{{ $labels.{MODEL_LABEL} }}}}"
    rules = [
        _alert(
            "LlmdEppDown",
            f"max(up{{{epp}}}) == 0 or absent(up{{{epp}}})",
            "critical",
            f"The endpoint picker of {scope.stack} is down",
            "Prometheus reads no running EPP. With failureMode FailClose the gateway refuses every request; "
            "with FailOpen it routes without the picker.",
            duration=wait,
            scope=scope,
        ),
        _alert(
            "LlmdPoolNoEndpoints",
            f"max(epp_pool_endpoints{{{epp}}}) == 0",
            "critical",
            f"The InferencePool of {scope.stack} has no ready endpoints",
            "The EPP sees no ready model-server pod: every request gets 503.",
            duration=wait,
            scope=scope,
        ),
        _alert(
            "LlmdPoolSaturated",
            f"max(epp_pool_saturation{{{epp}}}) >= {thresholds.saturation:g}",
            "warning",
            f"The InferencePool of {scope.stack} is saturated",
            "Pool saturation is {{ $value | humanize }}: queues or KV caches are past the EPP's thresholds; "
            "sheddable requests get 429. Add replicas (or let the autoscaler).",
            duration=wait,
            scope=scope,
        ),
        _alert(
            "LlmdQueueGrowing",
            f"(llmd:vllm_requests_waiting:sum{{{scope.select()}}} / llmd:vllm_pods:count{{{scope.select()}}})"
            f" > {thresholds.queue_per_replica:g}"
            f" and deriv(llmd:vllm_requests_waiting:sum{{{scope.select()}}}[10m]) > 0",
            "warning",
            f"The request queue of the {pool_key} is growing",
            "{{ $value | humanize }} requests wait per pod and the queue still grows: TTFT rises with it.",
            duration=wait,
            scope=scope,
        ),
        _alert(
            "LlmdEppScrapeErrors",
            f"sum(rate(epp_metrics_scrape_errors_total{{{epp}}}[5m]))"
            f" / sum(rate(epp_metrics_scrape_duration_seconds_count{{{epp}}}[5m]))"
            f" > {thresholds.scrape_error_ratio:g}",
            "warning",
            f"The EPP of {scope.stack} fails to read model-server metrics",
            "{{ $value | humanizePercentage }} of the EPP's /metrics scrapes fail: it skips those endpoints "
            "(or routes on stale numbers when all fail).",
            duration=wait,
            scope=scope,
        ),
        _alert(
            "LlmdScrapeTargetDown",
            f'up{{{scope.select()},{COMPONENT_LABEL}!="epp"}} == 0',
            "warning",
            f"Prometheus cannot scrape {{{{ $labels.{COMPONENT_LABEL} }}}} {{{{ $labels.pod }}}} "
            f"of {scope.stack}",
            "The target does not answer /metrics: dashboards, alerts and autoscaling go blind on it.",
            duration=wait,
            scope=scope,
        ),
    ]
    objective = settings.ttft_slo.objective
    budget = 1 - objective
    for severity_name, long, short, rate in BURN_RATES:
        limit = f"{rate * budget:.6g}"
        rules.append(
            _alert(
                "LlmdTtftBudgetBurn",
                f"llmd:epp_ttft_slow:ratio_rate{long}{{{scope.select()}}} > {limit}"
                f" and llmd:epp_ttft_slow:ratio_rate{short}{{{scope.select()}}} > {limit}",
                "critical" if severity_name == "page" else "warning",
                f"{scope.stack} burns its TTFT error budget {rate:g}x too fast",
                f"More than {rate * budget:.2%} of requests took longer than "
                f"{settings.ttft_slo.threshold_seconds:g} s to the first token over the last {long} "
                f"and {short} "
                f"(objective {objective:.2%}).",
                duration=None,
                scope=scope,
            )
        )
    # llm-d's sidecar (implementation upstream) exports no llmd_sidecar_* series: an alert on them
    # would never fire, looking like a healthy P/D path.
    if monitoring.sidecar_metrics:
        rules.append(
            _alert(
                "LlmdPdPrefillFallbacks",
                f"llmd:sidecar_prefill_fallbacks:ratio_rate5m{{{scope.select()}}}"
                f" > {thresholds.fallback_ratio:g}",
                "warning",
                f"P/D requests of {scope.stack} fall back to local prefill",
                "{{ $value | humanizePercentage }} of disaggregated requests were prefilled on the "
                "decode pod "
                "because the remote prefill (or the KV load) failed: see "
                "llmd_sidecar_prefill_fallbacks_total by reason.",
                duration=wait,
                scope=scope,
            )
        )
    return rules


def rule_groups(monitoring: Monitoring) -> list[dict[str, Any]]:
    scope = scope_of(monitoring)
    records = recording_rules(
        scope,
        sidecar_metrics=monitoring.sidecar_metrics,
        ttft_threshold=monitoring.settings.ttft_slo.threshold_seconds,
    )
    return [
        {
            "name": f"{monitoring.instance}.llmd.records",
            "rules": [{"record": rule.record, "expr": rule.expr} for rule in records],
        },
        {"name": f"{monitoring.instance}.llmd.alerts", "rules": alert_rules(monitoring)},
    ]


def prometheus_rule_manifest(monitoring: Monitoring) -> dict[str, Any]:
    return {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": _metadata(monitoring, f"{monitoring.instance}-rules"),
        "spec": {"groups": rule_groups(monitoring)},
    }


def monitoring_manifests(monitoring: Monitoring) -> list[dict[str, Any]]:
    """What ``monitoring`` asks for: monitors and rules (Prometheus Operator), dashboards (ConfigMaps)."""
    settings = monitoring.settings
    manifests: list[dict[str, Any]] = []
    if settings.enabled:
        manifests += monitor_manifests(monitoring)
        if settings.rules:
            manifests.append(prometheus_rule_manifest(monitoring))
    if settings.dashboards.enabled:
        manifests += dashboard_config_maps(monitoring)
    return manifests


class InferenceMonitoring(pulumi.ComponentResource):
    """PodMonitors for the EPP, the model servers, the P/D sidecars and the gateway, a PrometheusRule
    (recording rules and alerts) and Grafana dashboard ConfigMaps for one stack (Python only).

    Args (:class:`~pulumi_llmd.components.inputs.InferenceMonitoringArgs`): the stack's ``instance``,
    ``namespace`` and ``pool_name``, its ``roles``, whether it is ``disaggregated``, the gateway's
    class, and the ``monitoring`` section as ``settings``. Provider and ``depends_on`` come through
    ``opts`` (the Prometheus Operator CRDs must exist).
    """

    def __init__(
        self,
        name: str,
        args: InferenceMonitoringArgs | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        manifests = monitoring_manifests(
            model_args(InferenceMonitoringArgs, args, component="InferenceMonitoring")
        )
        super().__init__("llmd:index:InferenceMonitoring", name, None, opts)
        self.objects = [register(manifest, child_options(self, opts)) for manifest in manifests]
        self.register_outputs({"objects": [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]})
