"""Guard rails for what pulumi-llmd deploys, as plain functions over Kubernetes manifests.

Each rule takes one manifest (a dict in Kubernetes' camelCase shape) and returns the violations as
human-readable strings. The same functions run inside the Pulumi policy pack (on ``args.props`` of
``kubernetes:*`` resources, which are the manifest fields) and offline over rendered objects in the
tests. This module depends on nothing but the standard library so the pack stays self-contained.

During ``pulumi preview`` values that are not known yet arrive as Pulumi's unknown sentinel; a
rule never reports a violation about a value it cannot see.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# What Pulumi puts in place of a value that is only known after apply.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

# Capabilities a model server may add: IPC_LOCK pins RDMA/NIXL memory registrations, SYS_RAWIO
# and NET_ADMIN/NET_RAW are what RDMA (RoCE/InfiniBand) verbs and GPUDirect need. Nothing else.
MODEL_SERVER_CAPABILITIES = frozenset({"IPC_LOCK", "SYS_RAWIO", "NET_ADMIN", "NET_RAW"})
# Memory is what protects the node (OOM); CPU limits throttle latency-critical servers, so the
# default asks for a memory limit and a CPU request. Configurable in the policy pack.
DEFAULT_REQUIRED_LIMITS = ("memory",)
DEFAULT_REQUIRED_REQUESTS = ("cpu",)

SERVING_LABEL = "llm-d.ai/inference-serving"
ROLE_LABEL = "llm-d.ai/role"
COMPONENT_LABEL = "app.kubernetes.io/component"
MODEL_SERVER_COMPONENTS = frozenset({"model-server"})
EPP_COMPONENTS = frozenset({"endpoint-picker", "epp"})
# Upstream endpoint-picker images, for stacks that swap in the Go EPP.
EPP_IMAGE_NAMES = frozenset({"epp", "llm-d-inference-scheduler", "llm-d-router"})

_SECRET_ENV_NAME = re.compile(
    r"(^|_)(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?|KEY)($|_)"
)
_SECRET_VALUE = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}"  # Hugging Face token
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{40,}"  # GitHub tokens
    r"|\b(AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI-style API key
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack token
    r"|\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."  # JWT
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
# GOOGLE_APPLICATION_CREDENTIALS=/var/run/secrets/gcp/key.json names a mounted secret file.
_FILE_PATH = re.compile(r"^/[\w.@/-]+$")
_REFERENCE_SUFFIXES = ("_PATH", "_FILE", "_DIR", "_NAME")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------------
# Finding the pods and containers in a manifest
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTemplate:
    path: str  # where the pod spec sits in the manifest, for messages
    labels: Mapping[str, Any]
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class Container:
    path: str
    body: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.body.get("name", "?"))


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _items(value: Any) -> list[Any]:
    """A list field's items; nothing when it is absent or unknown."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def _template(manifest: Mapping[str, Any], path: str, *keys: str) -> Iterator[PodTemplate]:
    template = _get(manifest, *keys)
    if isinstance(template, Mapping) and isinstance(template.get("spec"), Mapping):
        yield PodTemplate(path + ".spec", _get(template, "metadata", "labels") or {}, template["spec"])


def pod_templates(manifest: Mapping[str, Any]) -> list[PodTemplate]:
    """Every pod spec a workload manifest creates (LeaderWorkerSet has a leader and a worker one)."""
    kind = manifest.get("kind")
    if kind == "Pod" and isinstance(manifest.get("spec"), Mapping):
        return [PodTemplate("spec", _get(manifest, "metadata", "labels") or {}, manifest["spec"])]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        return list(_template(manifest, "spec.template", "spec", "template"))
    if kind == "CronJob":
        keys = ("spec", "jobTemplate", "spec", "template")
        return list(_template(manifest, "spec.jobTemplate.spec.template", *keys))
    if kind == "LeaderWorkerSet":
        base = ("spec", "leaderWorkerTemplate")
        leader = _template(manifest, "spec.leaderWorkerTemplate.leaderTemplate", *base, "leaderTemplate")
        worker = _template(manifest, "spec.leaderWorkerTemplate.workerTemplate", *base, "workerTemplate")
        return [*leader, *worker]
    return []


def containers(pod: PodTemplate) -> list[Container]:
    found = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for body in _items(pod.spec.get(field)):
            if isinstance(body, Mapping):
                found.append(Container(f"{pod.path}.{field}[{body.get('name', '?')}]", body))
    return found


def _image_name(image: str) -> str:
    """Repository basename without registry, tag or digest: ghcr.io/llm-d/epp:v1 -> epp."""
    repository = image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def is_model_server(pod: PodTemplate) -> bool:
    labels = pod.labels
    return (
        str(labels.get(SERVING_LABEL, "")).lower() == "true"
        or labels.get(ROLE_LABEL) in ("prefill", "decode", "both")
        or labels.get(COMPONENT_LABEL) in MODEL_SERVER_COMPONENTS
    )


