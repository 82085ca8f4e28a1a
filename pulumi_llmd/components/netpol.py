"""NetworkPolicies: the gateway is the only way in to the EPP and the model servers.

Allowed on top of that, because the system needs it: the decode sidecar calling prefill vLLM, the
NIXL side channel (and, optionally, UCX over TCP) between the pools, Ray inside multi-node groups,
the EPP scraping model-server metrics, and a configurable monitoring namespace scraping metrics.
Egress is left open (model downloads, DNS); these policies only restrict ingress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.k8sobjects import register
from pulumi_llmd.components.modelserver import Role, engine_port, has_sidecar, selector_labels
from pulumi_llmd.components.picker import epp_selector
from pulumi_llmd.config.models import StackConfig


def _gateway_pods(config: StackConfig) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {naming.GATEWAY_NAME_LABEL: naming.gateway_name(config)}}}


def _pods(labels: dict[str, str]) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": labels}}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in sorted(set(ports))]


def _policy(
    config: StackConfig, name: str, selector: dict[str, str], rules: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": naming.common_labels(config, "network-policy"),
        },
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def _metrics_sources(config: StackConfig) -> list[dict[str, Any]]:
    labels = config.network_policy.metrics_namespace_labels
    return [{"namespaceSelector": {"matchLabels": dict(labels)}}] if labels else []


def epp_policy(config: StackConfig) -> dict[str, Any]:
    rules = [{"from": [_gateway_pods(config)], "ports": _tcp(naming.EPP_GRPC_PORT)}]
    if metrics := _metrics_sources(config):
        rules.append({"from": metrics, "ports": _tcp(naming.EPP_METRICS_PORT)})
    return _policy(config, f"{naming.epp_name(config)}-ingress", epp_selector(config), rules)


def model_server_policy(config: StackConfig, role: Role) -> dict[str, Any]:
    pool = config.prefill if role == "prefill" else config.decode
    served = naming.MODEL_SERVER_PORT
    engine = engine_port(config, role)
    # The EPP scrapes /metrics on the pool port and, behind a sidecar, straight from vLLM.
    scrape = (served, engine) if has_sidecar(config, role) else (served,)
    rules: list[dict[str, Any]] = [
        {"from": [_gateway_pods(config)], "ports": _tcp(served)},
        {"from": [_pods(epp_selector(config))], "ports": _tcp(*scrape)},
    ]
    if config.disaggregated:
        other: Role = "decode" if role == "prefill" else "prefill"
        peers = [_pods(selector_labels(config, other))]
        if config.network_policy.ucx_tcp_between_pools:
            # UCX's TCP transport listens on ephemeral ports; this also covers the sidecar's
            # prefill calls and the NIXL side channel.
            rules.append({"from": peers})
        elif role == "prefill":
            # The decode-side sidecar sends the prefill leg; NIXL handshakes on the side channel.
            rules.append(
                {"from": peers, "ports": _tcp(naming.MODEL_SERVER_PORT, naming.NIXL_SIDE_CHANNEL_PORT)}
            )
        else:
            rules.append({"from": peers, "ports": _tcp(naming.NIXL_SIDE_CHANNEL_PORT)})
    if pool.nodes_per_replica > 1:
        # Ray and NCCL between the leader and workers of one group use many ports.
        rules.append({"from": [_pods(selector_labels(config, role))]})
    if metrics := _metrics_sources(config):
        rules.append({"from": metrics, "ports": _tcp(*scrape)})
    return _policy(
        config, f"{naming.model_server_name(config, role)}-ingress", selector_labels(config, role), rules
    )


def network_policy_manifests(config: StackConfig) -> list[dict[str, Any]]:
    roles: list[Role] = ["prefill", "decode"] if config.disaggregated else ["decode"]
    return [epp_policy(config), *(model_server_policy(config, role) for role in roles)]


@dataclass(frozen=True)
class InferenceNetworkPoliciesArgs:
    config: StackConfig
    provider: k8s.Provider
    depends_on: tuple[pulumi.Resource, ...] = ()


class InferenceNetworkPolicies(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: InferenceNetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("llmd:index:InferenceNetworkPolicies", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        manifests = network_policy_manifests(args.config)
        self.policies = [register(manifest, child) for manifest in manifests]
        self.register_outputs({"policies": [m["metadata"]["name"] for m in manifests]})
