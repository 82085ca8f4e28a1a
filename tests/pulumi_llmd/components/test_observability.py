"""Monitoring, dashboards, autoscaling and tracing as the real program renders them: every object
validates (custom resources against their CRDs, core kinds with kubernetes-validate), each PodMonitor
selects pods that carry the port it scrapes, and the config rules name the key."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pulumi_llmd.config.errors import ConfigError
from pulumi_llmd.config.loader import parse_stack_config
from render.engine import RenderResult
from tests.support.cloud import render_edited
from tests.support.stacks import CRDS, kind_config, render_config, validate_all, validate_core

MONITORED: dict[str, Any] = {"monitoring": {"labels": {"release": "kube-prometheus-stack"}}}


def render(**overrides: Any) -> RenderResult:
    return render_config(kind_config(**{**MONITORED, **overrides}))


def validate(result: RenderResult) -> None:
    if CRDS.is_dir():
        validate_all(result, "1.33")
    else:
        for manifest in result.manifests():
            if manifest["apiVersion"].split("/")[0] in ("v1", "apps", "autoscaling"):
                validate_core(manifest, "1.33")


@pytest.fixture(scope="module")
def pd_stack() -> RenderResult:
    result = render(
        autoscaling={"enabled": True},
        tracing={"enabled": True, "endpoint": "http://otel.monitoring:4317", "sampleRatio": 0.25},
    )
    validate(result)
    return result


def pods(result: RenderResult) -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in result.manifests("Deployment")]


def test_every_pod_monitor_selects_pods_that_expose_its_port(pd_stack: RenderResult) -> None:
    monitors = {m["metadata"]["name"]: m for m in pd_stack.manifests("PodMonitor")}
    assert sorted(monitors) == ["t-decode", "t-decode-sidecar", "t-epp", "t-gateway", "t-prefill"]
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [p for p in pods(pd_stack) if wanted.items() <= p["metadata"]["labels"].items()]
        if name == "t-gateway":  # agentgateway's proxy pods are made by its controller, not rendered here
            assert wanted == {"gateway.networking.k8s.io/gateway-name": "t-gateway"}
            assert endpoint["port"] == "metrics"
            continue
        assert selected, f"{name} selects no rendered pod"
        for pod in selected:
            containers = pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
            ports = {p["name"]: c["name"] for c in containers for p in c.get("ports", [])}
            assert endpoint["port"] in ports, f"{name}: no port {endpoint['port']} in {sorted(ports)}"
        labels = {r["targetLabel"] for r in endpoint["relabelings"]}
        assert {"llmd_stack", "llmd_component"} <= labels


def test_decode_vllm_is_scraped_behind_the_sidecar_and_the_sidecar_on_its_own_port(
    pd_stack: RenderResult,
) -> None:
    decode = pd_stack.get("PodMonitor", "t-decode").document["spec"]["podMetricsEndpoints"][0]
    sidecar = pd_stack.get("PodMonitor", "t-decode-sidecar").document["spec"]["podMetricsEndpoints"][0]
    assert decode["port"] == "vllm-http"  # port 8200: vLLM itself, not the sidecar's proxy on 8000
    assert sidecar["port"] == "sidecar-metrics"
    template = pd_stack.get("Deployment", "t-decode").document["spec"]["template"]["spec"]
    (routing,) = template["initContainers"]
    assert routing["args"][routing["args"].index("--metrics-port") + 1] == "9090"


def test_autoscaled_pools_leave_replicas_to_keda(pd_stack: RenderResult) -> None:
    for role in ("prefill", "decode"):
        workload = pd_stack.get("Deployment", f"t-{role}").document
        assert "replicas" not in workload["spec"]
        scaled = pd_stack.get("ScaledObject", f"t-{role}").document["spec"]
        assert scaled["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"t-{role}",
        }
        for trigger in scaled["triggers"]:
            query = trigger["metadata"]["query"]
            assert f'llmd_role="{role}"' in query and query.endswith("or vector(0)")
        behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 180}]
    assert pd_stack.get("Deployment", "t-epp").document["spec"]["replicas"] == 2  # its default, not scaled


def test_hpa_mode_renders_external_metric_hpas() -> None:
    result = render(
        autoscaling={
            "enabled": True,
            "mode": "hpa",
            "prefill": {"maxReplicas": 3, "triggers": [{"signal": "requestRate", "target": 5}]},
        }
    )
    validate(result)
    assert not result.manifests("ScaledObject")
    hpa = result.get("HorizontalPodAutoscaler", "t-prefill").document["spec"]
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"] == {
        "name": "llmd_epp_picks_rate",
        "selector": {"matchLabels": {"llmd_stack": "t", "profile": "prefill"}},
    }
    assert hpa["maxReplicas"] == 3
    decode = result.get("HorizontalPodAutoscaler", "t-decode").document["spec"]
    assert [m["external"]["metric"]["name"] for m in decode["metrics"]] == [
        "llmd_vllm_requests_waiting",
        "llmd_vllm_requests_running",
    ]


def test_tracing_reaches_the_epp_and_the_sidecar(pd_stack: RenderResult) -> None:
    epp = pd_stack.get("Deployment", "t-epp").document["spec"]["template"]["spec"]["containers"][0]
    sidecar = pd_stack.get("Deployment", "t-decode").document["spec"]["template"]["spec"]["initContainers"][0]
    for container, service in ((epp, "t-epp"), (sidecar, "t-decode-sidecar")):
        assert "--tracing=true" in container["args"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OTEL_SERVICE_NAME"] == service
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.monitoring:4317"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"


def test_tracing_off_adds_nothing() -> None:
    result = render()
    epp = result.get("Deployment", "t-epp").document["spec"]["template"]["spec"]["containers"][0]
    assert "--tracing=false" in epp["args"]  # upstream EPP images trace unless told not to
    assert not any(e["name"].startswith("OTEL_") for e in epp["env"])
    sidecar = result.get("Deployment", "t-decode").document["spec"]["template"]["spec"]["initContainers"][0]
    assert "env" not in sidecar


def test_dashboards_are_config_maps_with_the_sidecar_label(pd_stack: RenderResult) -> None:
    boards = [c for c in pd_stack.manifests("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert sorted(c["metadata"]["name"] for c in boards) == [
        "t-dashboard-epp",
        "t-dashboard-pd",
        "t-dashboard-pools",
    ]
    for config_map in boards:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        (text,) = config_map["data"].values()
        dashboard = json.loads(text)
        assert dashboard["panels"] and all(p["targets"] for p in dashboard["panels"])


def test_dashboard_label_namespace_and_folder_are_configurable() -> None:
    dashboards = {"labels": {"grafana-dashboards": "llm"}, "namespace": "monitoring", "folder": "LLM"}
    result = render(monitoring={"enabled": False, "dashboards": dashboards}, prefill={"enabled": False})
    assert not result.manifests("PodMonitor") and not result.manifests("PrometheusRule")
    boards = [c for c in result.manifests("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert len(boards) == 2  # no P/D board without P/D
    for config_map in boards:
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["labels"]["grafana-dashboards"] == "llm"
        assert "grafana_dashboard" not in config_map["metadata"]["labels"]
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM"}


def test_everything_off_renders_no_monitoring_object() -> None:
    result = render(monitoring={"enabled": False, "dashboards": {"enabled": False}})
    kinds = {m["kind"] for m in result.manifests()}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ScaledObject", "HorizontalPodAutoscaler"}
    assert not any("dashboard" in c["metadata"]["name"] for c in result.manifests("ConfigMap"))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_the_rules(pd_stack: RenderResult, tmp_path: Path) -> None:
    rule = pd_stack.get("PrometheusRule", "t-rules").document
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (
            {"monitoring": {"ttftSlo": {"thresholdSeconds": 0.7}}},
            "monitoring.ttftSlo.thresholdSeconds",
            "bucket",
        ),
        ({"monitoring": {"labels": {"bad key!": "x"}}}, "monitoring.labels", "label key"),
        (
            {
                "autoscaling": {
                    "enabled": True,
                    "decode": {
                        "minReplicas": 5,
                        "maxReplicas": 2,
                        "triggers": [{"signal": "queue", "target": 1}],
                    },
                }
            },
            "autoscaling.decode.minReplicas",
            "maxReplicas",
        ),
        ({"autoscaling": {"decode": {"triggers": []}}}, "autoscaling.decode.triggers", "at least 1"),
        ({"autoscaling": {"mode": "vpa"}}, "autoscaling.mode", "keda"),
        ({"tracing": {"sampleRatio": 2}}, "tracing.sampleRatio", "1"),
    ],
)
def test_bad_observability_config_names_the_key(overrides: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_stack_config(kind_config(**overrides), has_hf_token=False)
    text = str(raised.value)
    assert key in text and message in text, text


def test_autoscaling_refuses_leaderworkersets() -> None:
    config = kind_config(
        model={"name": "m", "uri": "pvc://models/m"},
        prefill={"enabled": False},
        decode={"tensorParallel": 1, "nodesPerReplica": 2, "accelerator": {"count": 0}},
        autoscaling={"enabled": True},
    )
    with pytest.raises(ConfigError, match=r"autoscaling\.enabled"):
        parse_stack_config(config, has_hf_token=False)


@pytest.mark.parametrize(
    ("gateway", "port", "path", "latency_metric"),
    [
        ({}, "metrics", "/metrics", "agentgateway_request_duration_seconds_bucket"),
        ({"provider": "kgateway"}, "metrics", "/metrics", "agentgateway_request_duration_seconds_bucket"),
        (
            {"provider": "kgateway", "kgatewayDataPlane": "envoy"},
            "http-monitoring",
            "/metrics",
            "envoy_http_downstream_rq_time_bucket",
        ),
        (
            {"provider": "istio"},
            "http-envoy-prom",
            "/stats/prometheus",
            "istio_request_duration_milliseconds_bucket",
        ),
    ],
    ids=["agentgateway", "kgateway", "kgateway-envoy", "istio"],
)
def test_each_in_cluster_gateway_gets_a_monitor_and_panels_for_its_own_proxies(
    gateway: dict[str, Any], port: str, path: str, latency_metric: str
) -> None:
    result = render(gateway=gateway)
    monitor = result.get("PodMonitor", "t-gateway").document
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port, path)
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "gateway.networking.k8s.io/gateway-name": "t-gateway"
    }
    dashboards = "\n".join(json.dumps(m["data"]) for m in result.manifests("ConfigMap"))
    assert latency_metric in dashboards


def test_a_cloud_managed_gateway_gets_no_gateway_monitor(tmp_path: Path) -> None:
    def managed_gateway_with_monitoring(config: dict[str, Any]) -> None:
        config["llmd:gateway"] = {"provider": "gke"}
        config["llmd:networkPolicy"] = {"enabled": False}  # GKE's proxies are not pods a policy selects
        config["llmd:monitoring"] = MONITORED["monitoring"]

    result = render_edited("gke", managed_gateway_with_monitoring, tmp_path)
    assert result.manifests("PodMonitor"), "monitoring is on: the EPP and pools still get monitors"
    assert "t-gateway" not in {m["metadata"]["name"] for m in result.manifests("PodMonitor")}
