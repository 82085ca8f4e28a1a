"""Apply `llmd:mirrors` to everything a stack deploys, as one Pulumi stack transform.

A stack transform sees every resource the program registers, including the children of remote
components (the objects a Helm chart v4 or a yaml/v2 ConfigFile expands into), which Pulumi's
transforms reach and the older transformations did not (pulumi.com docs, "Resource option:
transforms"). So one function rewrites:

* container images in every pod template (Deployment, DaemonSet, StatefulSet, ReplicaSet, Job,
  CronJob, Pod, LeaderWorkerSet), and adds ``imagePullSecrets`` to those pod specs;
* the component repositories (and pull secrets) of a NicClusterPolicy, whose pods the Network
  Operator creates itself;
* the chart source of every ``kubernetes:helm.sh/v4:Chart`` (a repository URL or an OCI reference);
* the URLs of every ``kubernetes:yaml/v2:ConfigFile`` / ``ConfigGroup``.

Objects that operators create at run time from their own settings (the GPU Operator's driver and
toolkit daemonsets, the gateway provider's proxies) are not Pulumi resources: point those operators
at the mirror through their values (``onprem.gpuOperator.values``). Python programs that use
``LlmdStack`` directly register the same transform:
``pulumi.runtime.register_resource_transform(mirror_transform(mirrors))``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pulumi

from pulumi_llmd.config.mirrors import MirrorsConfig

CHART_TYPE = "kubernetes:helm.sh/v4:Chart"
YAML_TYPES = ("kubernetes:yaml/v2:ConfigFile", "kubernetes:yaml/v2:ConfigGroup")
DOCKER_HUB = "docker.io"

# Where the pod spec(s) sit in each workload kind's object.
_POD_SPEC_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Pod": (("spec",),),
    "Deployment": (("spec", "template", "spec"),),
    "DaemonSet": (("spec", "template", "spec"),),
    "StatefulSet": (("spec", "template", "spec"),),
    "ReplicaSet": (("spec", "template", "spec"),),
    "Job": (("spec", "template", "spec"),),
    "CronJob": (("spec", "jobTemplate", "spec", "template", "spec"),),
    "LeaderWorkerSet": (
        ("spec", "leaderWorkerTemplate", "leaderTemplate", "spec"),
        ("spec", "leaderWorkerTemplate", "workerTemplate", "spec"),
    ),
}


def rewrite_prefix(value: str, rules: Mapping[str, str]) -> str:
    """``value`` with its longest matching prefix replaced; prefixes match whole path components."""
    best = ""
    for prefix in rules:
        bare = prefix.rstrip("/")
        whole = (
            value == bare
            or value.startswith(bare + "/")
            or (prefix.endswith("/") and value.startswith(prefix))
        )
        if whole and len(bare) > len(best.rstrip("/")):
            best = prefix
    if not best:
        return value
    bare, mirror = best.rstrip("/"), rules[best].rstrip("/")
    return mirror + value[len(bare) :]


def normalized_image(reference: str) -> str:
    """The image with its registry spelled out: a first component without '.', ':' (or
    ``localhost``) is a Docker Hub path, and a single-component name lives under ``library/``
    (distribution/reference normalize.go)."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return reference
    if not rest:
        return f"{DOCKER_HUB}/library/{reference}"
    return f"{DOCKER_HUB}/{reference}"


def mirrored_image(reference: str, mirrors: MirrorsConfig) -> str:
    if not mirrors.images:
        return reference
    normalized = normalized_image(reference)
    rewritten = rewrite_prefix(normalized, mirrors.images)
    return reference if rewritten == normalized else rewritten


def chart_source(props: Mapping[str, Any]) -> tuple[str, str]:
    """(source, chart name) of a Chart's props: ``oci://.../name`` or ``<repository URL>/<name>``."""
    chart = str(props.get("chart", ""))
    if chart.startswith("oci://"):
        return chart, chart.rsplit("/", 1)[-1]
    repo = str((props.get("repositoryOpts") or {}).get("repo", "")).rstrip("/")
    return (f"{repo}/{chart}" if repo else chart), chart


