"""Endpoint filters: role filters on ``llm-d.ai/role`` and generic label selectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from epp.datastore import Endpoint
from epp.scheduling.framework import Filter, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.registry import register

ROLE_LABEL = "llm-d.ai/role"


class _RoleFilter(Filter):
    """Keeps endpoints whose role label is in ``roles`` (and unlabelled ones when allowed)."""

    roles: frozenset[str] = frozenset()
    keep_unlabelled = False

    def filter(self, request: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        roles, keep_unlabelled = self.roles, self.keep_unlabelled
        kept = []
        for endpoint in endpoints:
            role = endpoint.labels.get(ROLE_LABEL)
            if (role is None and keep_unlabelled) or role in roles:
                kept.append(endpoint)
        return kept

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router filter/bylabel/roles.go: the role filters' factories ignore parameters.
        params.ignore_all()
        return cls(name)


@register("prefill-filter")
class PrefillFilter(_RoleFilter):
    """Keeps endpoints whose ``llm-d.ai/role`` can prefill (prefill, encode-prefill, prefill-decode, both)."""

    roles = frozenset({"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"})


@register("decode-filter")
class DecodeFilter(_RoleFilter):
    """Keeps endpoints whose ``llm-d.ai/role`` can decode, and unlabelled ones (a plain pool decodes)."""

    # llm-d keeps pods without a role label: a plain (non-P/D) pool serves decode traffic.
    roles = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})
    keep_unlabelled = True


@register("encode-filter")
class EncodeFilter(_RoleFilter):
    """Keeps endpoints whose ``llm-d.ai/role`` can encode (encode, encode-prefill, encode-prefill-decode)."""

    roles = frozenset({"encode", "encode-prefill", "encode-prefill-decode"})


_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class LabelSelector:
    """A Kubernetes LabelSelector (matchLabels AND matchExpressions)."""

    def __init__(self, match_labels: Mapping[str, str], expressions: list[tuple[str, str, frozenset[str]]]):
        self.match_labels = dict(match_labels)
        self.expressions = expressions

    @classmethod
    def parse(cls, params: Params) -> LabelSelector:
        match_labels = params.mapping("matchLabels")
        for key, value in match_labels.items():
            if not isinstance(value, str):
                raise params.error("matchLabels", f"value of {key!r} must be a string, got {value!r}")
        expressions: list[tuple[str, str, frozenset[str]]] = []
        for index, raw in enumerate(params.sequence("matchExpressions")):
            where = f"matchExpressions[{index}]"
            if not isinstance(raw, Mapping):
                raise params.error(where, "must be a mapping with key, operator, values")
            expr_key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
            if not isinstance(expr_key, str) or not expr_key:
                raise params.error(where, "needs a non-empty 'key'")
            if operator not in _OPERATORS:
                raise params.error(
                    where, f"operator must be one of {', '.join(_OPERATORS)}, got {operator!r}"
                )
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise params.error(where, "'values' must be a list of strings")
            if operator in ("In", "NotIn") and not values:
                raise params.error(where, f"operator {operator} needs non-empty 'values'")
            if operator in ("Exists", "DoesNotExist") and values:
                raise params.error(where, f"operator {operator} takes no 'values'")
            expressions.append((expr_key, operator, frozenset(values)))
        if not match_labels and not expressions:
            raise params.error("matchLabels", "or 'matchExpressions' is required")
        return cls(match_labels, expressions)

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for key, operator, values in self.expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True


@register("label-selector-filter", deprecated_aliases=("by-label-selector",))
class LabelSelectorFilter(Filter):
    """Keeps endpoints whose labels match a Kubernetes label selector
    (``matchLabels`` / ``matchExpressions``)."""

    def __init__(self, name: str, selector: LabelSelector) -> None:
        super().__init__(name)
        self.selector = selector

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        return cls(name, LabelSelector.parse(params))

    def filter(self, request: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [endpoint for endpoint in endpoints if self.selector.matches(endpoint.labels)]


@register("by-label")
class ByLabelFilter(Filter):
    """Deprecated llm-d filter: one label, a set of valid values, optionally keeping unlabelled pods."""

    def __init__(self, name: str, label: str, valid_values: frozenset[str], allows_no_label: bool) -> None:
        super().__init__(name)
        self.label, self.valid_values, self.allows_no_label = label, valid_values, allows_no_label

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        label = params.string("label", "")
        if not label:
            raise params.error("label", "is required")
        values: list[Any] = params.sequence("validValues")
        if not all(isinstance(v, str) for v in values):
            raise params.error("validValues", "must be a list of strings")
        allows_no_label = params.boolean("allowsNoLabel", False)
        if not values and not allows_no_label:
            raise params.error("validValues", "must not be empty unless allowsNoLabel is true")
        return cls(name, label, frozenset(values), allows_no_label)

    def filter(self, request: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        kept = []
        for endpoint in endpoints:
            value = endpoint.labels.get(self.label)
            if (value is None and self.allows_no_label) or value in self.valid_values:
                kept.append(endpoint)
        return kept
