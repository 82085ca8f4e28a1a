"""Builders shared by the scheduling-core tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from epp.datastore import Endpoint, EndpointMetrics, EndpointSpec
from epp.scheduling.framework import SchedulingRequest
from epp.types import InferenceRequest, ParsedBody

_ADDRESSES: dict[str, str] = {}


def _address_for(name: str) -> str:
    """A distinct address per endpoint name (hash(name) % 250 made two names collide about once in
    250 runs, under Python's per-process hash randomisation)."""
    if name not in _ADDRESSES:
        index = len(_ADDRESSES)
        _ADDRESSES[name] = f"10.0.{index // 250}.{index % 250 + 1}"
    return _ADDRESSES[name]


def endpoint(
    name: str,
    address: str = "",
    *,
    port: int = 8000,
    labels: Mapping[str, str] | None = None,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    in_flight: int = 0,
    pending: int = 0,
    pending_tokens: int = 0,
    fresh: bool = True,
    running_loras: frozenset[str] = frozenset(),
    waiting_loras: frozenset[str] = frozenset(),
    max_loras: int = 0,
) -> Endpoint:
    address = address or _address_for(name)
    ep = Endpoint(EndpointSpec(name, address, port, port, dict(labels or {})))
    ep.metrics = EndpointMetrics(
        waiting=waiting,
        running=running,
        kv_usage=kv,
        running_loras=running_loras,
        waiting_loras=waiting_loras,
        max_loras=max_loras,
        updated_at=time.monotonic() if fresh else 0.0,
    )
    ep.in_flight = in_flight
    ep.pending = pending
    ep.pending_tokens = pending_tokens
    return ep


def spec(name: str, index: int, *, port: int = 8000, labels: Mapping[str, str] | None = None) -> EndpointSpec:
    return EndpointSpec(name, f"10.1.0.{index}", port, port, dict(labels or {}))


def scheduling_request(
    prompt: str = "hello", *, model: str = "m", lora: str | None = None
) -> SchedulingRequest:
    return SchedulingRequest(
        request_id="r",
        target_model=model,
        prompt_text=prompt,
        headers={},
        lora_adapter=lora,
        now=time.monotonic(),
    )


_counter = 0


def inference_request(
    prompt: str = "hello",
    *,
    model: str = "m",
    objective: str | None = None,
    subset: list[str] | None = None,
    request_id: str | None = None,
    lora: str | None = None,
) -> InferenceRequest:
    global _counter
    _counter += 1
    return InferenceRequest(
        request_id=request_id or f"req-{_counter}",
        path="/v1/completions",
        headers={},
        body={"model": model, "prompt": prompt},
        parsed=ParsedBody(
            model=model, prompt_text=prompt, stream=False, api="completions", lora_adapter=lora
        ),
        objective=objective,
        subset=subset,
    )


def mark_fresh(endpoints: object) -> None:
    for ep in endpoints:  # type: ignore[attr-defined]
        ep.metrics = EndpointMetrics(
            waiting=ep.metrics.waiting,
            running=ep.metrics.running,
            kv_usage=ep.metrics.kv_usage,
            updated_at=time.monotonic(),
        )


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``condition`` every 10 ms; fail the test if it is not true ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
