"""The metric names a PromQL expression reads, and every expression a stack's monitoring objects hold.

The names are taken from the expressions themselves (strings, label matchers, groupings, durations
and numbers stripped; functions, keywords and recording-rule outputs told apart), never from a list
kept by hand, so a metric renamed on one side cannot hide.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count_over_time", "delta", "deriv", "exp", "floor", "histogram_quantile", "idelta",
    "increase", "irate", "label_replace", "ln", "log2", "max_over_time", "min_over_time", "predict_linear",
    "rate", "resets", "round", "scalar", "sort", "sort_desc", "sqrt", "sum_over_time", "time", "timestamp",
    "vector", "last_over_time", "quantile_over_time", "stddev_over_time",
}  # fmt: skip
AGGREGATIONS = {
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "group",
}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b")


def metric_names(expr: str) -> set[str]:
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if name in KEYWORDS or name in AGGREGATIONS or (name in FUNCTIONS and rest.startswith("(")):
            continue
        names.add(name)
    return names


@dataclass(frozen=True)
class Expression:
    where: str  # e.g. "PrometheusRule t-rules: alert LlmdEppDown"
    expr: str
    kind: str  # record | alert | dashboard | keda


def expressions(manifests: Iterable[dict[str, Any]]) -> list[Expression]:
    """Every PromQL expression in rendered PrometheusRules, dashboard ConfigMaps and ScaledObjects."""
    found = []
    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "PrometheusRule":
            for group in manifest["spec"]["groups"]:
                for rule in group["rules"]:
                    label = f"record {rule['record']}" if "record" in rule else f"alert {rule['alert']}"
                    found.append(
                        Expression(
                            f"{kind} {name}: {label}", rule["expr"], "record" if "record" in rule else "alert"
                        )
                    )
        elif kind == "ConfigMap" and "grafana_dashboard" in manifest["metadata"].get("labels", {}):
            for text in manifest["data"].values():
                for panel in json.loads(text)["panels"]:
                    for target in panel["targets"]:
                        found.append(
                            Expression(f"dashboard {name}: {panel['title']}", target["expr"], "dashboard")
                        )
        elif kind == "ScaledObject":
            for trigger in manifest["spec"]["triggers"]:
                found.append(
                    Expression(f"{kind} {name}: {trigger['name']}", trigger["metadata"]["query"], "keda")
                )
    return found


def recorded(manifests: Iterable[dict[str, Any]]) -> set[str]:
    return {
        rule["record"]
        for manifest in manifests
        if manifest["kind"] == "PrometheusRule"
        for group in manifest["spec"]["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "gauge": ("",),
    "untyped": ("",),
}


def exposed_names(metrics_text: str) -> set[str]:
    """Sample names a /metrics page serves (``foo_bucket``, ``foo_total`` ... as exposed), including
    those of families it declares (``# TYPE``) without a sample yet: a labelled counter such as the
    EPP's scrape errors has no series before its first increment."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in _SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            match = _NAME.match(line)
            if match:
                names.add(match.group(0))
    return names
