"""The gateway: a provider's control plane (agentgateway, Istio or kgateway; GKE's is managed), and the
Gateway and HTTPRoute into the InferencePool with what that provider needs to reach a TLS EPP and to
serve an InferencePool backend.

Every version, class and label comes from :mod:`pulumi_llmd.config.gateways` (with its sources);
this module only builds objects from the validated inputs.
"""

# No `from __future__ import annotations`: Pulumi's schema analyzer reads these components' annotations.
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.args import GatewayControlPlaneArgs, InferenceGatewayArgs
from pulumi_llmd.components.claims import Claim, claim
from pulumi_llmd.components.inputs import GatewayControlPlaneInputs, InferenceGatewayInputs, package_component
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.config.errors import ConfigError, Problem
from pulumi_llmd.config.gateways import (
    AGENTGATEWAY_CHARTS,
    ISTIO_CHARTS,
    ISTIO_INFERENCE_ENV,
    KGATEWAY_CHARTS,
    GatewayProvider,
    KgatewayDataPlane,
    kgateway_upstream_notice,
)
from pulumi_llmd.config.inputs import validate_args

# --- control planes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartSpec:
    """One Helm chart of a control plane: what `helm install` would be given."""

    name: str
    chart: str
    version: str
    repo: str | None = None  # a non-OCI chart repository
    values: dict[str, Any] = field(default_factory=dict)


def control_plane_charts(plane: GatewayControlPlaneInputs) -> list[ChartSpec]:
    """The Helm charts of a provider's control plane, in install order (each after the one before)."""
    version = plane.effective_version
    provider = plane.provider
    if version is None:
        raise ConfigError(
            [Problem("provider", f"{provider.value} has no control plane to install (GKE manages its own)")],
            subject="GatewayControlPlane args",
        )
    if provider is GatewayProvider.AGENTGATEWAY:
        # controller/install/helm/agentgateway{,-crds}; inferenceExtension.enabled sets AGW_ENABLE_INFER_EXT.
        return [
            ChartSpec("agentgateway-crds", f"{AGENTGATEWAY_CHARTS}/agentgateway-crds", version),
            ChartSpec(
                "agentgateway",
                f"{AGENTGATEWAY_CHARTS}/agentgateway",
                version,
                values={"inferenceExtension": {"enabled": True}},
            ),
        ]
    if provider is GatewayProvider.KGATEWAY:
        # kgateway 2.1 install/helm/kgateway/values.yaml: inference "without agentgateway is deprecated
        # in v2.1 and will not be supported in v2.2"; agentgateway.enabled adds its data plane and class.
        agentgateway = plane.effective_data_plane is KgatewayDataPlane.AGENTGATEWAY
        return [
            ChartSpec("kgateway-crds", f"{KGATEWAY_CHARTS}/kgateway-crds", version),
            ChartSpec(
                "kgateway",
                f"{KGATEWAY_CHARTS}/kgateway",
                version,
                values={"inferenceExtension": {"enabled": True}, "agentgateway": {"enabled": agentgateway}},
            ),
        ]
    # Istio: base carries its CRDs (DestinationRule among them); istiod reads pilot env from `env`
    # (istio-discovery templates/deployment.yaml), where the inference extension is switched on. Both
    # charts default global.istioNamespace to istio-system: set it to the namespace actually used.
    istio_namespace = {"global": {"istioNamespace": plane.effective_namespace}}
    return [
        ChartSpec("istio-base", "base", version, repo=ISTIO_CHARTS, values=istio_namespace),
        ChartSpec(
            "istiod",
            "istiod",
            version,
            repo=ISTIO_CHARTS,
            values={**istio_namespace, "env": {ISTIO_INFERENCE_ENV: "true"}},
        ),
    ]


