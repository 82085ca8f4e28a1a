"""Validation of a component's args against the pydantic model of its inputs.

Each Kubernetes component of the package (``LlmdStack``, ``EndpointPicker``, ``ModelServerPool`` ...)
takes a ``TypedDict`` of args, the shape Pulumi's schema analyzer can describe to other languages, and
validates it against a pydantic model built from the stack-config models: whole sections
(``EppConfig`` for the picker's settings) or single fields reused with :func:`field_of`. So every
default, constraint and description still has exactly one definition, in :mod:`.models`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pulumi_llmd.config.errors import ConfigError, Problem, problems_from_validation_error

ModelT = TypeVar("ModelT", bound=BaseModel)


def field_of(model: type[BaseModel], name: str) -> Any:
    """The definition of ``model.name`` (constraints, default, description) for reuse in a narrower
    model, as ``field: Annotated[<type>, field_of(GatewayConfig, "class_name")]``."""
    info: FieldInfo = model.model_fields[name]
    return copy.copy(info)


def model_args(model: type[ModelT], args: ModelT | Mapping[str, Any], *, component: str) -> ModelT:
    """The args of a Python-only component, which take their pydantic model: an instance as is, or a
    mapping (snake_case or camelCase keys, as the package components take) validated into one. A dict
    passed where the model was expected used to fail with an AttributeError from deep inside a manifest
    builder, after the component had registered itself; now a bad one is a :class:`ConfigError` naming
    each key, before anything is registered."""
    if isinstance(args, model):
        return args
    return validate_args(model, cast(Mapping[str, Any], args), component=component)


def validate_args(model: type[ModelT], args: Mapping[str, Any], *, component: str) -> ModelT:
    """``args`` (snake_case or camelCase keys) as a validated ``model``; every bad key at once, as a
    :class:`ConfigError` naming the component and the camelCase key path."""
    if not isinstance(args, Mapping):
        raise ConfigError(
            [Problem(".", f"must be a mapping of {component} args (got {type(args).__name__})")],
            subject=f"{component} args",
        )
    try:
        return model.model_validate(dict(args))
    except ValidationError as error:
        raise ConfigError(problems_from_validation_error(error, model), subject=f"{component} args") from None
