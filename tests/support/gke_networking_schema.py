"""A minimal JSON schema for GKE's `networking.gke.io/v1` Network and GKENetworkParamSet.

GKE installs these CRDs itself on clusters with multi-networking enabled and does not publish them
(no upstream repository or release asset carries the YAML; see shared/crds/SOURCES.md), so the CRD
validation the spine does for Gateway API / InferencePool objects is not available. This schema is
written from GKE's documentation instead ("Set up multi-network support for Pods" and the GPU
RDMA guides for A3 Ultra / A4, cloud.google.com/kubernetes-engine/docs) and Google's
gpudirect-rdma manifests. It covers exactly the documented fields, is strict about unknown ones
(a typo fails), and enforces the pairing rules those docs state: a Device network names its
GKENetworkParamSet through `parametersRef`, and a param set names the VPC and subnet.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_METADATA = {
    "type": "object",
    "required": ["name"],
    # Cluster-scoped: a namespace would be a mistake.
    "not": {"required": ["namespace"]},
    "properties": {"name": _NAME, "labels": {"type": "object"}, "annotations": {"type": "object"}},
}


def _networking_object(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A cluster-scoped ``networking.gke.io/v1`` object of ``kind``: strict at the top level too."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "networking.gke.io/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


GKE_NETWORK_PARAM_SET = _networking_object(
    "GKENetworkParamSet",
    {
        "type": "object",
        "required": ["vpc", "vpcSubnet"],
        "additionalProperties": False,
        "properties": {
            "vpc": _NAME,
            "vpcSubnet": _NAME,
            # NetDevice: a whole NIC moved into the pod; RDMA: an MRDMA NIC (A3 Ultra / A4);
            # DPDK-VFIO: a NIC bound for DPDK. Absent means an L3 network with pod ranges.
            "deviceMode": {"enum": ["NetDevice", "RDMA", "DPDK-VFIO"]},
            "podIPv4Ranges": {
                "type": "object",
                "required": ["rangeNames"],
                "additionalProperties": False,
                "properties": {"rangeNames": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
            },
        },
    },
)

GKE_NETWORK = _networking_object(
    "Network",
    {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "type": {"enum": ["L3", "Device"]},
            "parametersRef": {
                "type": "object",
                "required": ["group", "kind", "name"],
                "additionalProperties": False,
                "properties": {
                    "group": {"const": "networking.gke.io"},
                    "kind": {"const": "GKENetworkParamSet"},
                    "name": _NAME,
                },
            },
            "routes": {"type": "array", "items": {"type": "object"}},
        },
        # Device networks have no pod ranges of their own: they must point at a param set.
        "if": {"properties": {"type": {"const": "Device"}}},
        "then": {"required": ["type", "parametersRef"]},
    },
)

SCHEMAS: dict[str, dict[str, Any]] = {"GKENetworkParamSet": GKE_NETWORK_PARAM_SET, "Network": GKE_NETWORK}
