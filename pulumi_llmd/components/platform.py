"""What a platform (on-prem, kind, GKE, EKS) hands to the in-cluster components.

A platform provisions (or adopts) the cluster and its accelerator networking, then describes two
things: the Kubernetes provider every in-cluster resource must use, and how a model-server pod
attaches to the fast network on that platform. The model-server pools merge :class:`PodNetworking`
into their pod template without knowing which platform produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s


@dataclass(frozen=True)
class PodNetworking:
    """Pod-template additions for RDMA/EFA networking, in Kubernetes manifest (camelCase) shapes."""

    annotations: dict[str, str] = field(default_factory=dict)
    # Extended resources each model-server container requests and limits, e.g. {"rdma/roce_gdr": "2"}
    # or {"vpc.amazonaws.com/efa": "32"}.
    resources: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    # NIXL transfer backends (NIXL plugin names, e.g. ("LIBFABRIC",) for EFA) that vLLM's
    # NixlConnector uses for P/D KV transfer; empty keeps vLLM's default (UCX).
    nixl_backends: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A bare string would silently become a tuple of one-letter "backends".
        if not isinstance(self.nixl_backends, tuple):
            raise TypeError(
                f"PodNetworking.nixl_backends must be a tuple of names, got {self.nixl_backends!r}"
            )
        for backend in self.nixl_backends:
            if not isinstance(backend, str) or not backend or any(c.isspace() for c in backend):
                raise ValueError(f"PodNetworking.nixl_backends: {backend!r} is not a NIXL backend name")
        if len(set(self.nixl_backends)) != len(self.nixl_backends):
            raise ValueError(f"PodNetworking.nixl_backends lists a backend twice: {self.nixl_backends!r}")


@dataclass(frozen=True)
class Platform:
    k8s_provider: k8s.Provider
    pod_networking: PodNetworking
    # Resources the in-cluster components must wait for (node pools, device plugins, operators).
    depends_on: list[pulumi.Resource] = field(default_factory=list)
