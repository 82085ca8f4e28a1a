"""Cluster-wide CRDs from their upstream release assets, kept when the stack is destroyed.

Deleting a CRD deletes every object of that kind in the cluster (other teams' Gateways and routes
included), so these installs are retained on delete: the option is set on the remote YAML
component and, through a transform, on every object it expands into.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.config.models import CrdsConfig


def gateway_api_url(version: str) -> str:
    return f"https://github.com/kubernetes-sigs/gateway-api/releases/download/{version}/standard-install.yaml"


def inference_extension_url(version: str) -> str:
    # v1-manifests.yaml carries only the v1 CRDs (InferencePool); the alpha kinds are not needed.
    return (
        "https://github.com/kubernetes-sigs/gateway-api-inference-extension/releases/download/"
        f"{version}/v1-manifests.yaml"
    )


def leaderworkerset_url(version: str) -> str:
    # CRD plus controller: LeaderWorkerSet needs its controller to create pods.
    return f"https://github.com/kubernetes-sigs/lws/releases/download/{version}/manifests.yaml"


def retain_children(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult:
    """Transform marking every object of a remote YAML install retained on delete."""
    return pulumi.ResourceTransformResult(
        props=args.props,
        opts=pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )


@dataclass(frozen=True)
class ClusterCrdsArgs:
    crds: CrdsConfig
    provider: k8s.Provider
    with_leaderworkerset: bool


class ClusterCrds(pulumi.ComponentResource):
    """Gateway API (standard channel), InferencePool v1 and, when needed, LeaderWorkerSet."""

    def __init__(self, name: str, args: ClusterCrdsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llmd:index:ClusterCrds", name, None, opts)
        installs = {
            f"gateway-api-{args.crds.gateway_api_version}": gateway_api_url(args.crds.gateway_api_version),
            f"inference-extension-{args.crds.inference_extension_version}": inference_extension_url(
                args.crds.inference_extension_version
            ),
        }
        if args.with_leaderworkerset:
            installs[f"leaderworkerset-{args.crds.lws_version}"] = leaderworkerset_url(args.crds.lws_version)
        self.installs: list[pulumi.Resource] = [
            k8s.yaml.v2.ConfigFile(
                install_name,
                file=url,
                opts=pulumi.ResourceOptions(
                    parent=self, provider=args.provider, retain_on_delete=True, transforms=[retain_children]
                ),
            )
            for install_name, url in installs.items()
        ]
        self.register_outputs({"installs": sorted(installs.values())})