def mirrored_chart(props: dict[str, Any], mirrors: MirrorsConfig) -> dict[str, Any]:
    source, name = chart_source(props)
    rewritten = rewrite_prefix(source, mirrors.charts)
    if rewritten == source:
        return props
    out = dict(props)
    options = dict(out.get("repositoryOpts") or {})
    if rewritten.startswith("oci://"):
        out["chart"] = rewritten
        options.pop("repo", None)
    else:
        repo, _, chart = rewritten.rpartition("/")
        out["chart"] = chart or name
        options["repo"] = repo
    if options:
        out["repositoryOpts"] = options
    else:
        out.pop("repositoryOpts", None)
    return out


def _at(document: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _pod_specs(kind: str, props: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path in _POD_SPEC_PATHS.get(kind, ()):
        spec = _at(props, path)
        if isinstance(spec, dict):
            yield spec


def _mirror_pod_spec(spec: dict[str, Any], mirrors: MirrorsConfig) -> None:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            if isinstance(container, dict) and isinstance(container.get("image"), str):
                container["image"] = mirrored_image(container["image"], mirrors)
    if mirrors.image_pull_secrets:
        named = [s for s in spec.get("imagePullSecrets") or [] if isinstance(s, dict)]
        have = {s.get("name") for s in named}
        spec["imagePullSecrets"] = named + [
            {"name": name} for name in mirrors.image_pull_secrets if name not in have
        ]


def _mirror_nic_cluster_policy(props: dict[str, Any], mirrors: MirrorsConfig) -> None:
    """Every component of the policy is ``{image, repository, version, imagePullSecrets ...}``."""

    def visit(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if isinstance(node.get("repository"), str) and isinstance(node.get("image"), str):
            node["repository"] = mirrored_image(node["repository"], mirrors)
            if mirrors.image_pull_secrets:
                have = list(node.get("imagePullSecrets") or [])
                node["imagePullSecrets"] = have + [s for s in mirrors.image_pull_secrets if s not in have]
        for value in node.values():
            visit(value)

    visit(props.get("spec"))


def mirror_props(
    resource_type: str, props: Mapping[str, Any], mirrors: MirrorsConfig
) -> dict[str, Any] | None:
    """The props with the mirrors applied, or None when nothing changes (pure; the transform's body)."""
    if resource_type == CHART_TYPE:
        out = mirrored_chart(dict(props), mirrors) if mirrors.charts else dict(props)
    elif resource_type in YAML_TYPES:
        out = dict(props)
        if isinstance(out.get("file"), str):
            out["file"] = rewrite_prefix(out["file"], mirrors.urls)
        if isinstance(out.get("files"), list):
            out["files"] = [
                rewrite_prefix(f, mirrors.urls) if isinstance(f, str) else f for f in out["files"]
            ]
    elif resource_type.startswith("kubernetes:"):
        kind = resource_type.rsplit(":", 1)[-1]
        if kind not in _POD_SPEC_PATHS and kind != "NicClusterPolicy":
            return None
        out = copy.deepcopy(dict(props))
        if kind == "NicClusterPolicy":
            _mirror_nic_cluster_policy(out, mirrors)
        for spec in _pod_specs(kind, out):
            _mirror_pod_spec(spec, mirrors)
    else:
        return None
    return out if out != dict(props) else None


def mirror_transform(
    mirrors: MirrorsConfig,
) -> Callable[[pulumi.ResourceTransformArgs], pulumi.ResourceTransformResult | None]:
    """A stack transform applying ``mirrors``; register it before the first resource."""

    def transform(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
        props = mirror_props(args.type_, args.props, mirrors)
        if props is None:
            return None
        return pulumi.ResourceTransformResult(props=props, opts=args.opts)

    return transform


def register_mirrors(mirrors: MirrorsConfig) -> None:
    """Register the transform for the whole stack, when the config asks for anything."""
    if mirrors.active:
        pulumi.runtime.register_resource_transform(mirror_transform(mirrors))
