"""Node labels and taints shared by the GKE and EKS GPU pools (and the label and environment checks
every section uses).

Config speaks Kubernetes (`effect: NoSchedule`); each cloud API wants its own spelling
(`NO_SCHEDULE` on both GKE and EKS), and model-server pods need the matching tolerations. Keeping
the three views here means a taint added in a stack file is always tolerated by the pools.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]

_CLOUD_EFFECT: dict[str, str] = {
    "NoSchedule": "NO_SCHEDULE",
    "PreferNoSchedule": "PREFER_NO_SCHEDULE",
    "NoExecute": "NO_EXECUTE",
}

# Kubernetes qualified name with optional DNS prefix (the shape label and taint keys must have).
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

# Both clouds put this taint on GPU nodes (GKE always; EKS through the NVIDIA AMI guidance), and the
# NVIDIA device plugin tolerates it, so model-server pods must tolerate it too.
GPU_TOLERATION: dict[str, Any] = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class NodeTaint(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    key: str = Field(description="Taint key (a Kubernetes qualified name).")
    value: str = Field(default="", description="Taint value; empty tolerates by key only.")
    effect: TaintEffect = Field(default="NoSchedule", description="Kubernetes taint effect.")

    @field_validator("key")
    @classmethod
    def _key_is_qualified_name(cls, key: str) -> str:
        if not _QUALIFIED_NAME.match(key):
            raise ValueError(f"taint key '{key}' is not a Kubernetes qualified name")
        return key

    @field_validator("value")
    @classmethod
    def _value_is_label_value(cls, value: str) -> str:
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"taint value '{value}' is not a valid Kubernetes label value")
        return value

    @property
    def cloud_effect(self) -> str:
        return _CLOUD_EFFECT[self.effect]

    def toleration(self) -> dict[str, Any]:
        if self.value:
            return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}
        return {"key": self.key, "operator": "Exists", "effect": self.effect}


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes label syntax, for every label map of the config (node labels and selectors,
    namespace selectors): the API server refuses anything else, after other resources are made."""
    for key, value in labels.items():
        if not _QUALIFIED_NAME.match(key):
            raise ValueError(f"label key '{key}' is not a Kubernetes qualified name")
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"label '{key}' has an invalid value '{value}'")
    return labels


def validate_annotation_keys(annotations: dict[str, str]) -> dict[str, str]:
    """Annotation keys have the label keys' syntax (values are free text)."""
    for key in annotations:
        if not _QUALIFIED_NAME.match(key):
            raise ValueError(f"annotation key '{key}' is not a Kubernetes qualified name")
    return annotations


# An extended resource count: the API server takes only whole numbers for them ("must be an integer").
_WHOLE = re.compile(r"^[0-9]+$")


def validate_extended_resources(resources: dict[str, str]) -> dict[str, str]:
    """Extended resources (``rdma/ib``, ``vpc.amazonaws.com/efa`` ...): a domain-prefixed qualified name
    and a whole count; the API server refuses anything else when the workload is created."""
    for key, value in resources.items():
        if "/" not in key or not _QUALIFIED_NAME.match(key):
            raise ValueError(f"resource name '{key}' is not an extended resource name (<domain>/<name>)")
        if not _WHOLE.match(value):
            raise ValueError(f"resource '{key}' must be a whole count, e.g. \"1\", not {value!r}")
    return resources


# Kubernetes >= 1.32 (RelaxedEnvironmentVariableValidation): any printable ASCII but '='.
_ENV_NAME = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")


def validate_env(env: dict[str, str]) -> dict[str, str]:
    """Container environment names the API server takes."""
    for name in env:
        if not _ENV_NAME.match(name):
            raise ValueError(
                f"environment variable name {name!r} must be printable ASCII without spaces or '='"
            )
    return env


def pool_tolerations(taints: list[NodeTaint]) -> list[dict[str, Any]]:
    """Tolerations a model-server pod needs on the GPU pool: every configured taint plus the GPU one."""
    tolerations = [GPU_TOLERATION]
    tolerations += [taint.toleration() for taint in taints if taint.key != GPU_TOLERATION["key"]]
    return tolerations
