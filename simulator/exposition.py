"""A small Prometheus text-format (0.0.4) registry whose scrapes cost next to nothing.

The EPP scrapes every simulated pod 20 times a second, and with prometheus_client's generic
``generate_latest`` each scrape cost the simulator ~2 ms of CPU (collecting ~190 samples through
``Metric``/``Sample`` objects). On a laptop running eight simulated pods that is CPU taken from
the pods being measured, which real vLLM would pay on its own host, not next to the router.

Here every sample line's name-and-labels prefix is built once, values live in plain floats, and
each family keeps its rendered text until one of its values changes, so a scrape re-renders only
the families touched since the previous one. The output is the text ``generate_latest`` writes
for the same state (same HELP/TYPE lines, label order, ``_created`` gauges, number formatting);
``tests/simulator/test_exposition.py`` holds the two side by side.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Collection, Sequence

from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample_prefix(name: str, labels: dict[str, str]) -> str:
    """``name{a="x",b="y"} `` with labels sorted by name, as the Prometheus text writer orders them."""
    if not labels:
        return f"{name} "
    pairs = ",".join(f'{key}="{_escape_label_value(value)}"' for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}} "


class _Family:
    """One metric family: fixed label names, children per label values, cached text."""

    kind = ""

    def __init__(self, name: str, documentation: str, label_names: Sequence[str]) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in label_names:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name {label!r}")
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(label_names)
        self._children: dict[tuple[str, ...], _Child] = {}
        self._text: str | None = None

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {sorted(self.label_names)}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def _header(self, name: str, kind: str) -> str:
        return f"# HELP {name} {_escape_help(self.documentation)}\n# TYPE {name} {kind}\n"

    def changed(self) -> None:
        self._text = None

    def render(self) -> str:
        if self._text is None:
            self._text = self._build()
        return self._text

    def _build(self) -> str:
        raise NotImplementedError


class _Child:
    __slots__ = ("family",)

    def __init__(self, family: _Family) -> None:
        self.family = family


class Gauge(_Child):
    __slots__ = ("prefix", "value")

    def __init__(self, family: _Family, labels: dict[str, str]) -> None:
        super().__init__(family)
        self.prefix = _sample_prefix(family.name, labels)
        self.value = 0.0

    def set(self, value: float) -> None:
        value = float(value)
        if value != self.value:
            self.value = value
            self.family.changed()


class Counter(_Child):
    __slots__ = ("created_line", "prefix", "value")

    def __init__(self, family: _Family, labels: dict[str, str]) -> None:
        super().__init__(family)
        self.prefix = _sample_prefix(f"{family.name}_total", labels)
        self.created_line = (
            _sample_prefix(f"{family.name}_created", labels) + floatToGoString(time.time()) + "\n"
        )
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters only go up: cannot increment {self.family.name} by {amount}")
        if amount:
            self.value += amount
            self.family.changed()


class Histogram(_Child):
    __slots__ = ("bounds", "bucket_prefixes", "count_prefix", "counts", "created_line", "sum", "sum_prefix")

    def __init__(self, family: HistogramFamily, labels: dict[str, str]) -> None:
        super().__init__(family)
        self.bounds = family.bounds
        self.bucket_prefixes = [
            _sample_prefix(f"{family.name}_bucket", {**labels, "le": floatToGoString(bound)})
            for bound in (*family.bounds, math.inf)
        ]
        self.count_prefix = _sample_prefix(f"{family.name}_count", labels)
        self.sum_prefix = _sample_prefix(f"{family.name}_sum", labels)
        self.created_line = (
            _sample_prefix(f"{family.name}_created", labels) + floatToGoString(time.time()) + "\n"
        )
        # Per-bucket (not cumulative) counts; the last one is +Inf's.
        self.counts = [0] * (len(family.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            raise ValueError(f"{self.family.name}: cannot observe NaN")
        # A value equal to a bound belongs to that bucket (le = "less than or equal").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.family.changed()


class GaugeFamily(_Family):
    kind = "gauge"

    def labels(self, **labels: str) -> Gauge:
        key = self._key(labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = Gauge(self, labels)
            self.changed()
        assert isinstance(child, Gauge)
        return child

    def _build(self) -> str:
        lines = [self._header(self.name, "gauge")]
        for child in self._children.values():
            assert isinstance(child, Gauge)
            lines.append(f"{child.prefix}{floatToGoString(child.value)}\n")
        return "".join(lines)


class CounterFamily(_Family):
    kind = "counter"

    def labels(self, **labels: str) -> Counter:
        key = self._key(labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = Counter(self, labels)
            self.changed()
        assert isinstance(child, Counter)
        return child

    def _build(self) -> str:
        children = [child for child in self._children.values() if isinstance(child, Counter)]
        lines = [self._header(f"{self.name}_total", "counter")]
        lines.extend(f"{child.prefix}{floatToGoString(child.value)}\n" for child in children)
        if children:
            lines.append(self._header(f"{self.name}_created", "gauge"))
            lines.extend(child.created_line for child in children)
        return "".join(lines)


class HistogramFamily(_Family):
    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, label_names: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, documentation, label_names)
        bounds = [float(bound) for bound in buckets if bound != math.inf]
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing, got {list(buckets)}")
        if "le" in self.label_names:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.bounds = bounds

    def labels(self, **labels: str) -> Histogram:
        key = self._key(labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = Histogram(self, labels)
            self.changed()
        assert isinstance(child, Histogram)
        return child

    def _build(self) -> str:
        children = [child for child in self._children.values() if isinstance(child, Histogram)]
        lines = [self._header(self.name, "histogram")]
        for child in children:
            cumulative = 0
            for prefix, count in zip(child.bucket_prefixes, child.counts, strict=True):
                cumulative += count
                lines.append(f"{prefix}{floatToGoString(cumulative)}\n")
            lines.append(f"{child.count_prefix}{floatToGoString(cumulative)}\n")
            lines.append(f"{child.sum_prefix}{floatToGoString(child.sum)}\n")
        if children:
            lines.append(self._header(f"{self.name}_created", "gauge"))
            lines.extend(child.created_line for child in children)
        return "".join(lines)


# Sample names a family answers to in a name[] filter: the gauge's own, a counter's and a histogram's.
_SAMPLE_SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum")


class Registry:
    """Families in registration order; ``render`` joins their (mostly cached) text."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _add(self, family: _Family) -> None:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is registered twice")
        self._families[family.name] = family

    def gauge(self, name: str, documentation: str, label_names: Sequence[str]) -> GaugeFamily:
        family = GaugeFamily(name, documentation, label_names)
        self._add(family)
        return family

    def counter(self, name: str, documentation: str, label_names: Sequence[str]) -> CounterFamily:
        family = CounterFamily(name, documentation, label_names)
        self._add(family)
        return family

    def histogram(
        self, name: str, documentation: str, label_names: Sequence[str], buckets: Sequence[float]
    ) -> HistogramFamily:
        family = HistogramFamily(name, documentation, label_names, buckets)
        self._add(family)
        return family

    def render(self, names: Collection[str] | None = None) -> bytes:
        """The page; with ``names`` (``?name[]=`` on vLLM's ``/metrics/``, prometheus_client's
        restricted registry) only the families one of whose sample names is listed. (Whole
        families: prometheus_client would also drop a listed histogram's unlisted samples.)"""
        if names is None:
            return "".join(family.render() for family in self._families.values()).encode()
        wanted = set(names)
        return "".join(
            family.render()
            for name, family in self._families.items()
            if any(name + suffix in wanted for suffix in _SAMPLE_SUFFIXES)
        ).encode()