def _argv(container: Container) -> list[Any]:
    return [*_items(container.body.get("command")), *_items(container.body.get("args"))]


def is_epp_container(container: Container) -> bool:
    """Our bundled EPP (``python -m epp``) or an upstream endpoint-picker image run as built.

    An explicit ``-m <module>`` decides (a container may run any of our modules whatever its image
    is called); otherwise (the image's own entrypoint, maybe with flags) the image name does.
    """
    argv = [str(a) for a in _argv(container)]
    modules = [b for a, b in itertools.pairwise(argv) if a == "-m"]
    if modules:
        return modules[0] == "epp"
    image = container.body.get("image")
    return isinstance(image, str) and _image_name(image) in EPP_IMAGE_NAMES


def is_epp_pod(pod: PodTemplate) -> bool:
    labelled = pod.labels.get(COMPONENT_LABEL) in EPP_COMPONENTS
    return labelled or any(is_epp_container(c) for c in containers(pod))


def _positive_number(value: Any) -> bool:
    # Numbers arrive as floats through the policy engine (protobuf Struct), as ints from YAML.
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _known(value: Any) -> bool:
    return value is not None and value != UNKNOWN


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


def model_server_privileges(
    manifest: Mapping[str, Any], allowed_capabilities: frozenset[str] = MODEL_SERVER_CAPABILITIES
) -> list[str]:
    """Model-server pods: never privileged, no host namespaces, only the RDMA capabilities."""
    violations = []
    for pod in filter(is_model_server, pod_templates(manifest)):
        for flag in ("hostPID", "hostIPC"):
            if pod.spec.get(flag) is True:
                violations.append(f"{pod.path}.{flag} is true; model servers must not share host namespaces")
        for container in containers(pod):
            security = container.body.get("securityContext") or {}
            if security.get("privileged") is True:
                violations.append(
                    f"{container.path} is privileged; grant the devices it needs (GPU/RDMA resources) "
                    f"and at most these capabilities instead: {', '.join(sorted(allowed_capabilities))}"
                )
            added = _items(_get(security, "capabilities", "add"))
            extra = sorted(str(c) for c in added if _known(c) and str(c).upper() not in allowed_capabilities)
            if extra:
                violations.append(
                    f"{container.path} adds capabilities {', '.join(extra)}; "
                    f"model servers may add only {', '.join(sorted(allowed_capabilities))}"
                )
    return violations


def epp_hardened(manifest: Mapping[str, Any]) -> list[str]:
    """EPP containers: non-root, read-only root filesystem, no privilege escalation."""
    violations = []
    for pod in filter(is_epp_pod, pod_templates(manifest)):
        pod_security = pod.spec.get("securityContext") or {}
        for container in containers(pod):
            if not is_epp_container(container) and pod.labels.get(COMPONENT_LABEL) not in EPP_COMPONENTS:
                continue
            security = container.body.get("securityContext") or {}
            # Container settings override the pod's.
            run_as_user = security.get("runAsUser", pod_security.get("runAsUser"))
            run_as_non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
            if run_as_user == 0:
                violations.append(f"{container.path} sets runAsUser: 0 (root)")
            elif UNKNOWN not in (run_as_user, run_as_non_root) and not (
                run_as_non_root is True or _positive_number(run_as_user)
            ):
                violations.append(
                    f"{container.path} may run as root; set securityContext.runAsNonRoot: true "
                    f"and a non-zero runAsUser"
                )
            read_only = security.get("readOnlyRootFilesystem")
            if read_only is not True and read_only != UNKNOWN:
                violations.append(f"{container.path} needs securityContext.readOnlyRootFilesystem: true")
            if security.get("privileged") is True:
                violations.append(f"{container.path} is privileged")
            if security.get("allowPrivilegeEscalation") is True:
                violations.append(f"{container.path} sets allowPrivilegeEscalation: true")
    return violations


def resource_limits(
    manifest: Mapping[str, Any],
    required_limits: Sequence[str] = DEFAULT_REQUIRED_LIMITS,
    required_requests: Sequence[str] = DEFAULT_REQUIRED_REQUESTS,
) -> list[str]:
    """Every container declares the required resource limits (and requests)."""
    violations = []
    for pod in pod_templates(manifest):
        for container in containers(pod):
            if container.path.split(".")[-1].startswith("ephemeralContainers"):
                continue  # debug containers cannot carry resources
            resources = container.body.get("resources")
            if resources == UNKNOWN:
                continue
            for section, wanted in (("limits", required_limits), ("requests", required_requests)):
                values = _get(resources, section) or {}
                if values == UNKNOWN:
                    continue
                missing = [name for name in wanted if name not in values]
                if missing:
                    violations.append(f"{container.path} has no resources.{section}.{' / '.join(missing)}")
    return violations


