"""Kubeconfigs for clusters this program creates or adopts, built from the cluster's own outputs.

Both use exec credential plugins, so the kubeconfig holds no secret: the Kubernetes provider (and
with it every in-cluster resource) depends on the cluster through its endpoint and CA, and a
token is minted at apply time by the cloud CLI already needed to run `pulumi up`.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi

_EXEC_API = "client.authentication.k8s.io/v1beta1"


def _kubeconfig(name: str, endpoint: str, ca_data: str, exec_config: dict[str, Any]) -> str:
    server = endpoint if endpoint.startswith("https://") else f"https://{endpoint}"
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "users": [{"name": name, "user": {"exec": {"apiVersion": _EXEC_API, **exec_config}}}],
            "preferences": {},
        },
        sort_keys=True,
    )


def gke_kubeconfig(
    name: pulumi.Input[str], endpoint: pulumi.Input[str], ca_data: pulumi.Input[str]
) -> pulumi.Output[str]:
    exec_config = {
        "command": "gke-gcloud-auth-plugin",
        "installHint": "Install gke-gcloud-auth-plugin: gcloud components install gke-gcloud-auth-plugin",
        "provideClusterInfo": True,
    }
    return pulumi.Output.all(name, endpoint, ca_data).apply(
        lambda parts: _kubeconfig(str(parts[0]), str(parts[1]), str(parts[2]), exec_config)
    )


def eks_kubeconfig(
    name: pulumi.Input[str], region: str, endpoint: pulumi.Input[str], ca_data: pulumi.Input[str]
) -> pulumi.Output[str]:
    def render(parts: list[Any]) -> str:
        cluster_name = str(parts[0])
        exec_config = {
            "command": "aws",
            "args": [
                "eks",
                "get-token",
                "--cluster-name",
                cluster_name,
                "--region",
                region,
                "--output",
                "json",
            ],
        }
        return _kubeconfig(cluster_name, str(parts[1]), str(parts[2]), exec_config)

    return pulumi.Output.all(name, endpoint, ca_data).apply(render)
