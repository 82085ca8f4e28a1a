"""Read the ``llmd`` namespace of the Pulumi stack config into a validated :class:`StackConfig`.

Called first thing by the program: if anything is wrong the whole list of problems is raised as a
:class:`ConfigError` before a single resource is registered, so ``pulumi preview`` fails fast with
messages such as ``llmd:decode.replicas must be >= 1 (got 0)``.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel, ValidationError

from pulumi_llmd.config.errors import NAMESPACE, ConfigError, Problem, problems_from_validation_error
from pulumi_llmd.config.models import StackConfig
from pulumi_llmd.config.rules import cross_field_problems

# Secrets never enter StackConfig (it is printed, diffed and documented); they travel as Outputs.
SECRET_KEYS = ("hfToken",)


@dataclass(frozen=True)
class LoadedConfig:
    config: StackConfig
    hf_token: pulumi.Output[str] | None


def load_stack_config() -> LoadedConfig:
    """Validate the stack's ``llmd:*`` keys; raises :class:`ConfigError` naming every bad key."""
    pulumi_config = pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {}
    problems: list[Problem] = []

    for key in sorted(_present_keys()):
        if key in SECRET_KEYS:
            continue
        field = _field_for_key(key)
        if field is None:
            continue  # reported by parse_stack_config as an unknown key
        value = pulumi_config.get(key)
        if value is None:
            continue
        if (shape := _structured_shape(field)) is not None:
            try:
                raw[key] = json.loads(value)
            except json.JSONDecodeError:
                problems.append(Problem(key, f"must be a YAML {shape}, not a plain value (got {value!r})"))
                continue
        else:
            raw[key] = value

    for key in SECRET_KEYS:
        if pulumi_config.get(key) is not None and not runtime_config.is_config_secret(f"{NAMESPACE}:{key}"):
            problems.append(
                Problem(key, f"must be a secret: run `pulumi config set --secret {NAMESPACE}:{key} <value>`")
            )
    config = parse_stack_config(
        raw,
        has_hf_token=pulumi_config.get("hfToken") is not None,
        unknown_keys=[k for k in _present_keys() if k not in SECRET_KEYS and _field_for_key(k) is None],
        earlier_problems=problems,
    )
    # Only a valid config gets this far: the token becomes an Output (marked secret) here.
    return LoadedConfig(config=config, hf_token=pulumi_config.get_secret("hfToken"))


def parse_stack_config(
    raw: dict[str, Any],
    *,
    has_hf_token: bool,
    unknown_keys: typing.Sequence[str] = (),
    earlier_problems: typing.Sequence[Problem] = (),
) -> StackConfig:
    """Validate already-decoded config values (camelCase keys, no namespace prefix)."""
    problems = list(earlier_problems)
    allowed = ", ".join(sorted([*_top_level_keys(), *SECRET_KEYS]))
    problems += [Problem(key, f"is not a known key (allowed: {allowed})") for key in sorted(unknown_keys)]
    try:
        config = StackConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(problems + problems_from_validation_error(error, StackConfig)) from None
    problems += cross_field_problems(config, has_hf_token=has_hf_token)
    if problems:
        raise ConfigError(problems)
    return config


def _present_keys() -> set[str]:
    """Every ``llmd:`` key the engine handed to this program (Pulumi has no public listing API)."""
    names = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{NAMESPACE}:"
    return {name[len(prefix) :] for name in names if name.startswith(prefix)}


def _top_level_keys() -> list[str]:
    return [field.alias or name for name, field in StackConfig.model_fields.items()]


def _field_for_key(key: str) -> Any:
    for name, field in StackConfig.model_fields.items():
        if key == (field.alias or name):
            return field
    return None


def _structured_shape(field: Any) -> str | None:
    """ "mapping" or "list" when the key holds one (Pulumi hands structured values over as JSON text),
    else None (a plain value, passed on as the string it is)."""
    annotation = field.annotation
    candidates = typing.get_args(annotation) or (annotation,)
    if any(isinstance(c, type) and issubclass(c, BaseModel) for c in candidates):
        return "mapping"
    if any(typing.get_origin(c) is list for c in (annotation, *candidates)):
        return "list"
    return None
