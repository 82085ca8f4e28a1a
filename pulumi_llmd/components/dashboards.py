"""Grafana dashboards for one stack (the EPP, the pools, P/D), as ConfigMaps for Grafana's dashboard
sidecar (it loads every ConfigMap carrying its label; kube-prometheus-stack's watches
``grafana_dashboard: "1"``).

Queries are plain PromQL over the stack's own series (the ``llmd_*`` labels of :mod:`.promql`), with
fixed windows rather than Grafana's ``$__rate_interval``, so the same text runs in Prometheus as is
(tests evaluate every one against a real Prometheus). The datasource is a dashboard variable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pulumi_llmd.components import naming
from pulumi_llmd.components.inputs import InferenceMonitoringArgs
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.promql import ROLE_LABEL, Component, Scope, by, le_matcher

Monitoring = InferenceMonitoringArgs

FOLDER_ANNOTATION = "grafana_folder"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"


@dataclass
class Dashboard:
    key: str  # epp, pools, pd
    title: str
    panels: list[Panel] = field(default_factory=list)


def _quantiles(metric: str, selector: str, grouping: tuple[str, ...], legend: str) -> list[Query]:
    group = by("le", *grouping)
    return [
        Query(
            f"histogram_quantile({q}, sum {group} (rate({metric}_bucket{{{selector}}}[5m])))",
            f"p{int(q * 100)} {legend}".strip(),
        )
        for q in (0.5, 0.99)
    ]


def epp_dashboard(monitoring: Monitoring) -> Dashboard:
    scope = Scope(monitoring.namespace, monitoring.instance)
    epp = scope.select(Component.EPP)
    slo = monitoring.settings.ttft_slo
    panels = [
        Panel("EPP replicas up", [Query(f"sum(up{{{epp}}})", "up")], kind="stat"),
        Panel("Pool endpoints", [Query(f"max(epp_pool_endpoints{{{epp}}})", "endpoints")], kind="stat"),
        Panel(
            "Pool saturation",
            [Query(f"max(epp_pool_saturation{{{epp}}})", "saturation")],
            unit="percentunit",
            description="Mean over endpoints of max(waiting / queue threshold, KV use / KV threshold); "
            ">= 1 sheds sheddable requests.",
        ),
        Panel(
            "Requests by status",
            [Query(f"sum by (code) (rate(epp_requests_total{{{epp}}}[5m]))", "{{code}}")],
            unit="reqps",
        ),
        Panel(
            "Rejections by reason",
            [
                Query(
                    f"sum by (status, reason) (rate(epp_scheduler_rejections_total{{{epp}}}[5m]))",
                    "{{status}} {{reason}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Scheduling decision latency",
            _quantiles("epp_scheduler_decision_duration_seconds", epp, (), ""),
            unit="s",
        ),
        Panel(
            "Time to first token (EPP)", _quantiles("epp_time_to_first_token_seconds", epp, (), ""), unit="s"
        ),
        Panel(
            f"TTFT within {slo.threshold_seconds:g} s (objective {slo.objective:.2%})",
            [
                Query(
                    f"sum(rate(epp_time_to_first_token_seconds_bucket{{{epp},{le_matcher(slo.threshold_seconds)}}}[5m]))"
                    f" / sum(rate(epp_time_to_first_token_seconds_count{{{epp}}}[5m]))",
                    "good",
                )
            ],
            unit="percentunit",
        ),
        Panel(
            "TTFT error-budget burn rate",
            [
                Query(
                    f"llmd:epp_ttft_slow:ratio_rate{window}{{{scope.select()}}} / {1 - slo.objective:.6g}",
                    window,
                )
                for window in ("5m", "1h", "6h")
            ],
            description="1 = the budget lasts exactly the SLO period; the page alert fires above 14.4.",
        ),
        Panel("Requests in flight", [Query(f"sum(epp_requests_in_flight{{{epp}}})", "in flight")]),
        Panel(
            "Picks by endpoint and profile",
            [
                Query(
                    f"sum by (endpoint, profile) (rate(epp_scheduler_picks_total{{{epp}}}[5m]))",
                    "{{profile}} {{endpoint}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Model-server scrapes: errors and latency",
            [
                Query(
                    f"sum by (endpoint) (rate(epp_metrics_scrape_errors_total{{{epp}}}[5m]))",
                    "errors {{endpoint}}",
                ),
                *_quantiles("epp_metrics_scrape_duration_seconds", epp, (), "scrape"),
            ],
        ),
        Panel(
            "Tokens",
            [Query(f"sum by (kind) (rate(epp_tokens_total{{{epp}}}[5m]))", "{{kind}}")],
            unit="short",
        ),
    ]
    if monitoring.gateway_class in GATEWAY_PANELS:
        gateway_scope = Scope(monitoring.namespace, monitoring.gateway_stack)
        panels += GATEWAY_PANELS[monitoring.gateway_class](gateway_scope)
    return Dashboard("epp", f"llm-d {monitoring.instance}: endpoint picker", panels)


def envoy_gateway_panels(scope: Scope) -> list[Panel]:
    """Envoy's own stats (kgateway's data plane): downstream requests by status class and ext_proc."""
    gateway = scope.select(Component.GATEWAY)
    return [
        Panel(
            "Gateway requests by status class",
            [
                Query(
                    "sum by (envoy_response_code_class) "
                    f"(rate(envoy_http_downstream_rq_xx{{{gateway}}}[5m]))",
                    "{{envoy_response_code_class}}xx",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Gateway request latency",
            _quantiles("envoy_http_downstream_rq_time", gateway, (), ""),
            unit="ms",
        ),
    ]


def agentgateway_panels(scope: Scope) -> list[Panel]:
    """agentgateway's own metrics: ``agentgateway_requests_total`` by ``status`` and the
    ``agentgateway_request_duration_seconds`` histogram (agentgateway's observability docs)."""
    gateway = scope.select(Component.GATEWAY)
    return [
        Panel(
            "Gateway requests by status",
            [Query(f"sum by (status) (rate(agentgateway_requests_total{{{gateway}}}[5m]))", "{{status}}")],
            unit="reqps",
        ),
        Panel(
            "Gateway request latency",
            _quantiles("agentgateway_request_duration_seconds", gateway, (), ""),
            unit="s",
        ),
    ]


def istio_gateway_panels(scope: Scope) -> list[Panel]:
    """Istio's standard metrics from the gateway's Envoy: ``istio_requests_total`` by
    ``response_code`` and ``istio_request_duration_milliseconds``."""
    gateway = scope.select(Component.GATEWAY)
    return [
        Panel(
            "Gateway requests by response code",
            [
                Query(
                    f"sum by (response_code) (rate(istio_requests_total{{{gateway}}}[5m]))",
                    "{{response_code}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Gateway request latency",
            _quantiles("istio_request_duration_milliseconds", gateway, (), ""),
            unit="ms",
        ),
    ]


# GatewayClass -> its dashboard panels (beside monitoring.GATEWAY_MONITORS: same keys).
GATEWAY_PANELS = {
    "agentgateway": agentgateway_panels,
    "istio": istio_gateway_panels,
    "kgateway": envoy_gateway_panels,
}


def pools_dashboard(monitoring: Monitoring) -> Dashboard:
    scope = Scope(monitoring.namespace, monitoring.instance)
    servers = scope.select(Component.MODEL_SERVER)
    per_pod = by("pod", ROLE_LABEL)
    panels = [
        Panel(
            "Requests waiting per pod",
            [Query(f"sum {per_pod} (vllm:num_requests_waiting{{{servers}}})", "{{llmd_role}} {{pod}}")],
        ),
        Panel(
            "Requests running per pod",
            [Query(f"sum {per_pod} (vllm:num_requests_running{{{servers}}})", "{{llmd_role}} {{pod}}")],
        ),
        Panel(
            "KV-cache use per pod",
            [Query(f"max {per_pod} (vllm:kv_cache_usage_perc{{{servers}}})", "{{llmd_role}} {{pod}}")],
            unit="percentunit",
        ),
        Panel(
            "Prefix-cache hit rate per pool",
            [
                Query(
                    f"llmd:vllm_prefix_cache_hit:ratio_rate5m{{{scope.select()}}}",
                    "{{llmd_role}} {{llmd_model}}",
                )
            ],
            unit="percentunit",
        ),
        Panel(
            "Pool totals: waiting, running, pods",
            [
                Query(f"llmd:vllm_requests_waiting:sum{{{scope.select()}}}", "waiting {{llmd_role}}"),
                Query(f"llmd:vllm_requests_running:sum{{{scope.select()}}}", "running {{llmd_role}}"),
                Query(f"llmd:vllm_pods:count{{{scope.select()}}}", "pods {{llmd_role}}"),
            ],
        ),
        Panel(
            "Time to first token (vLLM)",
            _quantiles("vllm:time_to_first_token_seconds", servers, (ROLE_LABEL,), "{{llmd_role}}"),
            unit="s",
        ),
        Panel(
            "Inter-token latency",
            _quantiles("vllm:inter_token_latency_seconds", servers, (ROLE_LABEL,), "{{llmd_role}}"),
            unit="s",
        ),
        Panel(
            "End-to-end latency",
            _quantiles("vllm:e2e_request_latency_seconds", servers, (ROLE_LABEL,), "{{llmd_role}}"),
            unit="s",
        ),
        Panel(
            "Queue time",
            _quantiles("vllm:request_queue_time_seconds", servers, (ROLE_LABEL,), "{{llmd_role}}"),
            unit="s",
        ),
        Panel(
            "Token throughput",
            [
                Query(
                    f"sum {by(ROLE_LABEL)} (rate(vllm:prompt_tokens_total{{{servers}}}[5m]))",
                    "prompt {{llmd_role}}",
                ),
                Query(
                    f"sum {by(ROLE_LABEL)} (rate(vllm:generation_tokens_total{{{servers}}}[5m]))",
                    "generated {{llmd_role}}",
                ),
            ],
        ),
        Panel(
            "Finished requests by reason",
            [
                Query(
                    f"sum {by(ROLE_LABEL, 'finished_reason')} "
                    f"(rate(vllm:request_success_total{{{servers}}}[5m]))",
                    "{{llmd_role}} {{finished_reason}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Preemptions",
            [
                Query(
                    f"sum {per_pod} (rate(vllm:num_preemptions_total{{{servers}}}[5m]))",
                    "{{llmd_role}} {{pod}}",
                )
            ],
        ),
    ]
    return Dashboard("pools", f"llm-d {monitoring.instance}: model-server pools", panels)


def pd_dashboard(monitoring: Monitoring) -> Dashboard:
    scope = Scope(monitoring.namespace, monitoring.instance)
    epp = scope.select(Component.EPP)
    sidecars = scope.select(Component.SIDECAR)
    decode = scope.pool(Role.DECODE)
    panels = [
        Panel(
            "Disaggregated share of requests",
            [
                Query(
                    f'sum(rate(epp_scheduler_picks_total{{{epp},profile="{Role.PREFILL}"}}[5m]))'
                    f' / sum(rate(epp_scheduler_picks_total{{{epp},profile="{Role.DECODE}"}}[5m]))',
                    "prefilled remotely",
                )
            ],
            unit="percentunit",
            description="Requests the EPP gave a prefill pod, over all it scheduled (every request has "
            "a decode pick).",
        ),
        Panel(
            "Sidecar requests by path",
            [Query(f"sum by (mode) (rate(llmd_sidecar_requests_total{{{sidecars}}}[5m]))", "{{mode}}")],
            unit="reqps",
        ),
        Panel(
            "Fallbacks to local prefill by reason",
            [
                Query(
                    f"sum by (reason) (rate(llmd_sidecar_prefill_fallbacks_total{{{sidecars}}}[5m]))",
                    "{{reason}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Fallback ratio",
            [Query(f"llmd:sidecar_prefill_fallbacks:ratio_rate5m{{{scope.select()}}}", "{{llmd_model}}")],
            unit="percentunit",
        ),
        Panel(
            "Remote prefill leg duration",
            _quantiles("llmd_sidecar_prefill_duration_seconds", sidecars, (), ""),
            unit="s",
        ),
        Panel("NIXL KV transfer time", _quantiles("vllm:nixl_xfer_time_seconds", decode, (), ""), unit="s"),
        Panel(
            "KV from the prefill pod (external prefix-cache hits)",
            [
                Query(f"sum(rate(vllm:external_prefix_cache_hits_total{{{decode}}}[5m]))", "tokens pulled"),
                Query(f"sum(rate(vllm:nixl_num_failed_transfers_total{{{decode}}}[5m]))", "failed transfers"),
            ],
        ),
        Panel(
            "Prefill vs decode queues",
            [Query(f"llmd:vllm_requests_waiting:sum{{{scope.select()}}}", "{{llmd_role}}")],
        ),
    ]
    return Dashboard("pd", f"llm-d {monitoring.instance}: prefill/decode", panels)


def dashboards(monitoring: Monitoring) -> list[Dashboard]:
    boards = [epp_dashboard(monitoring), pools_dashboard(monitoring)]
    if monitoring.disaggregated:
        boards.append(pd_dashboard(monitoring))
    return boards


# Grafana refuses longer dashboard uids (Grafana's Dashboard HTTP API docs: "maximum length of 40").
UID_MAX = 40


def dashboard_uid(monitoring: Monitoring, board: Dashboard) -> str:
    """Stable per stack and board, so a re-deploy replaces the dashboard instead of adding one. A uid
    too long for Grafana keeps its readable start and ends with a hash of the whole: cutting it off
    alone gave two models of one stack (or two boards) the same uid once their names ran past 40."""
    uid = f"llmd-{monitoring.namespace}-{monitoring.instance}-{board.key}"
    if len(uid) <= UID_MAX:
        return uid
    digest = hashlib.sha256(uid.encode()).hexdigest()[:10]
    return f"{uid[: UID_MAX - len(digest) - 1]}-{digest}"


def dashboard_json(monitoring: Monitoring, board: Dashboard) -> dict[str, Any]:
    panels = []
    for index, panel in enumerate(board.panels):
        width = 8 if panel.kind == "stat" else 12
        panels.append(
            {
                "id": index + 1,
                "type": panel.kind,
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"x": (index % 2) * 12, "y": (index // 2) * 8, "w": width, "h": 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "expr": q.expr,
                        "legendFormat": q.legend,
                        "datasource": DATASOURCE,
                    }
                    for i, q in enumerate(panel.queries)
                ],
            }
        )
    return {
        "uid": dashboard_uid(monitoring, board),
        "title": board.title,
        "tags": ["llm-d", "pulumi-llmd"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
            ]
        },
        "panels": panels,
    }


def dashboard_config_maps(monitoring: Monitoring) -> list[dict[str, Any]]:
    settings = monitoring.settings.dashboards
    manifests = []
    for board in dashboards(monitoring):
        metadata: dict[str, Any] = {
            "name": f"{monitoring.instance}-dashboard-{board.key}",
            "namespace": settings.namespace or monitoring.namespace,
            "labels": {**naming.common_labels(monitoring.instance, "monitoring"), **settings.labels},
        }
        if settings.folder is not None:
            metadata["annotations"] = {FOLDER_ANNOTATION: settings.folder}
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": metadata,
                "data": {
                    f"llmd-{monitoring.instance}-{board.key}.json": json.dumps(
                        dashboard_json(monitoring, board), indent=1
                    )
                },
            }
        )
    return manifests
