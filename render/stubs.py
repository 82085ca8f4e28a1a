"""Offline stand-ins for what GCP/AWS report back, used by `python -m render` and tests.

Under the mock engine a resource's outputs are just its inputs, so a cluster would have no endpoint
or CA and the kubeconfig built from them would be empty. These functions add the provider-computed
outputs the cloud components read (endpoint, CA, security group, names the providers auto-generate)
and answer the lookups an adopted cluster needs. Values are obviously fake: TEST-NET addresses
(RFC 5737), AWS's documentation account 123456789012, and a CA that is not a certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi

PLACEHOLDER_CA = "cGxhY2Vob2xkZXIgQ0EgKG9mZmxpbmUgcmVuZGVyKQ=="  # base64("placeholder CA (offline render)")
PLACEHOLDER_ACCOUNT = "123456789012"
# What an adopted cluster reports for the settings the GKE component checks; tests swap these.
ADOPTED_GKE_CLUSTER: dict[str, Any] = {
    "enableMultiNetworking": True,
    "datapathProvider": "ADVANCED_DATAPATH",
}

ResourceOutputs = Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]
CallResult = Callable[[pulumi.runtime.MockCallArgs], dict[str, Any]]


def _auto_name(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    # Providers auto-name resources whose name is unset (logical name + random suffix).
    return {"name": args.inputs.get("name") or args.name}


def _gke_cluster(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {"endpoint": "203.0.113.10", "masterAuth": {"clusterCaCertificate": PLACEHOLDER_CA}}


def _eks_cluster(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    name = args.inputs.get("name") or args.name
    return {
        "endpoint": f"https://{name}.placeholder.eks.amazonaws.com",
        "certificateAuthority": {"data": PLACEHOLDER_CA},
        "vpcConfig": {
            **(args.inputs.get("vpcConfig") or {}),
            "clusterSecurityGroupId": "sg-0c1a5e7c1a5e7c1a5",
        },
    }


def _iam_role(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    name = args.inputs.get("name") or args.name
    return {"name": name, "arn": f"arn:aws:iam::{PLACEHOLDER_ACCOUNT}:role/{name}"}


def _launch_template(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {**_auto_name(args), "latestVersion": 1}


def _gke_cluster_lookup(args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
    return {
        "name": args.args.get("name"),
        "location": args.args.get("location"),
        "project": args.args.get("project"),
        "endpoint": "203.0.113.20",
        "masterAuths": [{"clusterCaCertificate": PLACEHOLDER_CA}],
        **ADOPTED_GKE_CLUSTER,
    }


def _eks_cluster_lookup(args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
    name = args.args.get("name")
    return {
        "name": name,
        "endpoint": f"https://{name}.placeholder.eks.amazonaws.com",
        "certificateAuthorities": [{"data": PLACEHOLDER_CA}],
        "vpcConfig": {
            "clusterSecurityGroupId": "sg-0adc0adc0adc0adc0",
            "vpcId": "vpc-0adc0adc0adc0adc0",
            "subnetIds": [],
            "securityGroupIds": [],
            "publicAccessCidrs": [],
            "endpointPrivateAccess": True,
            "endpointPublicAccess": True,
        },
    }


RESOURCE_OUTPUTS: dict[str, ResourceOutputs] = {
    "gcp:container/cluster:Cluster": _gke_cluster,
    "aws:eks/cluster:Cluster": _eks_cluster,
    "aws:iam/role:Role": _iam_role,
    "aws:ec2/launchTemplate:LaunchTemplate": _launch_template,
    "aws:ec2/placementGroup:PlacementGroup": _auto_name,
    "aws:ec2/securityGroup:SecurityGroup": _auto_name,
}

CALL_RESULTS: dict[str, CallResult] = {
    "gcp:container/getCluster:getCluster": _gke_cluster_lookup,
    "aws:eks/getCluster:getCluster": _eks_cluster_lookup,
}
