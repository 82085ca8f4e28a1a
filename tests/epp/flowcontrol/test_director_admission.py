"""The director with flow control on: requests wait for capacity, and every refusal is llm-d's
429 or 503 with its drop reason. The background dispatcher runs for real here; assertions are on
outcomes and order, and the timeouts only guard against a hang."""

from __future__ import annotations

import asyncio
import time

import pytest

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics
from epp.director import SchedulingDirector
from epp.flowcontrol.controller import FlowController
from epp.types import EppError
from tests.epp.flowcontrol.support import Clock
from tests.support.epp import inference_request, spec
from tests.support.epp_configs import HEADER

GUARD = 10.0


def config(
    flow: str = "", detector: str = "{type: concurrency-detector, parameters: {maxConcurrency: 1}}"
) -> str:
    # llm-d's saturation detector is the one flowControl.saturationDetector names (by default the
    # utilization-detector), not whichever detector is listed under plugins.
    settings = f", {flow.strip()[1:-1]}" if flow else ""
    return (
        HEADER
        + f"featureGates: [flowControl]\nplugins: [{{type: queue-scorer}}, {detector}]\n"
        + f"flowControl: {{saturationDetector: {{pluginRef: concurrency-detector}}{settings}}}\n"
    )


def director(
    text: str, pods: int = 1, *, objectives: dict[str, int] | None = None
) -> tuple[SchedulingDirector, Datastore]:
    datastore = Datastore()
    built = SchedulingDirector(datastore, load_config(text), pool_name="pool")
    datastore.replace_endpoints(spec(f"pod-{i}", i + 1) for i in range(pods))
    for endpoint in datastore.endpoints():
        endpoint.metrics = EndpointMetrics(updated_at=time.monotonic())
    datastore.set_objectives(objectives or {})
    return built, datastore


async def pending(task: asyncio.Task[object]) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()


async def test_a_queued_request_goes_when_the_one_in_flight_completes() -> None:
    d, datastore = director(config())
    first_request = inference_request(request_id="first")
    first = await d.handle_request(first_request)
    assert first.endpoints and datastore.endpoints()[0].in_flight == 1
    second = asyncio.create_task(d.handle_request(inference_request(request_id="second")))
    await pending(second)
    assert d.flow_control is not None and d.flow_control.queued == 1
    d.handle_response_complete(first_request, None, failed=False)
    decision = await asyncio.wait_for(second, GUARD)
    assert decision.endpoints == first.endpoints
    assert datastore.endpoints()[0].in_flight == 1 and d.flow_control.queued == 0
    await d.close()


async def test_ttl_expiry_is_429_rejected_ttl_expired() -> None:
    d, _ = director(config("{defaultRequestTTL: 50ms}"))
    await d.handle_request(inference_request())  # fills the one slot
    with pytest.raises(EppError) as caught:
        await asyncio.wait_for(d.handle_request(inference_request()), GUARD)
    assert (caught.value.status, caught.value.reason) == (429, "rejected-ttl-expired")
    await d.close()


async def test_an_empty_pool_answers_503_when_the_wait_runs_out() -> None:
    d, _ = director(config("{defaultRequestTTL: 50ms}"), pods=0)
    with pytest.raises(EppError) as caught:
        await asyncio.wait_for(d.handle_request(inference_request()), GUARD)
    assert (caught.value.status, caught.value.reason) == (503, "rejected-no-endpoints")
    await d.close()


async def test_a_full_sheddable_band_is_429_while_critical_traffic_still_queues() -> None:
    text = config("{defaultNegativePriorityBand: {maxRequests: 1}}")
    d, _ = director(text, objectives={"batch": -1, "chat": 10})
    assert d.flow_control is not None and d.config.flow_control is not None
    # Driven by hand from here, so the test decides when each dispatch happens.
    d.flow_control = FlowController(
        d.config.flow_control, d.datastore.endpoints, clock=Clock(), dispatcher=False
    )
    await d.handle_request(inference_request())  # the only slot
    queued_sheddable = asyncio.create_task(d.handle_request(inference_request(objective="batch")))
    await pending(queued_sheddable)
    with pytest.raises(EppError) as caught:
        await d.handle_request(inference_request(objective="batch"))
    assert (caught.value.status, caught.value.reason) == (429, "rejected-saturated")
    critical = asyncio.create_task(d.handle_request(inference_request(objective="chat")))
    await pending(critical)
    assert d.flow_control.flow_lengths() == {(-1, "default-flow"): 1, (10, "default-flow"): 1}
    # Capacity frees: the critical request goes first, the sheddable one still waits.
    d.datastore.endpoints()[0].in_flight = 0
    assert d.flow_control.dispatch_cycle()
    assert (await asyncio.wait_for(critical, GUARD)).endpoints
    assert not queued_sheddable.done()
    queued_sheddable.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued_sheddable
    assert d.flow_control.queued == 0


async def test_a_cancelled_wait_leaves_no_flight_and_no_queue_entry() -> None:
    d, datastore = director(config())
    await d.handle_request(inference_request(request_id="holder"))
    waiting = asyncio.create_task(d.handle_request(inference_request(request_id="leaver")))
    await pending(waiting)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert d.flow_control is not None and d.flow_control.queued == 0
    assert d.in_flight() == 1 and datastore.endpoints()[0].in_flight == 1
    await d.close()


async def test_shutdown_answers_queued_requests_with_503() -> None:
    d, _ = director(config())
    await d.handle_request(inference_request())
    waiting = asyncio.create_task(d.handle_request(inference_request()))
    await pending(waiting)
    await d.close()
    with pytest.raises(EppError) as caught:
        await asyncio.wait_for(waiting, GUARD)
    assert (caught.value.status, caught.value.reason) == (503, "rejected-shutting-down")


async def test_unknown_models_are_404_before_they_queue() -> None:
    datastore = Datastore()
    d = SchedulingDirector(datastore, load_config(config()), served_models=frozenset({"m"}))
    datastore.replace_endpoints([spec("pod-0", 1)])
    with pytest.raises(EppError) as caught:
        await d.handle_request(inference_request(model="other"))
    assert caught.value.status == 404
    assert d.flow_control is not None and d.flow_control.queued == 0
    await d.close()


async def test_with_the_gate_off_sheddable_requests_are_dropped_at_once_as_before() -> None:
    text = (
        HEADER
        + "plugins: [{type: queue-scorer}, {type: concurrency-detector, parameters: {maxConcurrency: 1}}]\n"
        + "flowControl: {saturationDetector: {pluginRef: concurrency-detector}}\n"
    )
    d, datastore = director(text, objectives={"batch": -1})
    assert d.flow_control is None
    datastore.endpoints()[0].in_flight = 1
    with pytest.raises(EppError) as caught:
        await d.handle_request(inference_request(objective="batch"))
    assert (caught.value.status, caught.value.reason) == (429, "rejected-saturated")
