"""kgateway (Envoy data plane with the inference extension) and the route into the InferencePool."""

# No `from __future__ import annotations`: Pulumi's schema analyzer reads these components' annotations.
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.args import InferenceGatewayArgs, KgatewayArgs
from pulumi_llmd.components.inputs import InferenceGatewayInputs, KgatewayInputs, package_component
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.config.inputs import validate_args

KGATEWAY_CHARTS = "oci://cr.kgateway.dev/kgateway-dev/charts"


@package_component
class Kgateway(pulumi.ComponentResource):
    """kgateway, an Envoy-based Gateway API implementation: its namespace, the CRDs chart and the
    controller chart with the inference extension enabled, so its Gateways route to InferencePools
    through their endpoint pickers."""

    namespace: str
    """Namespace kgateway runs in."""

    def __init__(self, name: str, args: KgatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Args (:class:`~pulumi_llmd.components.args.KgatewayArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.KgatewayInputs`): ``instance`` (for labels), ``version``
        and ``namespace`` (the ``gateway.kgatewayVersion`` / ``gateway.kgatewayNamespace`` keys). Pass
        the Kubernetes provider in ``opts``; ``depends_on`` (the Gateway API CRDs the controller
        watches) is passed on to every child.
        """
        kgateway = validate_args(KgatewayInputs, args, component="Kgateway")
        super().__init__("llmd:index:Kgateway", name, None, opts)
        namespace = register(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": kgateway.namespace,
                    "labels": naming.common_labels(kgateway.instance, "gateway"),
                },
            },
            child_options(self, opts),
        )
        crds = k8s.helm.v4.Chart(
            "kgateway-crds",
            chart=f"{KGATEWAY_CHARTS}/kgateway-crds",
            version=kgateway.version,
            namespace=kgateway.namespace,
            opts=child_options(self, opts, namespace),
        )
        self.controller = k8s.helm.v4.Chart(
            "kgateway",
            chart=f"{KGATEWAY_CHARTS}/kgateway",
            version=kgateway.version,
            namespace=kgateway.namespace,
            values={"inferenceExtension": {"enabled": True}},
            opts=child_options(self, opts, namespace, crds),
        )
        self.namespace = kgateway.namespace
        self.register_outputs({"namespace": self.namespace})


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
            "gatewayClassName": gateway.class_name,
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
    match: dict[str, Any] = {"path": {"type": "PathPrefix", "value": "/"}}
    if model is not None:
        # The body router put the base model of the body's `model` in this header (Gateway API matches
        # header names case-insensitively).
        match["headers"] = [{"type": "Exact", "name": naming.BASE_MODEL_HEADER, "value": model}]
    return {
        "matches": [match],
        "backendRefs": [{"group": naming.INFERENCE_POOL_GROUP, "kind": "InferencePool", "name": pool}],
        "timeouts": {"request": gateway.request_timeout},
    }


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


@package_component
class InferenceGateway(pulumi.ComponentResource):
    """A Gateway of the given GatewayClass with an HTTP listener, and an HTTPRoute that sends every
    path to an InferencePool (whose endpoint picker chooses the pod), or with modelRoutes each model's
    requests to its own pool."""

    gateway_name: str
    """The Gateway's name; its address serves the OpenAI API."""
    route_name: str
    """The HTTPRoute's name."""

    def __init__(
        self, name: str, args: InferenceGatewayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        """Args (:class:`~pulumi_llmd.components.args.InferenceGatewayArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.InferenceGatewayInputs`): ``instance`` (the Gateway is
        ``<instance>-gateway``), ``namespace``, ``pool_name`` (the backend, and the route's name), and
        ``class_name``, ``listener_port``, ``request_timeout`` (the same keys of the ``gateway``
        section); ``model_routes`` (several models: one rule per model on the body router's header) and
        ``unmatched_to_first``. Pass the Kubernetes provider in ``opts``; ``depends_on`` (the GatewayClass's
        controller, the Gateway API CRDs, the InferencePool) is passed on to both objects.
        """
        gateway = validate_args(InferenceGatewayInputs, args, component="InferenceGateway")
        super().__init__("llmd:index:InferenceGateway", name, None, opts)
        child = child_options(self, opts)
        self.gateway = register(gateway_manifest(gateway), child)
        self.route = register(http_route_manifest(gateway), child)
        self.gateway_name = gateway.gateway_name
        self.route_name = gateway.pool_name
        self.register_outputs({"gatewayName": self.gateway_name, "routeName": self.route_name})
