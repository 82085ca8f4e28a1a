"""provision_platform: the cluster side of a stack, per platform, behind the Platform seam."""

from __future__ import annotations

import importlib

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components.inputs import OnPremAcceleratorsArgs
from pulumi_llmd.components.onprem import OnPremAccelerators
from pulumi_llmd.components.platform import Platform, PodNetworking
from pulumi_llmd.config.models import PlatformName, StackConfig


def provision_platform(config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> Platform:
    if config.platform is PlatformName.ONPREM:
        return _onprem(config, opts)
    if config.platform is PlatformName.KIND:
        return _kind(config, opts)
    if config.platform in (PlatformName.GKE, PlatformName.EKS):
        # Imported only on this branch: on-prem and kind stacks must not need the cloud SDK modules.
        cloud = importlib.import_module(f"pulumi_llmd.cloud.{config.platform.value}")
        platform: Platform = cloud.provision(config, opts)
        return platform
    raise ValueError(f"unsupported platform {config.platform!r}")


def _onprem(config: StackConfig, opts: pulumi.ResourceOptions | None) -> Platform:
    onprem = config.onprem
    if onprem is None:
        raise ValueError("platform onprem needs config.onprem")
    # An explicit provider: never the ambient default, so every object says which cluster it targets.
    provider = k8s.Provider("onprem", context=onprem.kube_context, opts=opts)
    accelerators = OnPremAccelerators(
        "onprem-accelerators",
        OnPremAcceleratorsArgs(instance=config.name, onprem=onprem),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(providers=[provider])),
    )
    return Platform(
        k8s_provider=provider,
        pod_networking=accelerators.pod_networking,
        depends_on=accelerators.ready,
    )


def _kind(config: StackConfig, opts: pulumi.ResourceOptions | None) -> Platform:
    cluster = config.kind.cluster_name if config.kind is not None else "llmd"
    provider = k8s.Provider("kind", context=f"kind-{cluster}", opts=opts)
    # kind has no GPUs or RDMA: pods need nothing beyond the defaults.
    return Platform(k8s_provider=provider, pod_networking=PodNetworking())
