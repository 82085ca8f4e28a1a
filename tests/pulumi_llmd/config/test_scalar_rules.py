"""The rules every scalar key follows (pulumi_llmd/config/base.py), checked at every key of every
example stack: a value pydantic's lax mode would have taken and the deployment would have failed on
later (an infinite interval, ``replicas: yes``, a count past int32, a blank or NUL-bearing name) is a
ConfigError naming that key, before any resource is touched."""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pulumi_llmd.config import ConfigError, StackConfig, parse_stack_config
from pulumi_llmd.config.base import ConfigModel
from pulumi_llmd.config.errors import format_path
from tests.support.paths import REPO_ROOT

Path = tuple[str | int, ...]


def _stacks() -> dict[str, dict[str, Any]]:
    stacks = {}
    for file in sorted((REPO_ROOT / "stacks").glob("Pulumi.*.yaml")):
        config = yaml.safe_load(file.read_text())["config"]
        stacks[file.stem.removeprefix("Pulumi.")] = {
            key.removeprefix("llmd:"): value
            for key, value in config.items()
            if key.startswith("llmd:") and key != "llmd:hfToken"
        }
    return stacks


STACKS = _stacks()


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of a field's type, Optional/Annotated/Union taken apart."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [alt for arg in typing.get_args(annotation) for alt in _unwrap(arg)]
    return [annotation]


def _scalar_keys(model: type[BaseModel], node: Any, path: Path = ()) -> Iterator[tuple[Path, set[type]]]:
    """Every scalar key below ``node`` (a stack's value for ``model``) whose parent is present, and
    the scalar types it takes; list items of model type are walked too. Only ConfigModels follow
    the rules: NodeTaint checks its own key and value, and an empty value is one it allows."""
    if not issubclass(model, ConfigModel):
        return
    for name, field in model.model_fields.items():
        key = field.alias or name
        alternatives = _unwrap(field.annotation)
        kinds = {alt for alt in alternatives if alt in (int, float, str, bool)}
        if kinds:
            yield (*path, key), kinds
        value = node.get(key) if isinstance(node, dict) else None
        for alt in alternatives:
            if isinstance(alt, type) and issubclass(alt, BaseModel) and isinstance(value, dict):
                yield from _scalar_keys(alt, value, (*path, key))
            elif typing.get_origin(alt) is list and isinstance(value, list):
                (item,) = typing.get_args(alt)
                for index, element in enumerate(value):
                    if isinstance(item, type) and issubclass(item, BaseModel):
                        yield from _scalar_keys(item, element, (*path, key, index))


def _bad_values(kinds: set[type]) -> list[Any]:
    bad: list[Any] = []
    if kinds & {int, float} and bool not in kinds:
        bad.append(True)
    if float in kinds:
        bad += [math.inf, -math.inf, math.nan]
    if int in kinds:
        bad += [2**31, -(2**31) - 1]
    if str in kinds:
        bad += ["", "  ", "a\x00b", "a\x1bb"]
    return bad


def _cases() -> Iterator[Any]:
    seen: set[tuple[str, str]] = set()
    for stack, raw in STACKS.items():
        for path, kinds in _scalar_keys(StackConfig, raw):
            for value in _bad_values(kinds):
                if (format_path(path), repr(value)) not in seen:  # each key once, in the first stack
                    seen.add((format_path(path), repr(value)))
                    yield pytest.param(stack, path, value, id=f"{format_path(path)}={value!r}")


def _set(raw: dict[str, Any], path: Path, value: Any) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@pytest.mark.parametrize(("stack", "path", "value"), list(_cases()))
def test_a_bad_scalar_anywhere_is_refused_naming_its_key(stack: str, path: Path, value: Any) -> None:
    raw = copy.deepcopy(STACKS[stack])
    _set(raw, path, value)
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=True)
    assert format_path(path) in [problem.path for problem in caught.value.problems], caught.value


def test_the_walk_reaches_every_section_and_the_stacks_are_valid() -> None:
    for raw in STACKS.values():
        parse_stack_config(copy.deepcopy(raw), has_hf_token=True)
    keys = {format_path(path) for raw in STACKS.values() for path, _ in _scalar_keys(StackConfig, raw)}
    for key in ("decode.replicas", "epp.refreshMetricsInterval", "gke.project", "models[0].lora.maxLoras"):
        assert key in keys
    assert "eks.nodeGroup.nodeRoleArn" in keys and "onprem.rdmaNetworks[0].ipsPerNode" in keys


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("refreshMetricsInterval", math.inf, "finite number"),
        ("refreshMetricsInterval", 0.0004, ">= 0.001"),  # was rendered as --refresh-metrics-interval=0s
        ("metricsStalenessThreshold", 1e20, "<= 3600"),  # overflowed the upstream EPP's Go duration
        ("replicas", True, "must be a number, not a boolean"),
    ],
)
def test_the_failures_that_reached_the_deployment(key: str, value: Any, message: str) -> None:
    raw = copy.deepcopy(STACKS["kind"])
    raw["epp"] = {**raw.get("epp", {}), key: value}
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=True)
    (problem,) = caught.value.problems
    assert problem.path == f"epp.{key}" and message in problem.message, problem


@pytest.mark.parametrize(
    ("stack", "path", "value", "message"),
    [
        ("onprem", ("onprem", "nodeSelector"), {"gpu": " "}, "label 'gpu' has an invalid value"),
        ("onprem", ("onprem", "nodeSelector"), {"bad key": "x"}, "not a Kubernetes qualified name"),
        ("onprem", ("networkPolicy", "metricsNamespaceLabels"), {"team": "a b"}, "invalid value"),
        ("kind", ("decode", "env"), {"": "x"}, "environment variable name ''"),
        ("kind", ("decode", "env"), {"A=B": "x"}, "without spaces or '='"),
        ("multimodel", ("models", 0, "prefill", "env"), {"MY VAR": "x"}, "without spaces or '='"),
    ],
)
def test_label_and_environment_maps_hold_what_kubernetes_takes(
    stack: str, path: Path, value: dict[str, str], message: str
) -> None:
    """The keys and values of these maps became pod and NetworkPolicy fields the API server refused,
    mid-deployment; the GKE and EKS node labels were already checked."""
    raw = copy.deepcopy(STACKS[stack])
    node: Any = raw
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=True)
    (problem,) = [p for p in caught.value.problems if p.path == format_path(path)]
    assert message in problem.message, problem


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("extraArgs", ["--enforce-eager", ""], "item [1] must not be blank"),
        ("extraArgs", ["--x=a\x00b"], "item [0] must not contain control characters"),
        ("env", {"A": "a\x00"}, "the value of 'A' must not contain control characters"),
    ],
)
def test_strings_inside_lists_and_maps_follow_the_rules(key: str, value: Any, message: str) -> None:
    raw = copy.deepcopy(STACKS["kind"])
    raw["decode"] = {**raw["decode"], key: value}
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=True)
    (problem,) = caught.value.problems
    assert problem.path == f"decode.{key}" and message in problem.message, problem
    raw["decode"][key] = {"A": ""} if key == "env" else ["--enforce-eager"]  # an empty env value is one
    parse_stack_config(raw, has_hf_token=True)
