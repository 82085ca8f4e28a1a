"""NetworkPolicies: the gateway is the only way in to the EPP and the model servers.

Allowed on top of that, because the system needs it: the decode sidecar calling prefill vLLM, the
NIXL side channel (and, optionally, UCX over TCP) between the pools, Ray inside multi-node groups,
the EPP scraping model-server metrics (and, in precise prefix mode, subscribing to their KV events),
and a configurable monitoring namespace scraping metrics.
Egress is left open (model downloads, DNS); these policies only restrict ingress.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from pulumi_llmd.components import naming
from pulumi_llmd.components.inputs import InferenceNetworkPoliciesArgs
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.modelserver import selector_labels
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.picker import epp_selector
from pulumi_llmd.config.errors import ConfigError, Problem
from pulumi_llmd.config.gateways import GatewayProvider, pins
from pulumi_llmd.config.inputs import model_args
from pulumi_llmd.config.precise import PrefixCacheMode

Policies = InferenceNetworkPoliciesArgs


def gateway_pod_labels(provider: GatewayProvider, gateway: str) -> dict[str, str]:
    """The labels the provider's proxy pods for ``gateway`` carry, read from each provider's source
    (agentgateway v1.4.1 controller/pkg/helm/agentgateway/templates/_helpers.tpl, kgateway 2.1
    internal/kgateway/helm/kgateway/templates/_helpers.tpl for both its data planes, Istio 1.30.3
    manifests/charts/istio-control/istio-discovery/files/kube-gateway.yaml): all three use Gateway
    API's gateway-name label. GKE's proxies are Google's load balancers, not pods: no selector exists,
    and the stack rules refuse NetworkPolicies with provider gke."""
    if not pins(provider).in_cluster_proxies:
        raise ConfigError(
            [
                Problem(
                    "gatewayProvider",
                    f"{provider.value} has no proxy pods in the cluster for NetworkPolicies to admit",
                )
            ],
            subject="InferenceNetworkPolicies args",
        )
    return {naming.GATEWAY_NAME_LABEL: gateway}


def _gateway_pods(policies: Policies) -> dict[str, Any]:
    return gateway_pods(policies.gateway_provider, policies.gateway_instance or policies.instance)


def gateway_pods(provider: GatewayProvider, instance: str) -> dict[str, Any]:
    """The in-cluster proxy pods of the stack's Gateway (the only way in)."""
    gateway = naming.gateway_name(instance)
    return {"podSelector": {"matchLabels": gateway_pod_labels(provider, gateway)}}


def _pods(labels: dict[str, str]) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": labels}}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in sorted(set(ports))]


def _policy(
    policies: Policies, name: str, selector: dict[str, str], rules: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": policies.namespace,
            "labels": naming.common_labels(policies.instance, "network-policy"),
        },
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def _metrics_sources(policies: Policies) -> list[dict[str, Any]]:
    labels = policies.settings.metrics_namespace_labels
    return [{"namespaceSelector": {"matchLabels": dict(labels)}}] if labels else []


def epp_policy(policies: Policies) -> dict[str, Any]:
    pool = naming.pool_name(policies.instance)
    rules = [{"from": [_gateway_pods(policies)], "ports": _tcp(naming.EPP_GRPC_PORT)}]
    if metrics := _metrics_sources(policies):
        rules.append({"from": metrics, "ports": _tcp(naming.EPP_METRICS_PORT)})
    return _policy(policies, f"{naming.epp_name(pool)}-ingress", epp_selector(pool), rules)


def model_server_policy(policies: Policies, role: Role) -> dict[str, Any]:
    served = naming.MODEL_SERVER_PORT
    behind_sidecar = role is Role.DECODE and policies.disaggregated
    # The EPP scrapes /metrics on the pool port and, behind a sidecar, straight from vLLM.
    scrape = (served, naming.VLLM_BEHIND_SIDECAR_PORT) if behind_sidecar else (served,)
    epp_pods = epp_selector(naming.pool_name(policies.instance))
    # Precise prefix routing: every EPP replica subscribes to each pod's KV events and replay socket.
    events = (
        (naming.KV_EVENTS_PORT, naming.KV_REPLAY_PORT)
        if policies.prefix_cache is PrefixCacheMode.PRECISE
        else ()
    )
    rules: list[dict[str, Any]] = [
        {"from": [_gateway_pods(policies)], "ports": _tcp(served)},
        {"from": [_pods(epp_pods)], "ports": _tcp(*scrape, *events)},
    ]
    if policies.disaggregated:
        other = Role.DECODE if role is Role.PREFILL else Role.PREFILL
        peers = [_pods(selector_labels(policies.instance, other))]
        if policies.settings.ucx_tcp_between_pools:
            # UCX's TCP transport listens on ephemeral ports; this also covers the sidecar's
            # prefill calls and the NIXL side channel.
            rules.append({"from": peers})
        elif role is Role.PREFILL:
            # The decode-side sidecar sends the prefill leg; NIXL handshakes on the side channel.
            rules.append(
                {"from": peers, "ports": _tcp(naming.MODEL_SERVER_PORT, naming.NIXL_SIDE_CHANNEL_PORT)}
            )
        else:
            rules.append({"from": peers, "ports": _tcp(naming.NIXL_SIDE_CHANNEL_PORT)})
    if role in policies.multi_node_roles:
        # Ray and NCCL between the leader and workers of one group use many ports.
        rules.append({"from": [_pods(selector_labels(policies.instance, role))]})
    if metrics := _metrics_sources(policies):
        # Monitoring also reads the sidecar's own metrics port on P/D decode pods.
        sidecar = (naming.SIDECAR_METRICS_PORT,) if behind_sidecar and policies.sidecar_metrics else ()
        rules.append({"from": metrics, "ports": _tcp(*scrape, *sidecar)})
    name = f"{naming.model_server_name(policies.instance, role)}-ingress"
    return _policy(policies, name, selector_labels(policies.instance, role), rules)


def network_policy_manifests(policies: Policies) -> list[dict[str, Any]]:
    return [epp_policy(policies), *(model_server_policy(policies, role) for role in policies.roles)]


class InferenceNetworkPolicies(pulumi.ComponentResource):
    """Ingress NetworkPolicies: only the gateway reaches the EPP and the model servers, plus what P/D,
    Ray groups and metrics scraping need (see the module docstring).

    Args (:class:`~pulumi_llmd.components.inputs.InferenceNetworkPoliciesArgs`, Python only): the
    stack's ``instance`` and ``namespace``, whether it is ``disaggregated``, the
    ``multi_node_roles`` (Ray groups), the ``networkPolicy`` section as ``settings`` and the
    ``gateway_provider`` (whose proxy pods are admitted). Provider and ``depends_on`` come through
    ``opts``.
    """

    def __init__(
        self,
        name: str,
        args: InferenceNetworkPoliciesArgs | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        policies = model_args(InferenceNetworkPoliciesArgs, args, component="InferenceNetworkPolicies")
        manifests = network_policy_manifests(policies)  # before registering: it may refuse the provider
        super().__init__("llmd:index:InferenceNetworkPolicies", name, None, opts)
        self.policies = [register(manifest, child_options(self, opts)) for manifest in manifests]
        self.register_outputs({"policies": [m["metadata"]["name"] for m in manifests]})
