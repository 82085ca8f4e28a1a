"""The base of every stack-configuration model: the key conventions of ``Pulumi.<stack>.yaml``.

Keys are camelCase in the stack file and snake_case in Python (both accepted), unknown keys are
rejected so a typo fails loudly instead of falling back to a default, and a loaded config is
immutable. The platform sections (``gke.py``, ``eks.py``) and the stack model (``models.py``) share
it so that one stack file follows one set of rules.

Four more rules hold for every scalar field, because pydantic's lax mode lets through values that
only fail later, mid-deployment, once resources are being touched:

* no ``.inf``/``.nan`` for a number: ``refreshMetricsInterval: .inf`` passed ``gt=0`` and crashed
  the program while it rendered the EPP's arguments;
* no boolean for a number: ``replicas: yes`` was 1;
* integers fit 32 bits (Kubernetes' replicas and ports, GKE's and EKS's sizes are int32):
  ``replicas: 1e20`` was accepted and refused by the API server;
* a string field (or list item) is not blank and no string holds control characters:
  ``gke.project: ""`` or ``eks.nodeGroup.nodeRoleArn: " "`` reached the cloud APIs, a NUL in
  ``model.name`` or ``extraArgs`` the container's arguments. Leaving the key out is how to get the
  default.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class ConfigModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # Before: once pydantic has made True a 1 the boolean is gone.
        if isinstance(value, bool) and info.field_name is not None:
            kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _usable_scalars(cls, value: Any) -> Any:
        # After: a field's own constraints (a pattern, a length, an Annotated check such as the
        # image reference) speak first, with the more specific message. A subclass's
        # field_validator runs after this one, so for a blank item it is this message that is seen.
        if type(value) is int and not INT32_MIN <= value <= INT32_MAX:
            raise ValueError(f"must fit a 32-bit integer ({INT32_MIN} to {INT32_MAX})")
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must not be blank (leave the key out to get its default)")
            if _CONTROL.search(value):
                raise ValueError("must not contain control characters")
        elif isinstance(value, list | tuple):  # extraArgs: an item "" or with a NUL broke the pods
            for index, item in enumerate(value):
                if isinstance(item, str) and not item.strip():
                    raise ValueError(f"item [{index}] must not be blank")
                if isinstance(item, str) and _CONTROL.search(item):
                    raise ValueError(f"item [{index}] must not contain control characters")
        elif isinstance(value, dict):  # env: an empty value is one, a NUL is not (no environ holds it)
            for key, item in value.items():
                if isinstance(item, str) and _CONTROL.search(item):
                    raise ValueError(f"the value of {key!r} must not contain control characters")
        return value


# C0 controls and DEL, but not the whitespace of multi-line values (epp.config is YAML text).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field takes directly (not inside a list or dict): int, float, str, bool."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        for arg in typing.get_args(annotation):
            kinds |= _scalar_kinds(arg)
        return kinds
    if annotation in (int, float, str, bool):
        return {annotation}
    return set()
