"""`llmd:epp.implementation: bundled | upstream`: the same Service, RBAC, ConfigMap and InferencePool,
with this project's EPP and sidecar or llm-d's (llm-d-router v0.10.0), so the two can be A/B'd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from render.engine import RenderResult
from tests.support.stacks import CRDS, kind_config, render_config, validate_all

# Every flag llm-d-router v0.10.0's EPP defines (pkg/epp/server/options.go AddFlags; logging's -v from
# pkg/common/observability/logging/options.go): what the upstream Deployment may pass.
UPSTREAM_EPP_FLAGS = {
    "grpc-port", "ha-enable-leader-election", "drain-timeout", "grpc-max-recv-msg-size",
    "grpc-max-send-msg-size", "pool-group", "pool-namespace", "pool-name", "endpoint-selector",
    "endpoint-target-ports", "disable-endpoint-subset-filter", "emit-endpoint-scores",
    "refresh-metrics-interval", "refresh-prometheus-metrics-interval", "metrics-staleness-threshold",
    "tracing", "health-checking", "metrics-port", "grpc-health-port", "enable-pprof", "cert-path",
    "enable-cert-reload", "enable-grpc-stream-metrics", "secure-serving", "tls-min-version",
    "tls-cipher-suites", "metrics-endpoint-auth", "metrics-client-ca-file", "metrics-cert-dir",
    "config-file", "config-text", "allow-experimental-plugins", "v",
}  # fmt: skip
# The disagg sidecar's (pkg/sidecar/proxy/options.go, v0.10.0), the ones this project could pass.
UPSTREAM_SIDECAR_FLAGS = {
    "port", "model-server-port", "vllm-port", "data-parallel-size", "kv-connector", "ec-connector",
    "enable-ssrf-protection", "enable-prefiller-sampling", "secure-proxy", "cert-path", "inference-pool",
    "pool-group", "prefill-max-retries", "prefill-retry-backoff", "decode-chunk-size", "tracing",
    "metrics-port", "enable-tls", "tls-insecure-skip-verify", "max-idle-conns-per-host",
}  # fmt: skip
# Plugin types llm-d-router v0.10.0 registers (each plugin's `...Type = "<name>"`) that the generated
# EndpointPickerConfigs use; its config parser is strict (RELEASE-NOTES.md, PR 1134).
UPSTREAM_PLUGIN_TYPES = {
    "queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "metrics-data-source",
    "core-metrics-extractor", "prefill-filter", "decode-filter", "max-score-picker",
    "prefix-based-pd-decider", "disagg-profile-handler",
    # The stacks' single-pool profile adds it (scorer/active_request.go ActiveRequestType); the flow
    # control plugins the stack can render (reference/epp.md, registered plugin types).
    "active-request-scorer", "utilization-detector", "concurrency-detector",
    "round-robin-fairness-policy", "global-strict-fairness-policy", "fcfs-ordering-policy",
    "edf-ordering-policy", "slo-deadline-ordering-policy", "static-usage-limit-policy",
    "priority-holdback-policy",
}  # fmt: skip

SHARED_KINDS = ("Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "InferencePool")


@pytest.fixture(scope="module")
def bundled() -> RenderResult:
    return render_config(kind_config())


@pytest.fixture(scope="module")
def upstream() -> RenderResult:
    return render_config(kind_config(epp={"implementation": "upstream"}))


def container(result: RenderResult, workload: str, name: str) -> dict[str, Any]:
    spec = result.get("Deployment", workload).document["spec"]["template"]["spec"]
    found: dict[str, Any] = next(
        c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name
    )
    return found


def flag_names(args: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}


def test_upstream_runs_llm_d_images_with_their_own_entrypoints(upstream: RenderResult) -> None:
    epp = container(upstream, "t-epp", "epp")
    assert epp["image"] == "ghcr.io/llm-d/llm-d-router-endpoint-picker:v0.10.0"
    assert "command" not in epp  # the image's /app/epp (Dockerfile.epp ENTRYPOINT)
    sidecar = container(upstream, "t-decode", "routing-sidecar")
    assert sidecar["image"] == "ghcr.io/llm-d/llm-d-router-disagg-sidecar:v0.10.0"
    assert "command" not in sidecar
    assert sidecar["args"] == [
        "--port=8000",
        "--model-server-port=8200",
        "--kv-connector=nixlv2",
        "--secure-proxy=false",  # cleartext on 8000, as the InferencePool's appProtocol http says
    ]
    if CRDS.is_dir():
        validate_all(upstream, "1.33")


def test_upstream_flags_are_ones_llm_d_defines(upstream: RenderResult) -> None:
    epp_args = container(upstream, "t-epp", "epp")["args"]
    assert flag_names(epp_args) <= UPSTREAM_EPP_FLAGS
    # Same RBAC as bundled: no metrics auth (needs a ClusterRole), no tracing exporter, no pprof.
    for flag in (
        "--metrics-endpoint-auth=false",
        "--tracing=false",
        "--enable-pprof=false",
        "--secure-serving=true",
    ):
        assert flag in epp_args
    assert "--served-models" not in epp_args  # the bundled EPP's own flags
    assert "--refresh-metrics-idle-interval" not in epp_args
    assert not any(arg.startswith("--metrics-name-filter") for arg in epp_args)
    assert epp_args[epp_args.index("--refresh-metrics-interval") + 1] == "50ms"  # a Go duration
    sidecar_args = container(upstream, "t-decode", "routing-sidecar")["args"]
    assert flag_names(sidecar_args) <= UPSTREAM_SIDECAR_FLAGS


def test_bundled_epp_scrapes_quiet_pods_every_idle_interval(bundled: RenderResult) -> None:
    epp_args = container(bundled, "t-epp", "epp")["args"]
    assert epp_args[epp_args.index("--refresh-metrics-idle-interval") + 1] == "500ms"


def test_bundled_epp_asks_for_filtered_metrics_pages(bundled: RenderResult) -> None:
    epp_args = container(bundled, "t-epp", "epp")["args"]
    assert "--metrics-name-filter=true" in epp_args


def test_both_implementations_share_service_rbac_config_and_pool(
    bundled: RenderResult, upstream: RenderResult
) -> None:
    for kind in SHARED_KINDS:
        assert upstream.manifests(kind) == bundled.manifests(kind), kind
    # The probes and ports line up with both EPPs' health services (cmd/epp/runner/health.go).
    for result in (bundled, upstream):
        epp = container(result, "t-epp", "epp")
        assert {p["containerPort"] for p in epp["ports"]} == {9002, 9003, 9090}
        assert epp["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}


def test_generated_configs_use_only_plugins_upstream_registers(upstream: RenderResult) -> None:
    flow = {
        "enabled": True,
        "saturationDetector": {"type": "concurrency-detector", "maxConcurrency": 8},
        "priorityBands": [{"priority": 1, "orderingPolicy": "edf-ordering-policy"}],
        "usageLimit": {"type": "priority-holdback-policy", "minCeiling": 0.75},
    }
    for config in (
        kind_config(epp={"implementation": "upstream"}),
        kind_config(prefill={"enabled": False}),
        kind_config(epp={"implementation": "upstream", "flowControl": flow}, prefill={"enabled": False}),
    ):
        # The EPP's ConfigMap is the one carrying its config (the others hold dashboards).
        (config_map,) = [
            m for m in render_config(config).manifests("ConfigMap") if "epp-config.yaml" in m.get("data", {})
        ]
        document = yaml.safe_load(config_map["data"]["epp-config.yaml"])
        assert {p["type"] for p in document["plugins"]} <= UPSTREAM_PLUGIN_TYPES


def test_upstream_reloads_a_mounted_certificate() -> None:
    result = render_config(kind_config(epp={"implementation": "upstream", "tlsSecretName": "epp-cert"}))
    args = container(result, "t-epp", "epp")["args"]
    assert args[args.index("--cert-path") + 1] == "/etc/epp/tls"
    assert "--enable-cert-reload" in args


def test_upstream_images_can_be_pinned_elsewhere() -> None:
    digest = "sha256:" + "a" * 64
    config = kind_config(
        epp={"implementation": "upstream", "upstreamImage": f"registry.example/epp@{digest}"},
        decode={
            **kind_config()["decode"],
            "sidecar": {"upstreamImage": f"registry.example/sidecar@{digest}"},
        },
    )
    result = render_config(config)
    assert container(result, "t-epp", "epp")["image"] == f"registry.example/epp@{digest}"
    assert container(result, "t-decode", "routing-sidecar")["image"] == f"registry.example/sidecar@{digest}"


def test_bundled_epp_serves_tls_by_default_on_its_h2_transport(bundled: RenderResult, tmp_path: Path) -> None:
    """The bundled EPP's rendered command, with its rendered config file, runs its default transport
    (h2, epp.server.listeners) with TLS on: a self-signed pair without a Secret, as upstream.
    ``--transport`` is the bundled EPP's own flag; llm-d's EPP has none (UPSTREAM_EPP_FLAGS above
    keeps it off the upstream Deployment)."""
    epp_cli = pytest.importorskip("epp.cli", reason="the EPP CLI is not in this checkout")
    listeners = pytest.importorskip("epp.server.listeners", reason="the EPP server is not in this checkout")
    args = list(container(bundled, "t-epp", "epp")["args"])
    (config_map,) = [m for m in bundled.manifests("ConfigMap") if "epp-config.yaml" in m.get("data", {})]
    config_file = tmp_path / "epp-config.yaml"
    config_file.write_text(config_map["data"]["epp-config.yaml"])
    args[args.index("--config-file") + 1] = str(config_file)
    _, server, _ = epp_cli.parse_args(args)
    assert server.transport is listeners.Transport.H2
    assert server.tls is not None and server.tls.pair.origin == "self-signed" and not server.tls.reload


def test_bundled_epp_reloads_a_mounted_certificate_on_its_h2_transport() -> None:
    epp_cli = pytest.importorskip("epp.cli", reason="the EPP CLI is not in this checkout")
    result = render_config(kind_config(epp={"tlsSecretName": "epp-cert"}))
    parsed = epp_cli.build_parser().parse_args(container(result, "t-epp", "epp")["args"])
    assert (parsed.transport, parsed.secure_serving) == ("h2", True)
    assert str(parsed.cert_path) == "/etc/epp/tls" and parsed.enable_cert_reload


def _pod_templates(result: RenderResult) -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in result.manifests("Deployment")]


def _declared_ports(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    running = spec["containers"] + [
        c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"
    ]
    return [port for c in running for port in c.get("ports", [])]


def _selected(result: RenderResult, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [t for t in _pod_templates(result) if labels.items() <= t["metadata"]["labels"].items()]


@pytest.mark.parametrize("implementation", ["bundled", "upstream"])
def test_monitors_and_policies_name_only_ports_the_pods_have(implementation: str) -> None:
    """llm-d's P/D sidecar declares no metrics port: with it, no PodMonitor may scrape the bundled
    sidecar's `sidecar-metrics`, no alert may wait on its `llmd_sidecar_*` series (it would never fire),
    and the monitoring namespace is not let in to 9090 on decode pods."""
    result = render_config(
        kind_config(
            epp={"implementation": implementation},
            monitoring={"enabled": True},
            networkPolicy={"metricsNamespaceLabels": {"name": "monitoring"}},
        )
    )
    checked = 0
    for monitor in result.manifests("PodMonitor"):
        for pods in _selected(result, monitor["spec"]["selector"]["matchLabels"]):
            names = {port["name"] for port in _declared_ports(pods)}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in names, (monitor["metadata"]["name"], endpoint["port"])
                checked += 1
    for policy in result.manifests("NetworkPolicy"):
        for pods in _selected(result, policy["spec"]["podSelector"]["matchLabels"]):
            numbers = {port["containerPort"] for port in _declared_ports(pods)}
            for rule in policy["spec"]["ingress"]:
                for port in rule.get("ports", []):
                    assert port["port"] in numbers, (policy["metadata"]["name"], port["port"])
                    checked += 1
    assert checked > 10
    sidecar_monitors = [
        m for m in result.manifests("PodMonitor") if m["metadata"]["name"] == "t-decode-sidecar"
    ]
    (rule,) = result.manifests("PrometheusRule")
    rules_text = yaml.safe_dump(rule["spec"])
    if implementation == "bundled":
        assert len(sidecar_monitors) == 1 and "llmd_sidecar_prefill_fallbacks_total" in rules_text
    else:
        assert not sidecar_monitors and "llmd_sidecar_" not in rules_text