def image_pin_problem(image: str) -> str | None:
    """Why ``image`` is not pinned, or None when it carries a digest or an explicit, non-latest tag."""
    if _DIGEST.search(image):
        return None
    if "@" in image:
        return "has a malformed digest (expected @sha256:<64 hex digits>)"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag (pulls :latest implicitly); pin a version tag or a digest"
    tag = last.split(":", 1)[1]
    if not tag:
        return "has an empty tag"
    if tag.lower() == "latest":
        return "uses the moving tag 'latest'; pin a version tag or a digest"
    return None


def images_pinned(manifest: Mapping[str, Any]) -> list[str]:
    """Every container image is pinned by a version tag or a digest (no latest, no untagged)."""
    violations = []
    for pod in pod_templates(manifest):
        for container in containers(pod):
            image = container.body.get("image")
            if not _known(image):
                continue
            if not isinstance(image, str) or not image.strip():
                violations.append(f"{container.path} has no image")
                continue
            problem = image_pin_problem(image.strip())
            if problem:
                violations.append(f"{container.path} image {image!r} {problem}")
    return violations


def looks_like_secret_value(value: str) -> bool:
    return bool(_SECRET_VALUE.search(value))


def is_secret_env_name(name: str) -> bool:
    upper = name.upper()
    # HF_TOKEN_PATH=/var/run/secrets/hf/token points at a secret; it is not one.
    return bool(_SECRET_ENV_NAME.search(upper)) and not upper.endswith(_REFERENCE_SUFFIXES)


def no_plain_secrets(manifest: Mapping[str, Any]) -> list[str]:
    """Secrets reach containers through Secret references, never as literal env values or args."""
    violations = []
    for pod in pod_templates(manifest):
        for container in containers(pod):
            for entry in _items(container.body.get("env")):
                if not isinstance(entry, Mapping):
                    continue
                name, value = str(entry.get("name", "")), entry.get("value")
                if not isinstance(value, str) or not value or value == UNKNOWN:
                    continue  # valueFrom (secretKeyRef/fieldRef) or empty: fine
                if is_secret_env_name(name) and not _FILE_PATH.match(value):
                    violations.append(
                        f"{container.path} env {name} carries a literal value; "
                        f"use valueFrom.secretKeyRef (or envFrom a Secret)"
                    )
                elif looks_like_secret_value(value):
                    violations.append(f"{container.path} env {name} holds what looks like a credential")
            if any(isinstance(arg, str) and looks_like_secret_value(arg) for arg in _argv(container)):
                violations.append(f"{container.path} passes what looks like a credential on its command line")
    return violations


# --------------------------------------------------------------------------------------------------
# The rule set
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[Mapping[str, Any]], list[str]]
    # Whether the rule also applies to objects that come from third-party Helm charts (GPU/Network
    # Operator, the gateway control plane): their privileges and resources are the chart authors'
    # decisions.
    applies_to_chart_children: bool


RULES: tuple[Rule, ...] = (
    Rule(
        "llmd-model-server-privileges",
        "Model-server pods are not privileged, share no host PID/IPC namespace and add only "
        "the RDMA capabilities (IPC_LOCK, SYS_RAWIO, NET_ADMIN, NET_RAW).",
        model_server_privileges,
        applies_to_chart_children=False,
    ),
    Rule(
        "llmd-epp-hardened",
        "The endpoint picker runs as non-root with a read-only root filesystem and no privilege escalation.",
        epp_hardened,
        applies_to_chart_children=False,
    ),
    Rule(
        "llmd-resource-limits",
        "Every container sets a memory limit and a CPU request.",
        resource_limits,
        applies_to_chart_children=False,
    ),
    Rule(
        "llmd-images-pinned",
        "Every container image is pinned by a version tag or a digest (no 'latest', no untagged image).",
        images_pinned,
        applies_to_chart_children=True,
    ),
    Rule(
        "llmd-no-plain-secrets",
        "No secret in plain env values or command lines: TOKEN/KEY/PASSWORD-style variables use "
        "valueFrom.secretKeyRef, and no value looks like a credential.",
        no_plain_secrets,
        applies_to_chart_children=True,
    ),
)


def check_all(manifest: Mapping[str, Any]) -> dict[str, list[str]]:
    """Run every rule; only rules with violations appear in the result."""
    results = {rule.name: rule.check(manifest) for rule in RULES}
    return {name: violations for name, violations in results.items() if violations}
