"""One readable error for everything wrong with a stack's configuration.

Pydantic reports problems as (location, type, context) tuples. Operators read
``llmd:decode.replicas must be >= 1 (got 0)``, so this module translates each tuple into a sentence
that names the full key path, the problem and, where the set is finite, the allowed values.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

NAMESPACE = "llmd"


@dataclass(frozen=True)
class Problem:
    """One bad key: ``path`` is the camelCase key path without the namespace (``decode.replicas``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{NAMESPACE}:{self.path} {self.message}"


class KeyProblem(ValueError):
    """Raised by a model validator about one key of the model (or of a section below it), not the
    model as a whole: a cross-field rule such as "zone must be in region". Pydantic locates a model
    validator's error at the model itself (``llmd:gke``), so without this the operator is told the
    section and must guess the key; :func:`problems_from_validation_error` appends ``key`` (a
    camelCase path relative to the model, e.g. ``nodePool.nodeLocations``) to the location, giving
    ``llmd:gke.nodePool.nodeLocations``. ``message`` must state the offending value itself: the
    model's whole input is not repeated after it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def refuse_repeats(values: Iterable[Hashable], key: str, why: str) -> None:
    """Raise a :class:`KeyProblem` at the first value equal to an earlier one. ``key`` is the list
    entry's path with ``{}`` for its index (``"objectives[{}].name"``); the message names the earlier
    entry and ``why`` one is enough (``'x' is also objectives[0].name: ...``)."""
    seen: dict[Hashable, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            raise KeyProblem(key.format(index), f"{value!r} is also {key.format(seen[value])}: {why}")
        seen[value] = index


class ConfigError(ValueError):
    """The stack configuration (or a component's args) is invalid; raised before any resource is
    registered. ``subject`` names what was checked: the stack's ``llmd:`` keys by default, or e.g.
    ``LlmdStack args``, whose keys are then printed without the namespace."""

    def __init__(self, problems: Sequence[Problem], *, subject: str | None = None) -> None:
        self.problems = list(problems)
        self.subject = subject
        if subject is None:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
        else:
            lines = "\n".join(f"  - {problem.path} {problem.message}" for problem in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        what = subject or "stack configuration"
        super().__init__(f"invalid {what} ({len(self.problems)} {noun}):\n{lines}")


def format_path(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def problems_from_validation_error(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    problems = []
    for detail in error.errors():
        path = format_path(_camel_loc(root, detail["loc"]))
        raised = (detail.get("ctx") or {}).get("error")
        if isinstance(raised, KeyProblem):
            problems.append(Problem(f"{path}.{raised.key}" if path else raised.key, str(raised)))
        else:
            problems.append(Problem(path, _describe(detail, root)))
    return problems


def _camel_loc(root: type[BaseModel], loc: Sequence[int | str]) -> list[int | str]:
    """The error location with every field as its camelCase key, whichever spelling the input used
    (Python callers may pass snake_case names), so a problem always names the documented key."""
    model: type[BaseModel] | None = root
    parts: list[int | str] = []
    for part in loc:
        field = None
        if model is not None and isinstance(part, str):
            field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            parts.append(part)
            if isinstance(part, str):
                model = None  # a dict key (or a key the model rejected): nothing below is a field
            continue
        parts.append(field.alias or part)
        model = _model_in(field.annotation)
    return parts


def _describe(detail: ErrorDetails, root: type[BaseModel]) -> str:
    kind = detail["type"]
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    got = f"(got {_show(detail['input'])})"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, detail["loc"][:-1])
        listing = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"is not a known key{listing}"
    if kind == "missing":
        return "is required"
    bounds = {
        "greater_than_equal": ">= {ge}",
        "greater_than": "> {gt}",
        "less_than_equal": "<= {le}",
        "less_than": "< {lt}",
    }
    if kind in bounds:
        return f"must be {bounds[kind].format(**ctx)} {got}"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '?')} {got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']} {got}"
    if kind == "string_too_short":
        return f"must have at least {ctx['min_length']} character(s) {got}"
    if kind == "string_too_long":
        return f"must have at most {ctx['max_length']} characters {got}"
    if kind == "value_error":
        return f"{ctx.get('error', detail['msg'])} {got}"
    return f"{detail['msg'][:1].lower()}{detail['msg'][1:]} {got}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed_keys(root: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The camelCase keys the model at ``loc`` accepts (walks nested models, lists and dicts)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue  # list index: the element model was already resolved from the field type
        field = next(
            (f for name, f in model.model_fields.items() if part in (name, f.alias)),
            None,
        )
        model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return []
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