@package_component
class GatewayControlPlane(pulumi.ComponentResource):
    """The control plane of a Gateway API implementation with InferencePool support switched on:
    agentgateway (CRDs and controller charts, inferenceExtension enabled), Istio (base and istiod
    charts, ENABLE_GATEWAY_API_INFERENCE_EXTENSION) or kgateway 2.1 (CRDs and controller charts with the
    inference extension and, by default, its agentgateway data plane), each in its own namespace. GKE's
    gateway controller is managed and has nothing to install."""

    namespace: str
    """Namespace the control plane runs in."""
    gateway_class_name: str
    """The GatewayClass its Gateways use for inference."""

    def __init__(
        self, name: str, args: GatewayControlPlaneArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        """Args (:class:`~pulumi_llmd.components.args.GatewayControlPlaneArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.GatewayControlPlaneInputs`): ``instance`` (for labels),
        ``provider`` and the ``gateway`` section's ``version``, ``namespace`` and ``kgateway_data_plane``
        (unset ones follow the provider). Pass the Kubernetes provider in ``opts``; ``depends_on`` (the
        Gateway API CRDs the controller watches) is passed on to every child.
        """
        plane = validate_args(GatewayControlPlaneInputs, args, component="GatewayControlPlane")
        charts = control_plane_charts(plane)
        claim(
            self,
            "llmd:index:GatewayControlPlane",
            name,
            opts,
            [
                Claim(
                    "provider",
                    "control plane",
                    plane.provider.value,
                    "its charts are named by provider, and one control plane serves every Gateway of its "
                    "class; install it once",
                ),
                Claim(
                    "namespace",
                    "namespace",
                    str(plane.effective_namespace),
                    "the control plane creates (and owns) its namespace",
                ),
            ],
        )
        super().__init__("llmd:index:GatewayControlPlane", name, None, opts)
        if plane.provider is GatewayProvider.KGATEWAY:
            pulumi.log.warn(kgateway_upstream_notice(), resource=self)
        namespace_name = plane.effective_namespace
        assert namespace_name is not None  # every installable provider has one
        namespace = register(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace_name,
                    "labels": naming.common_labels(plane.instance, "gateway"),
                },
            },
            child_options(self, opts),
        )
        previous: pulumi.Resource = namespace
        self.charts: list[k8s.helm.v4.Chart] = []
        for chart in charts:
            installed = k8s.helm.v4.Chart(
                chart.name,
                chart=chart.chart,
                version=chart.version,
                namespace=namespace_name,
                repository_opts={"repo": chart.repo} if chart.repo else None,
                values=chart.values,
                opts=child_options(self, opts, previous),
            )
            self.charts.append(installed)
            previous = installed
        self.namespace = namespace_name
        self.gateway_class_name = plane.effective_class_name
        self.register_outputs({"namespace": self.namespace, "gatewayClassName": self.gateway_class_name})


# --- the Gateway, the route and the provider's policies -------------------------------------------


def gateway_manifest(gateway: InferenceGatewayInputs) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": gateway.gateway_name,
            "namespace": gateway.namespace,
            "labels": naming.common_labels(gateway.instance, "gateway"),
        },
        "spec": {
            "gatewayClassName": gateway.effective_class_name,
            "listeners": [
                {
                    "name": "http",
                    "port": gateway.listener_port,
                    "protocol": "HTTP",
                    "allowedRoutes": {"namespaces": {"from": "Same"}},
                }
            ],
        },
    }


def _pool_rule(gateway: InferenceGatewayInputs, pool: str, model: str | None = None) -> dict[str, Any]:
    # Exact paths: the OpenAI API by default, never the model servers' /metrics or admin routes.
    matches: list[dict[str, Any]] = [{"path": {"type": "Exact", "value": path}} for path in gateway.paths]
    if model is not None:
        # The body router put the base model of the body's `model` in this header (Gateway API matches
        # header names case-insensitively); a match is its path AND its headers.
        for match in matches:
            match["headers"] = [{"type": "Exact", "name": naming.BASE_MODEL_HEADER, "value": model}]
    rule: dict[str, Any] = {
        "matches": matches,
        "backendRefs": [{"group": naming.INFERENCE_POOL_GROUP, "kind": "InferencePool", "name": pool}],
    }
    if gateway.provider is not GatewayProvider.GKE:
        # GKE takes the timeout from GCPBackendPolicy; llm-d's chart leaves it off the route there
        # (llm-d-router v0.10.0 config/charts/llm-d-router-gateway/templates/httproute.yaml).
        rule["timeouts"] = {"request": gateway.request_timeout}
    return rule


