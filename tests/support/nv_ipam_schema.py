"""A JSON schema for nv-ipam's ``nv-ipam.nvidia.com/v1alpha1`` IPPool, for tests.

The IPPool CRD is not in shared/crds: the Network Operator applies it itself when a NicClusterPolicy
enables nvIpam. This schema states the facts of that CRD as shipped with the operator at v26.4.1
(Mellanox/network-operator ``manifests/state-nv-ipam-cni/005-nv-ipam.nvidia.com_ippools.yaml``):
namespaced, ``spec`` required, ``spec.subnet`` (string) and ``spec.perNodeBlockSize`` (integer)
required, the other spec fields as listed below. Strict about unknown fields, as the CRD tests are.
"""

from __future__ import annotations

from typing import Any

IP_POOL: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "nv-ipam.nvidia.com/v1alpha1"},
        "kind": {"const": "IPPool"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "namespace": {"type": "string", "minLength": 1},
                "labels": {"type": "object"},
                "annotations": {"type": "object"},
            },
        },
        "spec": {
            "type": "object",
            "required": ["perNodeBlockSize", "subnet"],
            "additionalProperties": False,
            "properties": {
                "subnet": {"type": "string"},
                "perNodeBlockSize": {"type": "integer"},
                "gateway": {"type": "string"},
                "defaultGateway": {"type": "boolean"},
                "exclusions": {"type": "array"},
                "perNodeExclusions": {"type": "array"},
                "nodeSelector": {"type": "object"},
                "routes": {"type": "array"},
            },
        },
    },
}
