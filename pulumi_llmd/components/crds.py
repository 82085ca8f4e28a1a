"""Cluster-wide CRDs from their upstream release assets, kept when the stack is destroyed.

Deleting a CRD deletes every object of that kind in the cluster (other teams' Gateways and routes
included), so these installs are retained on delete: the option is set on the remote YAML
component and, through a transform, on every object it expands into.
"""

# No `from __future__ import annotations`: Pulumi's schema analyzer reads ClusterCrds's annotations.
import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components.args import ClusterCrdsArgs
from pulumi_llmd.components.claims import Claim, claim
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


def llm_d_router_url(version: str) -> str:
    # llm-d-router's release asset: the llm-d.ai CRDs (InferenceObjective, InferenceModelRewrite),
    # built by `make artifacts` (v0.10.0 Makefile) and uploaded by .github/workflows/ci-release.yaml.
    return f"https://github.com/llm-d/llm-d-router/releases/download/{version}/manifests.yaml"


def leaderworkerset_url(version: str) -> str:
    # CRD plus controller: LeaderWorkerSet needs its controller to create pods.
    return f"https://github.com/kubernetes-sigs/lws/releases/download/{version}/manifests.yaml"


def retain_children(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult:
    """Transform marking every object of a remote YAML install retained on delete."""
    return pulumi.ResourceTransformResult(
        props=args.props,
        opts=pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )


# The arg that asks for each install (by its name without the version).
_INSTALL_KEYS = {
    "gateway-api": "gatewayApiVersion",
    "inference-extension": "inferenceExtensionVersion",
    "llm-d-router": "llmdRouterVersion",
    "leaderworkerset": "leaderWorkerSet",
}


def crd_installs(crds: ClusterCrdsInputs) -> dict[str, str]:
    """Install name -> release-asset URL, in install order."""
    installs: dict[str, str] = {}
    if crds.gateway_api_version is not None:
        installs[f"gateway-api-{crds.gateway_api_version}"] = gateway_api_url(crds.gateway_api_version)
    if crds.inference_extension_version is not None:
        version = crds.inference_extension_version
        installs[f"inference-extension-{version}"] = inference_extension_url(version)
    if crds.llmd_router_version is not None:
        version = crds.llmd_router_version
        installs[f"llm-d-router-{version}"] = llm_d_router_url(version)
    if crds.leader_worker_set:
        installs[f"leaderworkerset-{crds.lws_version}"] = leaderworkerset_url(crds.lws_version)
    return installs


@package_component
class ClusterCrds(pulumi.ComponentResource):
    """Cluster-wide CRDs from their pinned release assets, retained on delete: Gateway API (standard
    channel), InferencePool v1, llm-d's InferenceObjective and InferenceModelRewrite (each when given a
    version) and, when asked, LeaderWorkerSet (CRD and controller)."""

    installs: list[str]
    """The release-asset URLs installed."""

    def __init__(self, name: str, args: ClusterCrdsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Args (:class:`~pulumi_llmd.components.args.ClusterCrdsArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.ClusterCrdsInputs`): ``gateway_api_version``,
        ``inference_extension_version``, ``llmd_router_version`` (each unset installs nothing),
        ``lws_version`` and ``leader_worker_set``. The Kubernetes provider comes through ``opts``.
        """
        crds = validate_args(ClusterCrdsInputs, args, component="ClusterCrds")
        installs = crd_installs(crds)
        why = "CRDs are cluster-wide and each install is named by its release; install them once"
        claim(
            self,
            "llmd:index:ClusterCrds",
            name,
            opts,
            [
                Claim(_INSTALL_KEYS[install.rsplit("-", 1)[0]], "CRD install", install, why)
                for install in installs
            ],
        )
        super().__init__("llmd:index:ClusterCrds", name, None, opts)
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