def route_rules(gateway: InferenceGatewayInputs) -> list[dict[str, Any]]:
    """One rule into the pool; with several models one per model, matched on the header the body router
    sets (llm-d guides/multi-model-routing), and a catch-all to the first model when the router fails
    open. A request matching no rule gets the gateway's 404."""
    if not gateway.model_routes:
        return [_pool_rule(gateway, gateway.pool_name)]
    rules = [_pool_rule(gateway, route.pool_name, route.model) for route in gateway.model_routes]
    if gateway.unmatched_to_first:
        rules.append(_pool_rule(gateway, gateway.model_routes[0].pool_name))
    return rules


def http_route_manifest(gateway: InferenceGatewayInputs) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": gateway.pool_name,
            "namespace": gateway.namespace,
            "labels": naming.common_labels(gateway.instance, "gateway"),
        },
        "spec": {
            "parentRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.gateway_name}
            ],
            "rules": route_rules(gateway),
        },
    }


def istio_destination_rule_manifest(gateway: InferenceGatewayInputs, pool: str) -> dict[str, Any]:
    """TLS origination to the EPP without verification: Istio dials a Service as its Service says
    (h2c), so a TLS EPP needs this, as GIE's chart (v1.1.0 config/charts/inferencepool/templates/
    istio.yaml) and llm-d's (v0.10.0 config/charts/llm-d-router-gateway/templates/istio.yaml) add."""
    epp = naming.epp_name(pool)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {
            "name": epp,
            "namespace": gateway.namespace,
            "labels": naming.common_labels(gateway.instance, "gateway"),
        },
        "spec": {
            "host": f"{epp}.{gateway.namespace}.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": True}},
        },
    }


def _pool_target(pool: str) -> dict[str, str]:
    return {"group": naming.INFERENCE_POOL_GROUP, "kind": "InferencePool", "name": pool}


def gke_health_check_policy_manifest(gateway: InferenceGatewayInputs, pool: str) -> dict[str, Any]:
    """GKE health-checks InferencePool endpoints by this policy: vLLM's /health on the pool's target
    port, every 2 s, as llm-d's chart sets it for a fast switch-over (llm-d-router v0.10.0
    config/charts/llm-d-router-gateway/templates/gke.yaml). The EPP itself is checked on gRPC 9003,
    GKE's default, so it needs no policy."""
    return {
        "apiVersion": "networking.gke.io/v1",
        "kind": "HealthCheckPolicy",
        "metadata": {
            "name": pool,
            "namespace": gateway.namespace,
            "labels": naming.common_labels(gateway.instance, "gateway"),
        },
        "spec": {
            "targetRef": _pool_target(pool),
            "default": {
                "timeoutSec": 2,
                "checkIntervalSec": 2,
                "config": {
                    "type": "HTTP",
                    "httpHealthCheck": {"requestPath": "/health", "port": naming.MODEL_SERVER_PORT},
                },
            },
        },
    }


def gke_backend_policy_manifest(gateway: InferenceGatewayInputs, pool: str) -> dict[str, Any]:
    """The backend timeout (GKE's default is 30 s, too short for long generations) and request logging
    for the InferencePool backend, as llm-d's chart sets them (same file)."""
    return {
        "apiVersion": "networking.gke.io/v1",
        "kind": "GCPBackendPolicy",
        "metadata": {
            "name": pool,
            "namespace": gateway.namespace,
            "labels": naming.common_labels(gateway.instance, "gateway"),
        },
        "spec": {
            "targetRef": _pool_target(pool),
            "default": {
                "timeoutSec": duration_seconds(gateway.request_timeout),
                "logging": {"enabled": True},
            },
        },
    }


