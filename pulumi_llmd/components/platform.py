"""What a platform (on-prem, kind, GKE, EKS) hands to the in-cluster components.

A platform provisions (or adopts) the cluster and its accelerator networking, then describes two
things: the Kubernetes provider every in-cluster resource must use (passed to ``LlmdStack`` in its
resource options, where children inherit it), and how a model-server pod attaches to the fast
network on that platform (:class:`PodNetworking`, an ``LlmdStack`` arg). The model-server pools merge
it into their pod template without knowing which platform produced it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field, field_validator

from pulumi_llmd.config.base import ConfigModel
from pulumi_llmd.config.models import DnsLabel
from pulumi_llmd.config.nodes import (
    validate_annotation_keys,
    validate_env,
    validate_extended_resources,
    validate_labels,
)

# A Linux capability as a container's securityContext names it (IPC_LOCK, SYS_RESOURCE ...).
_CAPABILITY = re.compile(r"^[A-Z][A-Z0-9_]*$")


class NetworkAttachment(ConfigModel):
    """A Multus NetworkAttachmentDefinition in the stack's namespace that model-server pods attach to."""

    name: DnsLabel = Field(description="NetworkAttachmentDefinition name.")
    config: str = Field(min_length=2, description="The CNI configuration (JSON) the definition carries.")
    resource_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9.-]+/[a-z0-9_.-]+$",
        description="Device-plugin resource backing the network (`k8s.v1.cni.cncf.io/resourceName`).",
    )


# What only the pods of a pool whose replicas span nodes get: the collective-communication (NCCL)
# fabric between nodes, e.g. a host-installed NCCL network plugin, its settings and its host paths.
class MultiNodeNetworking(ConfigModel):
    """Additions for the pods of pools whose replicas span nodes."""

    env: dict[str, str] = Field(default_factory=dict, description="Extra engine-container environment.")
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="Extra pod volumes.")
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra engine-container volume mounts."
    )

    _env = field_validator("env")(validate_env)


class PodNetworking(ConfigModel):
    """How model-server pods attach to the accelerator network (RDMA, EFA) and reach GPU nodes."""

    # Pod-template additions in Kubernetes manifest (camelCase) shapes; empty on platforms with neither
    # (kind). The pods name the Multus networks in the `k8s.v1.cni.cncf.io/networks` annotation.

    annotations: dict[str, str] = Field(
        default_factory=dict, description="Pod annotations (e.g. Multus or GKE interface lists)."
    )
    resources: dict[str, str] = Field(
        default_factory=dict,
        description="Extended resources each model-server container requests and limits, e.g. "
        '`{"rdma/roce_gdr": "2"}` or `{"vpc.amazonaws.com/efa": "32"}`.',
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the engine container.")
    single_node_env: dict[str, str] = Field(
        default_factory=dict,
        description="Engine environment only for pools whose replicas fit one node (tensor parallel "
        "inside the node), e.g. turning off NCCL network plugins that only cross-node traffic needs.",
    )
    multi_node: MultiNodeNetworking = Field(
        default_factory=MultiNodeNetworking,
        description="Additions only for pools whose replicas span nodes (nodesPerReplica > 1).",
    )
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="Extra pod volumes.")
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra engine-container volume mounts."
    )
    capabilities: list[str] = Field(
        default_factory=list, description="Linux capabilities the engine container adds (e.g. IPC_LOCK)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")
    nixl_backends: tuple[str, ...] = Field(
        default=(),
        description="NIXL transfer backends (NIXL plugin names, e.g. `LIBFABRIC` for EFA) vLLM's "
        "NixlConnector uses for P/D KV transfer; empty keeps vLLM's default (UCX).",
    )
    network_attachments: list[NetworkAttachment] = Field(
        default_factory=list,
        description="Multus networks to create in the stack's namespace for the pods to attach to.",
    )

    # PodNetworking is an LlmdStack (and ModelServerPool) arg a program may write by hand: what the API
    # server would refuse in the pod template is refused here, naming the key, before anything is made.
    _labels = field_validator("node_selector")(validate_labels)
    _annotations = field_validator("annotations")(validate_annotation_keys)
    _resources = field_validator("resources")(validate_extended_resources)
    _env = field_validator("env", "single_node_env")(validate_env)

    @field_validator("capabilities")
    @classmethod
    def _capability_names(cls, capabilities: list[str]) -> list[str]:
        for name in capabilities:
            if not _CAPABILITY.match(name):
                raise ValueError(f"{name!r} is not a Linux capability name (upper case, e.g. IPC_LOCK)")
        return capabilities

    @field_validator("nixl_backends", mode="before")
    @classmethod
    def _not_a_bare_string(cls, value: Any) -> Any:
        # A bare string would otherwise become a tuple of one-letter "backends".
        if isinstance(value, str):
            raise TypeError(f"PodNetworking.nixl_backends must be a tuple of names, got {value!r}")
        return value

    @field_validator("nixl_backends")
    @classmethod
    def _backend_names(cls, backends: tuple[str, ...]) -> tuple[str, ...]:
        for backend in backends:
            if not backend or any(c.isspace() for c in backend):
                raise ValueError(f"{backend!r} is not a NIXL backend name")
        if len(set(backends)) != len(backends):
            raise ValueError(f"lists a backend twice: {backends!r}")
        return backends


@dataclass(frozen=True)
class Platform:
    """The cluster side of a stack, as ``provision_platform`` builds it for the program."""

    k8s_provider: k8s.Provider
    pod_networking: PodNetworking
    # Resources the in-cluster components must wait for (node pools, device plugins, operators).
    depends_on: list[pulumi.Resource] = field(default_factory=list)
