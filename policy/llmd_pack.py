"""The pulumi-llmd policy pack: one resource validation policy per rule in :mod:`llmd_rules`.

Only ``kubernetes:*`` resources are inspected; their Pulumi inputs are the manifest fields, so the
rules see the same dict the offline tests feed them. Objects created by third-party Helm charts or
remote YAML (GPU/Network Operator, the gateway control plane, LeaderWorkerSet controller) are
recognised by their parent in the URN and only get the rules that hold for any software (pinned
images, no plain secrets); their privileges and sizing are the chart authors' decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import llmd_rules
from pulumi_policy import (
    Policy,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

PACK_NAME = "pulumi-llmd-guardrails"

# Parents whose children are someone else's manifests.
THIRD_PARTY_PARENT_TYPES = frozenset(
    {
        "kubernetes:helm.sh/v3:Chart",
        "kubernetes:helm.sh/v4:Chart",
        "kubernetes:yaml:ConfigFile",
        "kubernetes:yaml:ConfigGroup",
        "kubernetes:yaml/v2:ConfigFile",
        "kubernetes:yaml/v2:ConfigGroup",
    }
)

Check = Callable[[Mapping[str, Any]], list[str]]

# Per-policy settings (`pulumi preview --policy-pack-config`): schema, and how they shape the check.
_CONFIG: dict[str, tuple[PolicyConfigSchema, Callable[[Mapping[str, Any]], Check]]] = {
    "llmd-model-server-privileges": (
        PolicyConfigSchema(
            {
                "allowedCapabilities": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": sorted(llmd_rules.MODEL_SERVER_CAPABILITIES),
                }
            }
        ),
        lambda config: (
            lambda manifest: llmd_rules.model_server_privileges(
                manifest,
                frozenset(
                    c.upper()
                    for c in config.get("allowedCapabilities", sorted(llmd_rules.MODEL_SERVER_CAPABILITIES))
                ),
            )
        ),
    ),
    "llmd-resource-limits": (
        PolicyConfigSchema(
            {
                "requiredLimits": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": list(llmd_rules.DEFAULT_REQUIRED_LIMITS),
                },
                "requiredRequests": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": list(llmd_rules.DEFAULT_REQUIRED_REQUESTS),
                },
            }
        ),
        lambda config: (
            lambda manifest: llmd_rules.resource_limits(
                manifest,
                config.get("requiredLimits", llmd_rules.DEFAULT_REQUIRED_LIMITS),
                config.get("requiredRequests", llmd_rules.DEFAULT_REQUIRED_REQUESTS),
            )
        ),
    ),
}


def is_third_party(urn: str) -> bool:
    """Whether a resource's URN names a Helm chart or remote-YAML component among its parents."""
    # urn:pulumi:<stack>::<project>::<parent type>$...$<type>::<name>
    parts = urn.split("::")
    if len(parts) < 4:
        return False
    return any(t in THIRD_PARTY_PARENT_TYPES for t in parts[2].split("$")[:-1])


def plain(value: Any) -> Any:
    """Copy the engine's props proxy into plain data, unknown preview values as ``llmd_rules.UNKNOWN``.

    The proxy raises on reading an unknown value, which would abort a whole rule for the resource;
    the rules instead skip just the values they cannot see.
    """
    if isinstance(value, Mapping):
        return {key: _read(value, key) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_read(value, index) for index in range(len(value))]
    return value


def _read(container: Any, key: Any) -> Any:
    try:
        return plain(container[key])
    except UnknownValueError:
        return llmd_rules.UNKNOWN


def manifest_of(args: ResourceValidationArgs) -> dict[str, Any]:
    """The resource inputs as a manifest, with ``kind`` taken from the type token if it is missing."""
    manifest: dict[str, Any] = plain(args.props)
    if not manifest.get("kind"):
        manifest["kind"] = args.resource_type.rsplit(":", 1)[-1]
    return manifest


def _validator(rule: llmd_rules.Rule) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if not args.resource_type.startswith("kubernetes:"):
            return
        if not rule.applies_to_chart_children and is_third_party(args.urn):
            return
        configured = _CONFIG.get(rule.name)
        check = configured[1](args.get_config()) if configured else rule.check
        for message in check(manifest_of(args)):
            report_violation(message, None)

    return validate


def build_policies() -> list[Policy]:
    policies: list[Policy] = []
    for rule in llmd_rules.RULES:
        configured = _CONFIG.get(rule.name)
        policies.append(
            ResourceValidationPolicy(
                name=rule.name,
                description=rule.description,
                validate=_validator(rule),
                config_schema=configured[0] if configured else None,
            )
        )
    return policies
