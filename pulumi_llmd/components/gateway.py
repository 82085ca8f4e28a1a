"""kgateway (Envoy data plane with the inference extension) and the route into the InferencePool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.k8sobjects import register
from pulumi_llmd.config.models import StackConfig

KGATEWAY_CHARTS = "oci://cr.kgateway.dev/kgateway-dev/charts"


@dataclass(frozen=True)
class KgatewayArgs:
    config: StackConfig
    provider: k8s.Provider
    # The Gateway API CRDs the controller watches.
    depends_on: tuple[pulumi.Resource, ...] = ()


class Kgateway(pulumi.ComponentResource):
    """The kgateway CRDs chart, then the controller chart with ``inferenceExtension.enabled``."""

    def __init__(self, name: str, args: KgatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llmd:index:Kgateway", name, None, opts)
        gateway = args.config.gateway
        namespace = register(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": gateway.kgateway_namespace,
                    "labels": naming.common_labels(args.config, "gateway"),
                },
            },
            pulumi.ResourceOptions(parent=self, provider=args.provider),
        )
        chart_opts = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=[namespace, *args.depends_on]
        )
        crds = k8s.helm.v4.Chart(
            "kgateway-crds",
            chart=f"{KGATEWAY_CHARTS}/kgateway-crds",
            version=gateway.kgateway_version,
            namespace=gateway.kgateway_namespace,
            opts=chart_opts,
        )
        self.controller = k8s.helm.v4.Chart(
            "kgateway",
            chart=f"{KGATEWAY_CHARTS}/kgateway",
            version=gateway.kgateway_version,
            namespace=gateway.kgateway_namespace,
            values={"inferenceExtension": {"enabled": True}},
            opts=pulumi.ResourceOptions.merge(chart_opts, pulumi.ResourceOptions(depends_on=[crds])),
        )
        self.register_outputs({"namespace": gateway.kgateway_namespace})


@dataclass(frozen=True)
class InferenceGatewayArgs:
    config: StackConfig
    provider: k8s.Provider
    # The controller (GatewayClass), Gateway API CRDs and the InferencePool.
    depends_on: tuple[pulumi.Resource, ...] = ()


def gateway_manifest(config: StackConfig) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": naming.gateway_name(config),
            "namespace": config.namespace,
            "labels": naming.common_labels(config, "gateway"),
        },
        "spec": {
            "gatewayClassName": config.gateway.class_name,
            "listeners": [
                {
                    "name": "http",
                    "port": config.gateway.listener_port,
                    "protocol": "HTTP",
                    "allowedRoutes": {"namespaces": {"from": "Same"}},
                }
            ],
        },
    }


def http_route_manifest(config: StackConfig) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": naming.pool_name(config),
            "namespace": config.namespace,
            "labels": naming.common_labels(config, "gateway"),
        },
        "spec": {
            "parentRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": naming.gateway_name(config)}
            ],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {
                            "group": naming.INFERENCE_POOL_GROUP,
                            "kind": "InferencePool",
                            "name": naming.pool_name(config),
                        }
                    ],
                    "timeouts": {"request": config.gateway.request_timeout},
                }
            ],
        },
    }


class InferenceGateway(pulumi.ComponentResource):
    """A Gateway of the configured class and an HTTPRoute whose backend is the InferencePool."""

    def __init__(
        self, name: str, args: InferenceGatewayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("llmd:index:InferenceGateway", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        self.gateway = register(gateway_manifest(args.config), child)
        self.route = register(http_route_manifest(args.config), child)
        self.gateway_name = naming.gateway_name(args.config)
        self.register_outputs({"gateway_name": self.gateway_name})
