"""Private and air-gapped clusters: where images, Helm charts and remote YAML come from (`llmd:mirrors`).

One place in the stack config, applied to everything the stack deploys by a Pulumi stack transform
(:mod:`pulumi_llmd.mirrors`): the project's own objects, the objects Helm charts and remote YAML
expand into, and the charts and YAML files themselves. Each rule is a prefix rewrite: the longest
matching prefix wins, and a prefix matches only whole path components (``ghcr.io/llm-d`` does not
match ``ghcr.io/llm-dx``).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from pulumi_llmd.config.base import ConfigModel
from pulumi_llmd.config.images import NAME

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_OCI = re.compile(r"^oci://[^\s/]+(/\S*)?$")


def _registry_prefix(value: str, what: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a registry prefix: expected host[:port][/lowercase/path], "
            "without a tag or digest"
        )
    return value


def _chart_source(value: str, what: str) -> str:
    if not (_URL.match(value) or _OCI.match(value)):
        raise ValueError(
            f"{what} {value!r} must be a chart repository URL (https://...) or an OCI prefix (oci://...)"
        )
    return value.rstrip("/")


def _url_prefix(value: str, what: str) -> str:
    if not _URL.match(value):
        raise ValueError(f"{what} {value!r} must be an http(s):// URL prefix")
    return value


class MirrorsConfig(ConfigModel):
    """Registries, chart repositories and URLs to use instead of the public ones."""

    images: dict[str, str] = Field(
        default_factory=dict,
        description="Image registry prefix -> mirror prefix, e.g. "
        "`docker.io: registry.example.com/dockerhub` or "
        "`ghcr.io/pulumi-llmd: registry.example.com/llmd`. Short names count as docker.io "
        "(`vllm/vllm-openai` is `docker.io/vllm/vllm-openai`). Applied to every container image and "
        "to the NicClusterPolicy's component repositories.",
    )
    charts: dict[str, str] = Field(
        default_factory=dict,
        description="Helm chart source prefix -> mirror: a repository URL "
        "(`https://helm.ngc.nvidia.com/nvidia`) or an OCI prefix "
        "(`oci://cr.agentgateway.dev/charts`), mapped to a repository URL or an OCI prefix "
        "of yours.",
    )
    urls: dict[str, str] = Field(
        default_factory=dict,
        description="Remote YAML URL prefix -> mirror prefix, e.g. "
        "`https://github.com/: https://artifacts.example.com/github/` (the CRD and LeaderWorkerSet release "
        "assets, GKE's gIB installer).",
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets (`kubernetes.io/dockerconfigjson`) every pod the stack deploys pulls with. "
        "Create each in every namespace that pulls from the mirror: the stack's, and the operators' or "
        "gateway's when they pull from it too.",
    )

    @field_validator("images")
    @classmethod
    def _images(cls, rules: dict[str, str]) -> dict[str, str]:
        return {
            _registry_prefix(source, "source"): _registry_prefix(mirror, "mirror")
            for source, mirror in rules.items()
        }

    @field_validator("charts")
    @classmethod
    def _charts(cls, rules: dict[str, str]) -> dict[str, str]:
        return {
            _chart_source(source, "source"): _chart_source(mirror, "mirror")
            for source, mirror in rules.items()
        }

    @field_validator("urls")
    @classmethod
    def _urls(cls, rules: dict[str, str]) -> dict[str, str]:
        return {
            _url_prefix(source, "source"): _url_prefix(mirror, "mirror") for source, mirror in rules.items()
        }

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if len(name) > 253 or not all(_DNS_LABEL.match(part) for part in name.split(".")):
                raise ValueError(f"{name!r} is not a Secret name (a DNS subdomain)")
        if len(set(names)) != len(names):
            raise ValueError("names a Secret twice")
        return names

    @property
    def active(self) -> bool:
        return bool(self.images or self.charts or self.urls or self.image_pull_secrets)
