"""Register a Kubernetes manifest (a camelCase dict) as the matching pulumi-kubernetes resource.

Components build their objects as plain manifests so the same dicts can be read, unit-tested and
schema-validated; this is the one place that turns them into Pulumi resources. Core kinds become
their typed resource (so previews show typed diffs); everything else is a CustomResource.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

_TYPED: dict[tuple[str, str], Any] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("v1", "Service"): k8s.core.v1.Service,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
}


def child_options(
    component: pulumi.Resource, opts: pulumi.ResourceOptions | None, *after: pulumi.Resource
) -> pulumi.ResourceOptions:
    """Options for a component's child: parented to the component, so it inherits the providers the
    component was given (``providers=`` / ``provider=`` in its opts), and after everything the
    component itself was told to wait for (``opts.depends_on``) plus ``after``.

    Pulumi does not pass a component's ``depends_on`` down to its children; forwarding it makes
    "this component comes after X" hold for every object it creates, and puts the edge in the
    engine's graph (previews, targeted updates, delete order) rather than only in registration timing.
    """
    inherited = pulumi.ResourceOptions(parent=component, depends_on=opts.depends_on if opts else None)
    if not after:
        return inherited
    return pulumi.ResourceOptions.merge(inherited, pulumi.ResourceOptions(depends_on=list(after)))


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def register(manifest: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """Create the resource; its Pulumi name is the object's name (unique per kind in a stack)."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    name = manifest["metadata"]["name"]
    fields = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
    typed = _TYPED.get((api_version, kind))
    if typed is None:
        unexpected = set(fields) - {"metadata", "spec"}
        if unexpected:
            raise ValueError(
                f"{kind} {name}: custom resources carry only metadata and spec, not {unexpected}"
            )
        return k8s.apiextensions.CustomResource(
            name,
            api_version=api_version,
            kind=kind,
            metadata=fields["metadata"],
            spec=fields.get("spec"),
            opts=opts,
        )
    resource: pulumi.CustomResource = typed(name, opts=opts, **{_snake(k): v for k, v in fields.items()})
    return resource
