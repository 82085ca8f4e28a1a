"""Builders for the flow-control tests: a settable clock and detector, configs, a controller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import REGISTRY

from epp.datastore import Endpoint
from epp.flowcontrol.config import (
    DEFAULT_BAND_MAX_BYTES,
    DEFAULT_BAND_MAX_REQUESTS,
    BandConfig,
    FlowControlConfig,
)
from epp.flowcontrol.controller import FlowController, FlowRequest
from epp.flowcontrol.framework import FairnessPolicy, OrderingPolicy, UsageLimitPolicy
from epp.flowcontrol.policies import FcfsOrderingPolicy, GlobalStrictFairnessPolicy, StaticUsageLimitPolicy
from epp.scheduling.framework import SaturationDetector
from tests.support.epp import endpoint


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SetSaturation(SaturationDetector):
    """Reports whatever the test sets, the same for every stage."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__("set-saturation")
        self.value = value
        self.seen: list[int] = []

    def pool_saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        self.seen.append(len(endpoints))
        return self.value if endpoints else 1.0

    def is_saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        return self.pool_saturation(endpoints, now) >= 1.0


def band(
    priority: int = 0,
    *,
    max_requests: int = DEFAULT_BAND_MAX_REQUESTS,
    max_bytes: int = DEFAULT_BAND_MAX_BYTES,
    fairness: FairnessPolicy | None = None,
    ordering: OrderingPolicy | None = None,
) -> BandConfig:
    return BandConfig(
        priority,
        max_requests,
        max_bytes,
        fairness or GlobalStrictFairnessPolicy("global-strict-fairness-policy"),
        ordering or FcfsOrderingPolicy("fcfs-ordering-policy"),
    )


def flow_config(
    detector: SaturationDetector,
    *,
    bands: Sequence[BandConfig] = (),
    default_band: BandConfig | None = None,
    negative_band: BandConfig | None = None,
    ttl: float = 60.0,
    no_endpoint_ttl: float | None = None,
    usage_limit: UsageLimitPolicy | None = None,
    max_requests: int = 0,
    max_bytes: int = 0,
) -> FlowControlConfig:
    template = default_band or band()
    by_priority = {b.priority: b for b in bands}
    by_priority.setdefault(0, template.for_priority(0))
    return FlowControlConfig(
        detector=detector,
        usage_limit=usage_limit or StaticUsageLimitPolicy("static-usage-limit-policy", 1.0),
        default_request_ttl=ttl,
        no_endpoint_request_ttl=ttl if no_endpoint_ttl is None else no_endpoint_ttl,
        max_requests=max_requests,
        max_bytes=max_bytes,
        bands=by_priority,
        default_band=template,
        default_negative_band=negative_band,
    )


class Pool:
    """A settable endpoint set for the controller."""

    def __init__(self, size: int = 2, labels: Sequence[Mapping[str, str]] | None = None) -> None:
        self.endpoints: list[Endpoint] = [
            endpoint(f"pod-{i}", f"10.9.0.{i + 1}", labels=(labels[i] if labels else None))
            for i in range(size)
        ]

    def __call__(self) -> tuple[Endpoint, ...]:
        return tuple(self.endpoints)


def controller(
    config: FlowControlConfig,
    pool: Pool | None = None,
    clock: Clock | None = None,
    pool_name: str = "test-pool",
) -> FlowController:
    return FlowController(
        config, pool or Pool(), pool_name=pool_name, clock=clock or Clock(), dispatcher=False
    )


def request(
    request_id: str,
    *,
    flow: str = "default-flow",
    priority: int = 0,
    size: int = 100,
    headers: Mapping[str, str] | None = None,
) -> FlowRequest:
    return FlowRequest(
        request_id,
        flow,
        priority,
        byte_size=size,
        headers=dict(headers or {}),
        model_name="m",
        target_model_name="m",
    )


def sample(name: str, labels: Mapping[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, dict(labels))
    return 0.0 if value is None else value
