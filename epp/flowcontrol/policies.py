"""Flow-control policy plugins, registered under llm-d's type names
(llm-d-router ``pkg/epp/framework/plugins/flowcontrol``): ordering within a flow, fairness between
the flows of a band, and usage limits per band. Configs list them under ``plugins:`` and refer to
them from ``flowControl`` (``orderingPolicyRef``, ``fairnessPolicyRef``, ``usageLimitPolicyPluginRef``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any, Self

from epp.flowcontrol.framework import (
    BandView,
    FairnessPolicy,
    FlowQueue,
    OrderingPolicy,
    QueueItem,
    UsageLimitPolicy,
)
from epp.scheduling.params import Params
from epp.scheduling.registry import register

_FAR_FUTURE = float("inf")
# The SLO header the slo-deadline policy reads, current spelling first (llm-d metadata/consts.go).
SLO_TTFT_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")


class _NoParams:
    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router's factories of these policies never decode parameters (`_ *json.Decoder` in
        # pkg/epp/framework/plugins/flowcontrol/{ordering/fcfs,ordering/edf,ordering/slodeadline,
        # fairness/globalstrict,fairness/roundrobin}): any are accepted there, so they load here
        # too, named in a warning.
        params.ignore_all()
        return cls(name)  # type: ignore[call-arg]


# ---- ordering ---------------------------------------------------------------------------------


@register("fcfs-ordering-policy")
class FcfsOrderingPolicy(_NoParams, OrderingPolicy):
    """First come, first served: requests leave a flow in the order they reached flow control
    (the default ordering)."""

    def key(self, item: QueueItem) -> tuple[float, ...]:
        return (float(item.seq),)


@register("edf-ordering-policy")
class EdfOrderingPolicy(_NoParams, OrderingPolicy):
    """Earliest deadline first: deadline = enqueue time + the request's TTL; requests without a
    TTL go last; equal deadlines keep arrival order."""

    def key(self, item: QueueItem) -> tuple[float, ...]:
        deadline = item.enqueued_at + item.ttl if item.ttl > 0 else _FAR_FUTURE
        return (deadline, float(item.seq))


@register("slo-deadline-ordering-policy")
class SloDeadlineOrderingPolicy(_NoParams, OrderingPolicy):
    """Deadline = arrival + the ``x-llm-d-slo-ttft-ms`` header (or the legacy ``x-slo-ttft-ms``);
    a missing or invalid header means no deadline (after every request that has one); ties keep
    arrival order."""

    def key(self, item: QueueItem) -> tuple[float, ...]:
        deadline = _FAR_FUTURE
        for name in SLO_TTFT_HEADERS:
            raw = item.headers.get(name)
            if raw:
                milliseconds = _header_int64(raw)
                if milliseconds is not None and milliseconds > 0:
                    deadline = item.received_at + milliseconds / 1000.0
                break
        return (deadline, item.received_at, float(item.seq))


# What Go's strconv.ParseInt(s, 10, 64) accepts, as llm-d reads the header: ASCII digits with an
# optional sign, within int64. Python's int() also takes "1_000", non-ASCII digits and numbers of
# any size; one past ~1e308 ms made the deadline's float division raise OverflowError inside the
# flow controller's enqueue, and the client got a 500 for a header value.
_INT64_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
_INT64_MAX = 2**63 - 1


def _header_int64(raw: str) -> int | None:
    text = raw.strip()
    if _INT64_TEXT.fullmatch(text) is None:
        return None
    value = int(text)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


# ---- fairness ---------------------------------------------------------------------------------


@register("global-strict-fairness-policy")
class GlobalStrictFairnessPolicy(_NoParams, FairnessPolicy):
    """No fairness: the band is one logical queue and the flow whose head comes first in the
    ordering policy's order goes next (llm-d's default)."""

    def pick(self, band: BandView) -> FlowQueue | None:
        # The band keeps all its queued items in the ordering policy's order: the first one is the
        # head of the flow that goes next (no walk over the flows).
        first = band.first_queued()
        return band.flows[first.fairness_id] if first is not None else None


class _Cursor:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: str | None = None


@register("round-robin-fairness-policy")
class RoundRobinFairnessPolicy(_NoParams, FairnessPolicy):
    """Flows with queued requests take turns, in fairness-id order, one dispatch each, so a
    flooding flow cannot starve the others of its band."""

    def new_state(self) -> Any:
        return _Cursor()

    def pick(self, band: BandView) -> FlowQueue | None:
        cursor: _Cursor = band.state
        ids, flows = band.flow_ids, band.flows  # ids in order, kept by the band (no sort per pick)
        start = 0 if cursor.last is None else bisect.bisect_right(ids, cursor.last)
        for step in range(len(ids)):  # the first flow after the last one picked that has something queued
            chosen = ids[(start + step) % len(ids)]
            if len(flows[chosen]):
                cursor.last = chosen
                return flows[chosen]
        cursor.last = None
        return None


# ---- usage limits -----------------------------------------------------------------------------


@register("static-usage-limit-policy")
class StaticUsageLimitPolicy(UsageLimitPolicy):
    """One ceiling for every band: ``threshold`` (default 1.0, i.e. no gating below the detector's
    own saturation point; 0.8 keeps 20% headroom)."""

    def __init__(self, name: str, threshold: float) -> None:
        super().__init__(name)
        self.threshold = threshold

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        threshold = params.number("threshold", 1.0, maximum=1.0)
        if threshold <= 0.0:
            raise params.error("threshold", f"must be in (0.0, 1.0], got {threshold}")
        return cls(name, threshold)

    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        return [self.threshold] * len(priorities)


@register("priority-holdback-policy")
class PriorityHoldbackPolicy(UsageLimitPolicy):
    """Lower priorities stop dispatching at lower saturation: ceilings run linearly from
    ``maxCeiling`` (highest priority) to ``minCeiling`` (lowest), by rank or by priority value."""

    def __init__(self, name: str, domain: str, min_ceiling: float, max_ceiling: float) -> None:
        super().__init__(name)
        self.domain = domain
        self.min_ceiling = min_ceiling
        self.max_ceiling = max_ceiling

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        params.string("shape", "linear", choices=("linear",))
        domain = params.string("domain", "rank", choices=("rank", "value"))
        if not params.has("minCeiling"):
            raise params.error(
                "minCeiling", "is required (the ceiling of the lowest priority, in [0.0, 1.0))"
            )
        min_ceiling = params.number("minCeiling", 0.0, minimum=0.0)
        if min_ceiling >= 1.0:
            raise params.error("minCeiling", f"must be in [0.0, 1.0), got {min_ceiling}")
        max_ceiling = params.number("maxCeiling", 1.0, maximum=1.0)
        if max_ceiling <= 0.0:
            raise params.error("maxCeiling", f"must be in (0.0, 1.0], got {max_ceiling}")
        if min_ceiling > max_ceiling:
            raise params.error("minCeiling", f"must not exceed maxCeiling ({max_ceiling}), got {min_ceiling}")
        return cls(name, domain, min_ceiling, max_ceiling)

    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        count = len(priorities)
        low, high = self.min_ceiling, self.max_ceiling
        if count <= 1:
            return [high] * count
        if self.domain == "rank":
            step = (high - low) / (count - 1)
            return [high - index * step for index in range(count)]
        top, bottom = max(priorities), min(priorities)
        if top == bottom:
            return [high] * count
        return [low + (p - bottom) / (top - bottom) * (high - low) for p in priorities]
