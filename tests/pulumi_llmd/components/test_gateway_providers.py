"""The four gateway providers, rendered through the real program and validated against their CRDs
(Gateway API at the release the stack installs for that provider, Istio's DestinationRule, GKE's
policies) and core kinds with kubernetes-validate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import render.engine
from pulumi_llmd.config import ConfigError
from pulumi_llmd.config.gateways import kgateway_upstream_notice
from render.engine import RenderResult
from tests.support.cloud import one, render_edited
from tests.support.stacks import (
    CRDS,
    GATEWAY_API_CRDS,
    is_core,
    kind_config,
    render_config,
    validate_all,
    validate_core,
    validate_custom,
)

needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"CRD files not found at {CRDS}")


def validate(result: RenderResult, gateway_api: str | None, kubernetes: str = "1.33") -> None:
    if CRDS.is_dir():
        validate_all(result, kubernetes, gateway_api)
        return
    for manifest in result.manifests():
        if is_core(manifest):
            validate_core(manifest, kubernetes)


def charts(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {o.name: o.document for o in result.of_source("helm")}


def installs(result: RenderResult) -> list[str]:
    return sorted(o.document["file"] for o in result.of_source("yaml"))


def gateway_class(result: RenderResult) -> str:
    (gateway,) = result.manifests("Gateway")
    return str(gateway["spec"]["gatewayClassName"])


# --- agentgateway (the default) -------------------------------------------------------------------


def test_agentgateway_is_the_default_with_its_charts_and_class() -> None:
    result = render_config(kind_config())
    validate(result, "v1.6.1")
    assert set(charts(result)) == {"agentgateway-crds", "agentgateway"}
    controller = charts(result)["agentgateway"]
    assert controller["chart"] == "oci://cr.agentgateway.dev/charts/agentgateway"
    assert controller["version"] == "v1.4.1" and controller["namespace"] == "agentgateway-system"
    assert controller["values"] == {"inferenceExtension": {"enabled": True}}
    assert (
        charts(result)["agentgateway-crds"]["chart"] == "oci://cr.agentgateway.dev/charts/agentgateway-crds"
    )
    assert gateway_class(result) == "agentgateway"
    assert installs(result) == [
        "https://github.com/kubernetes-sigs/gateway-api-inference-extension/releases/download/v1.6.2/"
        "v1-manifests.yaml",
        "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.1/standard-install.yaml",
        "https://github.com/llm-d/llm-d-router/releases/download/v0.10.0/manifests.yaml",
    ]
    # agentgateway dials the EPP over TLS itself (a BackendTLS policy per pool): no extra object.
    assert not result.manifests("DestinationRule")


# --- Istio ---------------------------------------------------------------------------------------


@needs_crds
def test_istio_turns_the_inference_extension_on_and_dials_the_epp_over_tls() -> None:
    result = render_config(kind_config(gateway={"provider": "istio"}))
    validate(result, "v1.5.1")
    assert list(charts(result)) == ["istio-base", "istiod"]
    for chart in charts(result).values():
        assert chart["repository"] == "https://istio-release.storage.googleapis.com/charts"
        assert chart["version"] == "1.30.3" and chart["namespace"] == "istio-system"
    assert charts(result)["istiod"]["values"] == {
        "global": {"istioNamespace": "istio-system"},
        "env": {"ENABLE_GATEWAY_API_INFERENCE_EXTENSION": "true"},
    }
    assert charts(result)["istio-base"]["values"] == {"global": {"istioNamespace": "istio-system"}}
    assert gateway_class(result) == "istio"
    assert any("gateway-api/releases/download/v1.5.1/" in url for url in installs(result))
    (rule,) = result.manifests("DestinationRule")
    assert rule["metadata"]["name"] == "t-epp"
    assert rule["spec"] == {
        "host": "t-epp.llm-d.svc.cluster.local",
        "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": True}},
    }
    # The rule needs Istio's CRDs: it waits for the control plane like the Gateway.
    istiod = next(o for o in result.of_source("helm") if o.name == "istiod")
    registration = result.get("DestinationRule", "t-epp").registration
    assert istiod.registration.urn in registration.dependencies


def test_istio_with_a_plaintext_epp_dials_it_in_cleartext() -> None:
    result = render_config(kind_config(gateway={"provider": "istio"}, epp={"secureServing": False}))
    assert not result.manifests("DestinationRule")
    epp = result.get("Deployment", "t-epp").document["spec"]["template"]["spec"]["containers"][0]
    assert "--secure-serving=false" in epp["args"]


# --- kgateway 2.1 --------------------------------------------------------------------------------


def test_kgateway_uses_its_agentgateway_data_plane_and_says_upstream_moved_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(render.engine.pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    result = render_config(kind_config(gateway={"provider": "kgateway"}))
    validate(result, "v1.4.1")
    controller = charts(result)["kgateway"]
    assert controller["chart"] == "oci://cr.kgateway.dev/kgateway-dev/charts/kgateway"
    assert controller["version"] == "v2.1.3" and controller["namespace"] == "kgateway-system"
    assert controller["values"] == {
        "inferenceExtension": {"enabled": True},
        "agentgateway": {"enabled": True},
    }
    assert gateway_class(result) == "agentgateway"
    assert any("gateway-api/releases/download/v1.4.1/" in url for url in installs(result))
    assert warnings == [kgateway_upstream_notice()]
    assert "llmd:gateway.provider: agentgateway" in warnings[0]


def test_kgateway_envoy_data_plane_stays_selectable() -> None:
    result = render_config(kind_config(gateway={"provider": "kgateway", "kgatewayDataPlane": "envoy"}))
    validate(result, "v1.4.1")
    assert charts(result)["kgateway"]["values"]["agentgateway"] == {"enabled": False}
    assert gateway_class(result) == "kgateway"


# --- GKE -----------------------------------------------------------------------------------------


def _gke_provider(config: dict[str, Any]) -> None:
    config["llmd:gateway"] = {"provider": "gke"}
    config["llmd:networkPolicy"] = {"enabled": False}


def test_gke_uses_the_managed_class_and_the_policies_gke_needs(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        # Before 1.34 (the example stack runs a newer minor): the stack installs InferencePool itself.
        _gke_provider(config)
        config["llmd:kubernetesVersion"] = "1.33"
        config["llmd:gke"]["cluster"]["minMasterVersion"] = "1.33"

    result = render_edited("gke", edit, tmp_path)
    if CRDS.is_dir():  # GKE's own Network objects have no public CRD; the gateway's objects do
        for kind in ("Gateway", "HTTPRoute", "InferencePool", "HealthCheckPolicy", "GCPBackendPolicy"):
            for manifest in result.manifests(kind):
                validate_custom(manifest)
    assert charts(result) == {}  # GKE's gateway controller is managed
    assert gateway_class(result) == "gke-l7-regional-external-managed"
    # GKE owns the Gateway API CRDs; before 1.34 it does not install InferencePool.
    assert not any("kubernetes-sigs/gateway-api/releases" in url for url in installs(result))
    assert any("inference-extension/releases/download/v1.6.2/" in url for url in installs(result))
    (health,) = result.manifests("HealthCheckPolicy")
    (backend,) = result.manifests("GCPBackendPolicy")
    target = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama-70b"}
    assert health["spec"]["targetRef"] == target == backend["spec"]["targetRef"]
    assert health["spec"]["default"]["config"] == {
        "type": "HTTP",
        "httpHealthCheck": {"requestPath": "/health", "port": 8000},
    }
    assert backend["spec"]["default"] == {"timeoutSec": 300, "logging": {"enabled": True}}
    (route,) = result.manifests("HTTPRoute")
    assert "timeouts" not in route["spec"]["rules"][0]  # GKE takes it from the GCPBackendPolicy
    assert not result.manifests("NetworkPolicy")
    cluster = one(result, "gcp:container/cluster:Cluster")
    assert cluster.inputs["gatewayApiConfig"] == {"channel": "CHANNEL_STANDARD"}


def test_gke_from_1_34_installs_its_own_inference_pool_crd(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        _gke_provider(config)
        config["llmd:kubernetesVersion"] = "1.34"
        config["llmd:gke"]["cluster"]["minMasterVersion"] = "1.34"

    result = render_edited("gke", edit, tmp_path)
    releases = [url for url in installs(result) if "/releases/download/" in url]
    assert releases == ["https://github.com/llm-d/llm-d-router/releases/download/v0.10.0/manifests.yaml"]


def test_other_providers_leave_the_gke_cluster_gateway_api_alone(tmp_path: Path) -> None:
    result = render_edited("gke", lambda config: None, tmp_path)
    assert "gatewayApiConfig" not in one(result, "gcp:container/cluster:Cluster").inputs


# --- bad combinations are refused before any resource, naming the key -----------------------------


def problems(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    registered: list[str] = []
    original = render.engine._RecordingMonitor.RegisterResource

    def recording(self: Any, request: Any) -> Any:
        if request.type != "pulumi:pulumi:Stack":
            registered.append(request.type)
        return original(self, request)

    monkeypatch.setattr(render.engine._RecordingMonitor, "RegisterResource", recording)
    with pytest.raises(ConfigError) as failure:
        render_config(config)
    assert registered == []
    return [str(p) for p in failure.value.problems]


@pytest.mark.parametrize(
    ("gateway", "epp", "crds", "expected"),
    [
        (
            {"provider": "kgateway"},
            {"secureServing": False},
            {},
            "llmd:epp.secureServing must be true with gateway provider kgateway: it always dials the EPP "
            "over TLS, so a plaintext EPP would fail every request",
        ),
        (
            {},
            {"secureServing": False},
            {},
            "llmd:epp.secureServing must be true with gateway provider agentgateway: it always dials the EPP "
            "over TLS, so a plaintext EPP would fail every request",
        ),
        (
            {"provider": "gke"},
            {},
            {},
            "llmd:gateway.provider gke needs llmd:platform gke (GKE's managed Gateway controller); "
            "llmd:platform is kind: choose agentgateway, istio or kgateway",
        ),
        (
            {"provider": "istio", "kgatewayDataPlane": "envoy"},
            {},
            {},
            "llmd:gateway.kgatewayDataPlane applies to provider kgateway only (provider is istio)",
        ),
        (
            {"provider": "kgateway", "version": "v2.2.0"},
            {},
            {},
            "llmd:gateway.version must be a kgateway v2.1.x release (got v2.2.0): later lines dropped "
            "inference support; set gateway.provider agentgateway instead",
        ),
        (
            {"provider": "kgateway"},
            {},
            {"gatewayApiVersion": "v1.6.1"},
            "llmd:crds.gatewayApiVersion must be a Gateway API v1.4.x release with gateway provider kgateway "
            "(got v1.6.1)",
        ),
        (
            {"provider": "istio", "version": "v1.30.3"},
            {},
            {},
            "llmd:gateway.version is an Istio chart version without the v, e.g. 1.30.3 (got v1.30.3)",
        ),
    ],
)
def test_bad_gateway_combinations_are_refused(
    gateway: dict[str, Any],
    epp: dict[str, Any],
    crds: dict[str, Any],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = kind_config(gateway=gateway, epp=epp, crds=crds)
    assert expected in problems(config, monkeypatch)


def test_gke_provider_keys_that_gke_owns_are_refused(tmp_path: Path) -> None:
    from tests.pulumi_llmd.config.test_cloud_config import problems as cloud_problems

    def edit(config: dict[str, Any]) -> None:
        config["gateway"] = {"provider": "gke", "version": "v1.4.1", "className": "istio"}
        config["crds"] = {"gatewayApiVersion": "v1.5.1"}

    message = cloud_problems("gke", edit)
    assert "llmd:gateway.version must be unset with provider gke" in message
    assert "llmd:crds.gatewayApiVersion must be unset with gateway provider gke" in message
    assert "llmd:gateway.className must be a GKE managed class" in message
    # The example keeps NetworkPolicies on, which cannot admit Google's load balancers.
    assert "llmd:networkPolicy.enabled must be false with gateway provider gke" in message


def test_route_paths_are_configurable_and_checked() -> None:
    result = render_config(kind_config(gateway={"paths": ["/v1/chat/completions"]}))
    (route,) = result.manifests("HTTPRoute")
    assert route["spec"]["rules"][0]["matches"] == [
        {"path": {"type": "Exact", "value": "/v1/chat/completions"}}
    ]
    with pytest.raises(ConfigError, match=r"llmd:gateway\.paths\[0\]"):
        render_config(kind_config(gateway={"paths": ["v1/no-slash"]}))


@needs_crds
@pytest.mark.parametrize("gateway_api", sorted(GATEWAY_API_CRDS))
def test_each_installed_gateway_api_release_accepts_the_route(gateway_api: str) -> None:
    """The Gateway and HTTPRoute fit every Gateway API release a provider may be given."""
    result = render_config(kind_config())
    for kind in ("Gateway", "HTTPRoute"):
        (manifest,) = result.manifests(kind)
        validate_custom(manifest, gateway_api)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"namespace": "agentgateway-system"}, "namespace"),  # the provider's default namespace
        ({"gateway": {"namespace": "llm-d"}}, "gateway.namespace"),
        ({"gateway": {"provider": "istio"}, "namespace": "istio-system"}, "namespace"),
    ],
)
def test_the_stack_and_the_control_plane_do_not_share_a_namespace(
    overrides: dict[str, Any], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both create (and own) their Namespace: two Pulumi resources for one object fail the second
    create on a real cluster ("already exists"), and deleting either deletes the other's objects."""
    (problem,) = problems(kind_config(**overrides), monkeypatch)
    assert problem.startswith(f"llmd:{key} is ")
    assert "each create their own namespace" in problem
    # With the control plane installed elsewhere, the stack alone owns the namespace.
    result = render_config(
        kind_config(**{**overrides, "gateway": {**overrides.get("gateway", {}), "install": False}})
    )
    assert len([o for o in result.objects if o.kind == "Namespace"]) == 1
