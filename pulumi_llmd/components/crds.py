"""Cluster-wide CRDs from their upstream release assets, kept when the stack is destroyed.

Deleting a CRD deletes every object of that kind in the cluster (other teams' Gateways and routes
included), so these installs are retained on delete: the option is set on the remote YAML
component and, through a transform, on every object it expands into.
"""

# No `from __future__ import annotations`: Pulumi's schema analyzer reads ClusterCrds's annotations.
import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components.args import ClusterCrdsArgs
from pulumi_llmd.components.inputs import ClusterCrdsInputs, package_component
from pulumi_llmd.components.k8sobjects import child_options
from pulumi_llmd.config.inputs import validate_args


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


# llm-d-router publishes no install asset for its CRDs that we could confirm, so they come from the
# tagged source (the same files as /work/shared/crds/llm-d-router-v0.10.0-*).
LLM_D_ROUTER_CRDS = ("inferenceobjectives", "inferencemodelrewrites")


def llm_d_router_crd_url(version: str, plural: str) -> str:
    return f"https://raw.githubusercontent.com/llm-d/llm-d-router/{version}/config/crd/bases/llm-d.ai_{plural}.yaml"


def retain_children(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult:
    """Transform marking every object of a remote YAML install retained on delete."""
    return pulumi.ResourceTransformResult(
        props=args.props,
        opts=pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )


def crd_installs(crds: ClusterCrdsInputs) -> dict[str, str]:
    """Install name -> release-asset URL, in install order."""
    installs = {
        f"gateway-api-{crds.gateway_api_version}": gateway_api_url(crds.gateway_api_version),
        f"inference-extension-{crds.inference_extension_version}": inference_extension_url(
            crds.inference_extension_version
        ),
    }
    if crds.leader_worker_set:
        installs[f"leaderworkerset-{crds.lws_version}"] = leaderworkerset_url(crds.lws_version)
    if crds.request_management:
        for plural in LLM_D_ROUTER_CRDS:
            installs[f"llm-d-router-{crds.llm_d_router_version}-{plural}"] = llm_d_router_crd_url(
                crds.llm_d_router_version, plural
            )
    return installs


@package_component
class ClusterCrds(pulumi.ComponentResource):
    """Cluster-wide CRDs from their pinned release assets, retained on delete: Gateway API (standard
    channel), InferencePool v1 and, when asked, LeaderWorkerSet (CRD and controller) and llm-d-router's
    InferenceObjective and InferenceModelRewrite."""

    installs: list[str]
    """The release-asset URLs installed."""

    def __init__(self, name: str, args: ClusterCrdsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Args (:class:`~pulumi_llmd.components.args.ClusterCrdsArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.ClusterCrdsInputs`): ``gateway_api_version``,
        ``inference_extension_version``, ``lws_version``, ``llm_d_router_version`` (the ``crds``
        section's versions), ``leader_worker_set`` and ``request_management``. The Kubernetes provider
        comes through ``opts``.
        """
        crds = validate_args(ClusterCrdsInputs, args, component="ClusterCrds")
        super().__init__("llmd:index:ClusterCrds", name, None, opts)
        installs = crd_installs(crds)
        retained = pulumi.ResourceOptions(retain_on_delete=True, transforms=[retain_children])
        self.install_resources: list[pulumi.Resource] = [
            k8s.yaml.v2.ConfigFile(
                install_name,
                file=url,
                opts=pulumi.ResourceOptions.merge(child_options(self, opts), retained),
            )
            for install_name, url in installs.items()
        ]
        self.installs = sorted(installs.values())
        self.register_outputs({"installs": self.installs})
