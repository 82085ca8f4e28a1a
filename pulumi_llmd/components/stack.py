"""LlmdStack: the whole llm-d-style inference stack on a cluster, from one validated StackConfig.

Another Pulumi program can reuse it with its own cluster and config::

    from pulumi_llmd.config import parse_stack_config
    from pulumi_llmd.components.platform import Platform, PodNetworking
    from pulumi_llmd.components.stack import LlmdStack, LlmdStackArgs

    config = parse_stack_config({...}, has_hf_token=True)
    LlmdStack("inference", LlmdStackArgs(config, Platform(my_provider, PodNetworking()), hf_token=token))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from pulumi_llmd.components import naming
from pulumi_llmd.components.crds import ClusterCrds, ClusterCrdsArgs
from pulumi_llmd.components.gateway import InferenceGateway, InferenceGatewayArgs, Kgateway, KgatewayArgs
from pulumi_llmd.components.k8sobjects import register
from pulumi_llmd.components.modelserver import ModelServerPool, ModelServerPoolArgs, Role
from pulumi_llmd.components.netpol import InferenceNetworkPolicies, InferenceNetworkPoliciesArgs
from pulumi_llmd.components.onprem import RdmaNetworks, RdmaNetworksArgs
from pulumi_llmd.components.picker import EndpointPicker, EndpointPickerArgs
from pulumi_llmd.components.platform import Platform
from pulumi_llmd.config.models import Engine, StackConfig


def hf_token_secret_manifest(config: StackConfig, token: pulumi.Input[str]) -> dict[str, Any]:
    """The token reaches pods only through this Secret (env valueFrom), and stays a Pulumi secret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": naming.hf_token_secret_name(config),
            "namespace": config.namespace,
            "labels": naming.common_labels(config, "model-server"),
        },
        "type": "Opaque",
        "stringData": {"HF_TOKEN": pulumi.Output.secret(token)},
    }


@dataclass(frozen=True)
class LlmdStackArgs:
    config: StackConfig
    platform: Platform
    # The Hugging Face token (a Pulumi secret) for hf:// models served by vLLM.
    hf_token: pulumi.Input[str] | None = None


class LlmdStack(pulumi.ComponentResource):
    def __init__(self, name: str, args: LlmdStackArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        config = args.config
        needs_token = config.model.source == "hf" and config.model.engine is Engine.VLLM
        if needs_token and args.hf_token is None:
            raise ValueError(f"model.uri {config.model.uri} needs hf_token (the llmd:hfToken secret)")
        super().__init__("llmd:index:LlmdStack", name, None, opts)
        provider = args.platform.k8s_provider
        platform_ready = tuple(args.platform.depends_on)

        self.namespace = register(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": config.namespace, "labels": naming.common_labels(config, "namespace")},
            },
            pulumi.ResourceOptions(parent=self, provider=provider, depends_on=list(platform_ready)),
        )
        in_namespace: tuple[pulumi.Resource, ...] = (self.namespace,)

        roles: list[Role] = ["prefill", "decode"] if config.disaggregated else ["decode"]
        multi_node = any(
            (config.prefill if role == "prefill" else config.decode).nodes_per_replica > 1 for role in roles
        )
        crds: tuple[pulumi.Resource, ...] = ()
        if config.crds.install:
            installed = ClusterCrds(
                f"{name}-crds",
                ClusterCrdsArgs(crds=config.crds, provider=provider, with_leaderworkerset=multi_node),
                opts=pulumi.ResourceOptions(parent=self),
            )
            crds = (installed,)

        gateway_controller: tuple[pulumi.Resource, ...] = ()
        if config.gateway.install_kgateway:
            kgateway = Kgateway(
                f"{name}-kgateway",
                KgatewayArgs(config=config, provider=provider, depends_on=crds),
                opts=pulumi.ResourceOptions(parent=self),
            )
            gateway_controller = (kgateway,)

        model_prerequisites = in_namespace + platform_ready + (crds if multi_node else ())
        if needs_token and args.hf_token is not None:
            token = register(
                hf_token_secret_manifest(config, args.hf_token),
                pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[self.namespace]),
            )
            model_prerequisites += (token,)
        if config.onprem is not None and config.onprem.rdma_networks:
            networks = RdmaNetworks(
                f"{name}-rdma-networks",
                RdmaNetworksArgs(config=config, provider=provider, depends_on=in_namespace + platform_ready),
                opts=pulumi.ResourceOptions(parent=self),
            )
            model_prerequisites += (networks,)

        self.epp = EndpointPicker(
            naming.epp_name(config),
            EndpointPickerArgs(config=config, provider=provider, depends_on=in_namespace + crds),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.pools = {
            role: ModelServerPool(
                naming.model_server_name(config, role),
                ModelServerPoolArgs(
                    config=config,
                    role=role,
                    pod_networking=args.platform.pod_networking,
                    provider=provider,
                    depends_on=model_prerequisites,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            for role in roles
        }
        self.gateway = InferenceGateway(
            naming.gateway_name(config),
            InferenceGatewayArgs(
                config=config,
                provider=provider,
                depends_on=in_namespace + crds + gateway_controller + (self.epp,),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        if config.network_policy.enabled:
            InferenceNetworkPolicies(
                f"{name}-network-policies",
                InferenceNetworkPoliciesArgs(config=config, provider=provider, depends_on=in_namespace),
                opts=pulumi.ResourceOptions(parent=self),
            )

        self.gateway_name = naming.gateway_name(config)
        self.pool_name = naming.pool_name(config)
        self.register_outputs(
            {
                "namespace": config.namespace,
                "gateway": self.gateway_name,
                "inference_pool": self.pool_name,
                "pools": {role: pool.workload_name for role, pool in self.pools.items()},
            }
        )