_DURATION_PART = re.compile(r"([0-9]+)(h|ms|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(duration: str) -> int:
    """A Gateway API duration (``300s``, ``5m``, ``1h30m``) in whole seconds, rounded up, at least 1."""
    total = sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(duration))
    return max(1, math.ceil(total))


def gateway_manifests(gateway: InferenceGatewayInputs) -> list[dict[str, Any]]:
    """Everything the InferenceGateway registers, in order: the provider's objects for every pool the
    route sends to (each model's, with modelRoutes)."""
    manifests = [gateway_manifest(gateway), http_route_manifest(gateway)]
    for pool, epp_secure_serving in gateway.backends:
        if gateway.provider is GatewayProvider.ISTIO and epp_secure_serving:
            manifests.append(istio_destination_rule_manifest(gateway, pool))
        if gateway.provider is GatewayProvider.GKE:
            manifests.append(gke_health_check_policy_manifest(gateway, pool))
            manifests.append(gke_backend_policy_manifest(gateway, pool))
    return manifests


@package_component
class InferenceGateway(pulumi.ComponentResource):
    """A Gateway of the provider's GatewayClass with an HTTP listener, an HTTPRoute that sends the OpenAI
    API paths to an InferencePool (whose endpoint picker chooses the pod), or with modelRoutes each
    model's requests to its own pool, and what the provider needs for each pool: Istio a DestinationRule
    that dials the EPP over TLS, GKE a HealthCheckPolicy and a GCPBackendPolicy."""

    gateway_name: str
    """The Gateway's name; its address serves the OpenAI API."""
    route_name: str
    """The HTTPRoute's name."""

    def __init__(
        self, name: str, args: InferenceGatewayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        """Args (:class:`~pulumi_llmd.components.args.InferenceGatewayArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.InferenceGatewayInputs`): ``instance`` (the Gateway is
        ``<instance>-gateway``), ``namespace``, ``pool_name`` (the backend, and the route's name),
        ``provider``, ``epp_secure_serving`` (whether Istio must dial the EPP over TLS), and
        ``class_name``, ``listener_port``, ``request_timeout``, ``paths`` (the same keys of the
        ``gateway`` section; an unset class follows the provider); ``model_routes`` (several models: one
        rule per model on the body router's header, each with its pool and EPP TLS) and
        ``unmatched_to_first``. Pass the Kubernetes provider in ``opts``; ``depends_on`` (the
        GatewayClass's controller, the CRDs, the InferencePool) is passed on to every object.
        """
        gateway = validate_args(InferenceGatewayInputs, args, component="InferenceGateway")
        why = "the Gateway's name `<instance>-gateway` (and so its URN) derives from it"
        claims = [Claim("instance", "Gateway", gateway.gateway_name, why)]
        # The HTTPRoute is named after pool_name and each provider policy after its pool or EPP.
        claims.append(
            Claim("poolName", "route", gateway.pool_name, "the HTTPRoute is named after it (and so its URN)")
        )
        claims += [
            Claim(
                f"modelRoutes[{index}].poolName",
                "pool backend",
                route.pool_name,
                "the provider's objects for the pool are named after it",
            )
            for index, route in enumerate(gateway.model_routes)
        ]
        claim(self, "llmd:index:InferenceGateway", name, opts, claims)
        super().__init__("llmd:index:InferenceGateway", name, None, opts)
        child = child_options(self, opts)
        registered = [register(manifest, child) for manifest in gateway_manifests(gateway)]
        self.gateway, self.route = registered[0], registered[1]
        self.policies = registered[2:]
        self.gateway_name = gateway.gateway_name
        self.route_name = gateway.pool_name
        self.register_outputs({"gatewayName": self.gateway_name, "routeName": self.route_name})
