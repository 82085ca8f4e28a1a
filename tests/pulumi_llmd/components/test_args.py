"""The TypedDict args (what Pulumi's schema analyzer sees) and the pydantic models (what validates and
holds every default) describe the same keys, with the same types and the same required keys."""

# No `from __future__ import annotations`: the TypedDicts below must see Required[...] as objects.
import enum
import types
import typing
from typing import Any, NotRequired, Required, TypedDict

import pytest
from pydantic import BaseModel

from pulumi_llmd.components import args as component_args
from pulumi_llmd.components import inputs
from pulumi_llmd.config.models import LlmdStackConfig, StackConfig
from render import component_args as generator

# Keys a model cannot hold (secret Outputs), by TypedDict.
EXTRA_KEYS = {"LlmdStackArgs": {"hf_token"}}

PAIRS: list[tuple[type, type[BaseModel]]] = [
    (component_args.LlmdStackArgs, inputs.LlmdStackInputs),
    (component_args.EndpointPickerArgs, inputs.EndpointPickerInputs),
    (component_args.ModelServerPoolArgs, inputs.ModelServerPoolInputs),
    (component_args.InferenceGatewayArgs, inputs.InferenceGatewayInputs),
    (component_args.GatewayControlPlaneArgs, inputs.GatewayControlPlaneInputs),
    (component_args.ClusterCrdsArgs, inputs.ClusterCrdsInputs),
]


def drift(typed: type, model: type[BaseModel], path: str = "") -> list[str]:
    """Every difference between a TypedDict tree and a pydantic model tree: keys, types, required."""
    hints = dict(typed.__annotations__)  # objects, not strings: the args modules skip future annotations
    fields = model.model_fields
    extras = EXTRA_KEYS.get(typed.__name__, set())
    found = [f"{path}{key}: not in {model.__name__}" for key in sorted(set(hints) - set(fields) - extras)]
    found += [f"{path}{key}: missing from {typed.__name__}" for key in sorted(set(fields) - set(hints))]
    for key in sorted(set(hints) & set(fields)):
        info = fields[key]
        required = key in typed.__required_keys__  # type: ignore[attr-defined]
        if required != info.is_required():
            found.append(f"{path}{key}: required is {required} here, {info.is_required()} in the model")
        found += _type_drift(_unwrap_typed(hints[key]), info.annotation, f"{path}{key}")
    return found


def _unwrap_typed(hint: Any) -> Any:
    if typing.get_origin(hint) in (Required, NotRequired):
        return typing.get_args(hint)[0]
    return hint


def _unwrap_model(annotation: Any) -> Any:
    """The schema-relevant type of a model annotation: constraints, None and literals aside."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _unwrap_model(args[0])
    if origin in (typing.Union, types.UnionType):
        (present,) = [a for a in args if a is not type(None)]
        return _unwrap_model(present)
    if origin is typing.Literal and all(isinstance(a, str) for a in args):
        return str
    return annotation


def _type_drift(hint: Any, annotation: Any, path: str) -> list[str]:
    annotation = _unwrap_model(annotation)
    hint_origin, hint_args = typing.get_origin(hint), typing.get_args(hint)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not typing.is_typeddict(hint):
            return [f"{path}: {hint!r} here, the model {annotation.__name__} there"]
        return drift(hint, annotation, f"{path}.")
    if origin in (list, tuple):
        if hint_origin is not list:
            return [f"{path}: {hint!r} here, a sequence there"]
        return _type_drift(hint_args[0], args[0], f"{path}[]")
    if origin is dict:
        if hint_origin is not dict or hint_args[0] is not str:
            return [f"{path}: {hint!r} here, a string-keyed map there"]
        return _type_drift(hint_args[1], args[1], f"{path}{{}}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [] if hint is annotation else [f"{path}: {hint!r} here, the enum {annotation.__name__} there"]
    return [] if hint == annotation else [f"{path}: {hint!r} here, {annotation!r} there"]


@pytest.mark.parametrize(("typed", "model"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_typed_dict_args_mirror_the_pydantic_inputs(typed: type, model: type[BaseModel]) -> None:
    assert drift(typed, model) == []


def test_llmd_stack_args_are_the_stack_config_keys_without_the_platform() -> None:
    platform_keys = set(StackConfig.model_fields) - set(LlmdStackConfig.model_fields)
    assert platform_keys == {"platform", "onprem", "kind", "gke", "eks", "mirrors"}
    keys = set(component_args.LlmdStackArgs.__annotations__)
    assert keys == set(LlmdStackConfig.model_fields) | {"pod_networking", "hf_token"}
    # Same shapes as the stack file: every section is the stack config's own model.
    for key in LlmdStackConfig.model_fields:
        assert inputs.LlmdStackInputs.model_fields[key].annotation == StackConfig.model_fields[key].annotation


def test_the_drift_check_catches_a_missing_key_a_wrong_type_and_required_ness() -> None:
    class Section(BaseModel):
        size: int
        name: str = "x"

    class Drifted(TypedDict, total=False):
        size: str
        label: str

    class Aligned(TypedDict, total=False):
        size: Required[int]
        name: str

    assert drift(Aligned, Section) == []
    assert drift(Drifted, Section) == [
        "label: not in Section",
        "name: missing from Drifted",
        "size: required is False here, True in the model",
        "size: <class 'str'> here, <class 'int'> there",
    ]


def test_generated_module_is_up_to_date() -> None:
    """`python -m render.component_args --write` after changing a model (or its description)."""
    assert generator.TARGET.read_text() == generator.render_module()


def test_a_union_the_schema_cannot_describe_is_refused() -> None:
    class Odd(BaseModel):
        value: int | str

    with pytest.raises(TypeError, match=r"unions other than `X \| None`"):
        generator._typed_dict(generator._Module(), Odd, "OddSettings", "An odd model.")
