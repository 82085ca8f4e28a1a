"""The flow controller on an injected clock, driven by hand (no background task): queues, dispatch
order, TTL, capacity, cancellation, shutdown and its metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from epp.datastore import Endpoint
from epp.flowcontrol.controller import FlowControlRejected, Outcome
from epp.flowcontrol.framework import ItemState
from epp.flowcontrol.policies import (
    EdfOrderingPolicy,
    PriorityHoldbackPolicy,
    RoundRobinFairnessPolicy,
    SloDeadlineOrderingPolicy,
)
from tests.epp.flowcontrol.support import (
    Clock,
    Pool,
    SetSaturation,
    band,
    controller,
    flow_config,
    request,
    sample,
)

pytestmark = pytest.mark.asyncio


async def queued_task(fc_admit: asyncio.Task[None]) -> None:
    """Let a freshly created admit task run up to its first wait."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not fc_admit.done()


def dispatch_all(fc: object, limit: int = 100) -> int:
    count = 0
    while count < limit and fc.dispatch_cycle():  # type: ignore[attr-defined]
        count += 1
    return count


async def test_an_idle_pool_dispatches_at_once_without_queueing() -> None:
    fc = controller(flow_config(SetSaturation(0.2)), pool_name="idle-pool")
    before = sample(
        "llm_d_epp_flow_control_requests_total",
        {"outcome": "Dispatched", "priority": "0", "inference_pool": "idle-pool"},
    )
    await asyncio.wait_for(fc.admit(request("r1")), timeout=5)
    assert fc.queued == 0 and fc.queued_bytes == 0
    after = sample(
        "llm_d_epp_flow_control_requests_total",
        {"outcome": "Dispatched", "priority": "0", "inference_pool": "idle-pool"},
    )
    assert after == before + 1


async def test_a_saturated_pool_holds_requests_until_the_gate_opens() -> None:
    detector = SetSaturation(1.0)
    fc = controller(flow_config(detector))
    waiting = [asyncio.create_task(fc.admit(request(f"r{i}"))) for i in range(3)]
    for task in waiting:
        await queued_task(task)
    assert fc.queued == 3 and fc.queued_bytes == 300
    assert not fc.dispatch_cycle()  # still saturated: nothing moves
    detector.value = 0.5
    assert dispatch_all(fc) == 3
    await asyncio.gather(*waiting)
    assert fc.queued == 0


async def test_saturation_at_exactly_the_ceiling_blocks() -> None:
    detector = SetSaturation(0.8)
    fc = controller(flow_config(detector, usage_limit=PriorityHoldbackPolicy("h", "rank", 0.5, 0.8)))
    task = asyncio.create_task(fc.admit(request("r1")))
    await queued_task(task)
    assert not fc.dispatch_cycle()
    detector.value = 0.79
    assert fc.dispatch_cycle()
    await task


async def test_higher_priority_goes_first_and_a_blocked_band_blocks_the_ones_below() -> None:
    detector = SetSaturation(1.0)
    # Ceilings by rank: priority 10 → 1.0, 0 → 0.75, -5 → 0.5.
    holdback = PriorityHoldbackPolicy("holdback", "rank", 0.5, 1.0)
    fc = controller(flow_config(detector, bands=[band(10), band(-5)], usage_limit=holdback))
    low = asyncio.create_task(fc.admit(request("low", priority=-5)))
    mid = asyncio.create_task(fc.admit(request("mid")))
    high = asyncio.create_task(fc.admit(request("high", priority=10)))
    for task in (low, mid, high):
        await queued_task(task)
    detector.value = 0.6  # below 1.0 and 0.75, above 0.5
    assert fc.dispatch_cycle() and fc.dispatch_cycle()
    await asyncio.gather(high, mid)
    assert not fc.dispatch_cycle()  # the sheddable band's ceiling (0.5) holds it back
    assert fc.flow_lengths() == {(-5, "default-flow"): 1}
    detector.value = 0.4
    assert fc.dispatch_cycle()
    await low


async def test_round_robin_fairness_alternates_flows_whatever_their_volume() -> None:
    detector = SetSaturation(1.0)
    rr = RoundRobinFairnessPolicy("round-robin-fairness-policy")
    fc = controller(flow_config(detector, default_band=band(fairness=rr)))
    order: list[str] = []

    async def admit(request_id: str, flow: str) -> None:
        await fc.admit(request(request_id, flow=flow))
        order.append(request_id)

    tasks = [asyncio.create_task(admit(f"a{i}", "tenant-a")) for i in range(4)]
    tasks += [asyncio.create_task(admit(f"b{i}", "tenant-b")) for i in range(2)]
    for task in tasks:
        await queued_task(task)
    detector.value = 0.0
    for _ in range(6):
        assert fc.dispatch_cycle()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["a0", "b0", "a1", "b1", "a2", "a3"]


async def test_global_strict_fairness_is_one_fcfs_queue_across_flows() -> None:
    detector = SetSaturation(1.0)
    fc = controller(flow_config(detector))
    order: list[str] = []

    async def admit(request_id: str, flow: str) -> None:
        await fc.admit(request(request_id, flow=flow))
        order.append(request_id)

    tasks = [
        asyncio.create_task(admit(rid, flow))
        for rid, flow in [("1", "a"), ("2", "a"), ("3", "b"), ("4", "a")]
    ]
    for task in tasks:
        await queued_task(task)
    detector.value = 0.0
    for _ in range(4):
        assert fc.dispatch_cycle()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["1", "2", "3", "4"]


async def test_edf_and_slo_deadline_ordering() -> None:
    clock = Clock()
    detector = SetSaturation(1.0)
    fc = controller(
        flow_config(detector, default_band=band(ordering=SloDeadlineOrderingPolicy("slo"))), clock=clock
    )
    order: list[str] = []

    async def admit(request_id: str, slo_ms: str | None = None, legacy_header: bool = False) -> None:
        name = "x-slo-ttft-ms" if legacy_header else "x-llm-d-slo-ttft-ms"
        await fc.admit(request(request_id, headers={name: slo_ms} if slo_ms is not None else None))
        order.append(request_id)

    tasks = [
        asyncio.create_task(admit("no-slo")),
        asyncio.create_task(admit("loose", "5000")),
        asyncio.create_task(admit("tight", "200", legacy_header=True)),
        asyncio.create_task(admit("bad", "soon")),
    ]
    for task in tasks:
        await queued_task(task)
    detector.value = 0.0
    for _ in range(4):
        assert fc.dispatch_cycle()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["tight", "loose", "no-slo", "bad"]
    # EDF on a single TTL is arrival order; a request without a TTL would go last.
    edf = EdfOrderingPolicy("edf")
    fc2 = controller(flow_config(SetSaturation(1.0), default_band=band(ordering=edf), ttl=5.0), clock=clock)
    first = fc2.enqueue(request("first"))
    clock.advance(1)
    second = fc2.enqueue(request("second"))
    assert first.key < second.key
    second.ttl = 0.0
    assert edf.key(second) > edf.key(first)


@pytest.mark.parametrize(
    "slo_ms",
    [
        "9" * 400,  # int() parses it; dividing it to seconds raised OverflowError (a 500)
        str(2**63),  # past int64: Go's ParseInt, which llm-d reads the header with, refuses it
        "1_000",  # int() takes underscores, Go does not
        "\u0661\u0662",  # Arabic-Indic digits: int() takes them, Go does not
        "12ms",
    ],
)
async def test_an_slo_header_that_is_no_int64_means_no_deadline(slo_ms: str) -> None:
    fc = controller(
        flow_config(SetSaturation(1.0), default_band=band(ordering=SloDeadlineOrderingPolicy("slo")))
    )
    hostile = fc.enqueue(request("hostile", headers={"x-llm-d-slo-ttft-ms": slo_ms}))
    plain = fc.enqueue(request("plain"))
    largest = fc.enqueue(request("largest", headers={"x-llm-d-slo-ttft-ms": str(2**63 - 1)}))
    assert hostile.key[0] == plain.key[0] == float("inf")
    assert largest.key[0] < hostile.key[0]


async def test_ttl_expiry_evicts_at_the_deadline_and_reports_evicted_ttl() -> None:
    clock = Clock()
    fc = controller(flow_config(SetSaturation(1.0), ttl=2.0), clock=clock, pool_name="ttl-pool")
    task = asyncio.create_task(fc.admit(request("r1")))
    await queued_task(task)
    clock.advance(1.999)
    assert fc.expire() == 0
    assert fc.next_deadline() == pytest.approx(clock.now + 0.001)
    clock.advance(0.001)
    assert fc.expire() == 1
    with pytest.raises(FlowControlRejected) as caught:
        await task
    assert caught.value.outcome is Outcome.EVICTED_TTL
    assert fc.queued == 0
    assert (
        sample(
            "llm_d_epp_flow_control_request_queue_duration_seconds_count",
            {
                "fairness_id": "default-flow",
                "priority": "0",
                "outcome": "EvictedTTL",
                "inference_pool": "ttl-pool",
                "model_name": "m",
                "target_model_name": "m",
            },
        )
        >= 1
    )


async def test_zero_ttl_waits_for_the_client() -> None:
    clock = Clock()
    fc = controller(flow_config(SetSaturation(1.0), ttl=0.0), clock=clock)
    task = asyncio.create_task(fc.admit(request("r1")))
    await queued_task(task)
    clock.advance(10_000)
    assert fc.expire() == 0 and fc.next_deadline() == float("inf")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fc.queued == 0


async def test_an_empty_pool_uses_the_no_endpoint_budget_and_a_new_regime_restarts_it() -> None:
    clock = Clock()
    pool = Pool(0)
    fc = controller(flow_config(SetSaturation(1.0), ttl=1.0, no_endpoint_ttl=10.0), pool=pool, clock=clock)
    task = asyncio.create_task(fc.admit(request("cold-start")))
    await queued_task(task)
    clock.advance(5.0)
    assert fc.expire() == 0  # 10 s budget while empty
    pool.endpoints = Pool(1).endpoints  # a pod came up, but the pool is saturated
    fc.dispatch_cycle()
    clock.advance(0.9)
    assert fc.expire() == 0  # the 1 s budget started when the pod appeared
    clock.advance(0.1)
    assert fc.expire() == 1
    with pytest.raises(FlowControlRejected) as caught:
        await task
    assert caught.value.outcome is Outcome.EVICTED_TTL


async def test_no_endpoint_budget_expiry_is_evicted_no_endpoints() -> None:
    clock = Clock()
    fc = controller(flow_config(SetSaturation(0.0), ttl=1.0, no_endpoint_ttl=3.0), pool=Pool(0), clock=clock)
    task = asyncio.create_task(fc.admit(request("r")))
    await queued_task(task)  # an empty pool reads as saturated: it waits
    clock.advance(3.0)
    assert fc.expire() == 1
    with pytest.raises(FlowControlRejected) as caught:
        await task
    assert caught.value.outcome is Outcome.EVICTED_NO_ENDPOINTS


async def test_band_request_and_byte_limits_reject_at_once() -> None:
    fc = controller(flow_config(SetSaturation(1.0), bands=[band(-1, max_requests=2, max_bytes=250)]))
    queued = [asyncio.create_task(fc.admit(request(f"s{i}", priority=-1))) for i in range(2)]
    for task in queued:
        await queued_task(task)
    with pytest.raises(FlowControlRejected) as caught:
        await fc.admit(request("s2", priority=-1))
    assert caught.value.outcome is Outcome.REJECTED_CAPACITY
    # Other bands are unaffected by the sheddable band being full.
    other = asyncio.create_task(fc.admit(request("critical", priority=0, size=10_000)))
    await queued_task(other)
    fc2 = controller(flow_config(SetSaturation(1.0), bands=[band(-1, max_bytes=250)]))
    first = asyncio.create_task(fc2.admit(request("big", priority=-1, size=200)))
    await queued_task(first)
    with pytest.raises(FlowControlRejected):
        await fc2.admit(request("too-big", priority=-1, size=51))
    for task in (*queued, other, first):
        task.cancel()


async def test_global_limits_and_empty_pool_capacity_is_503_territory() -> None:
    fc = controller(flow_config(SetSaturation(1.0), bands=[band(5)], max_requests=1))
    task = asyncio.create_task(fc.admit(request("one", priority=5)))
    await queued_task(task)
    with pytest.raises(FlowControlRejected) as caught:
        await fc.admit(request("two"))
    assert caught.value.outcome is Outcome.REJECTED_CAPACITY
    empty = controller(flow_config(SetSaturation(1.0), bands=[band(0, max_requests=1)]), pool=Pool(0))
    waiting = asyncio.create_task(empty.admit(request("a")))
    await queued_task(waiting)
    with pytest.raises(FlowControlRejected) as caught:
        await empty.admit(request("b"))
    assert caught.value.outcome is Outcome.REJECTED_NO_ENDPOINTS
    for t in (task, waiting):
        t.cancel()


async def test_a_client_that_goes_away_leaves_the_queue_at_once() -> None:
    fc = controller(flow_config(SetSaturation(1.0)), pool_name="cancel-pool")
    labels = {
        "fairness_id": "leaver",
        "priority": "0",
        "inference_pool": "cancel-pool",
        "model_name": "m",
        "target_model_name": "m",
    }
    tasks = [asyncio.create_task(fc.admit(request(f"r{i}", flow="leaver"))) for i in range(200)]
    for task in tasks:
        await queued_task(task)
    assert fc.queued == 200 and sample("llm_d_epp_flow_control_queue_size", labels) == 200
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert fc.queued == 0 and fc.queued_bytes == 0 and fc.flow_lengths() == {}
    assert sample("llm_d_epp_flow_control_queue_size", labels) == 0
    assert sample("llm_d_epp_flow_control_queue_bytes", labels) == 0
    # Nothing of theirs is left behind: the flow's queue is gone, the deadline heap drains.
    assert fc.next_deadline() == float("inf")
    assert not fc.dispatch_cycle()


async def test_cancelled_entries_do_not_accumulate_in_a_busy_flow() -> None:
    fc = controller(flow_config(SetSaturation(1.0)))
    keeper = asyncio.create_task(fc.admit(request("keeper")))
    await queued_task(keeper)
    queue = next(iter(fc._bands[0].view.flows.values()))
    for round_ in range(20):
        tasks = [asyncio.create_task(fc.admit(request(f"x{round_}-{i}"))) for i in range(50)]
        for task in tasks:
            await queued_task(task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(queue) == 1
    assert queue.heap_size() <= 1 + 2 * 17  # compaction keeps dead entries below the live ones + 16
    keeper.cancel()


async def test_requests_that_left_are_not_kept_behind_one_that_waits() -> None:
    """The TTL heap dropped departed entries only from its head: behind one request that waits
    (a held-back sheddable one, for up to its 60 s TTL), every request that queued and left since,
    dispatched or cancelled, stayed referenced (headers included), 2,000 of 2,000 here."""
    detector = SetSaturation(0.6)
    holdback = PriorityHoldbackPolicy("holdback", "rank", 0.5, 1.0)  # ceilings: 0 → 0.75, -5 → 0.5
    fc = controller(flow_config(detector, bands=[band(-5)], usage_limit=holdback))
    low = asyncio.create_task(fc.admit(request("low", priority=-5)))
    await queued_task(low)
    for i in range(2000):
        task = asyncio.create_task(fc.admit(request(f"r{i}", headers={"x-pad": "x" * 100})))
        await queued_task(task)
        if i % 2:
            task.cancel()
        else:
            assert fc.dispatch_cycle()
        await asyncio.gather(task, return_exceptions=True)
        fc.expire()  # what the dispatcher does on every wake
    assert fc.flow_lengths() == {(-5, "default-flow"): 1}
    assert fc.deadline_entries <= 1 + 64
    assert fc.next_deadline() < float("inf")  # the waiting request keeps its deadline
    low.cancel()
    await asyncio.gather(low, return_exceptions=True)
    assert fc.next_deadline() == float("inf")


async def test_a_request_dispatched_then_cancelled_is_not_evicted() -> None:
    detector = SetSaturation(1.0)
    fc = controller(flow_config(detector))
    task = asyncio.create_task(fc.admit(request("r")))
    await queued_task(task)
    detector.value = 0.0
    assert fc.dispatch_cycle()
    task.cancel()  # the client left between dispatch and resumption
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fc.queued == 0


async def test_stages_gate_on_the_busier_of_prefill_and_decode() -> None:
    class PerStage(SetSaturation):
        def pool_saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
            self.seen.append(len(endpoints))
            roles = {e.labels.get("llm-d.ai/role") for e in endpoints}
            return 1.2 if roles == {"prefill", "both"} else 0.1

    detector = PerStage()
    pool = Pool(
        3, labels=[{"llm-d.ai/role": "prefill"}, {"llm-d.ai/role": "decode"}, {"llm-d.ai/role": "both"}]
    )
    fc = controller(flow_config(detector), pool=pool, pool_name="pd-pool")
    task = asyncio.create_task(fc.admit(request("r")))
    await queued_task(task)
    assert not fc.dispatch_cycle()
    assert fc.last_saturation == pytest.approx(1.2)
    assert (
        sample("llm_d_epp_flow_control_pool_saturation", {"inference_pool": "pd-pool", "stage": "decode"})
        == 0.1
    )
    assert (
        sample("llm_d_epp_flow_control_pool_saturation", {"inference_pool": "pd-pool", "stage": "effective"})
        == 1.2
    )
    assert sorted(detector.seen[-2:]) == [2, 2]  # both pods serve both stages
    task.cancel()


async def test_capacity_utilization_gauges_follow_the_band() -> None:
    fc = controller(
        flow_config(SetSaturation(1.0), bands=[band(3, max_requests=4)], max_requests=8), pool_name="cap"
    )
    tasks = [asyncio.create_task(fc.admit(request(f"r{i}", priority=3))) for i in range(2)]
    for task in tasks:
        await queued_task(task)
    assert (
        sample(
            "llm_d_epp_flow_control_capacity_utilization_requests", {"priority": "3", "inference_pool": "cap"}
        )
        == 0.5
    )
    assert (
        sample("llm_d_epp_flow_control_global_capacity_utilization_requests", {"inference_pool": "cap"})
        == 0.25
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (
        sample(
            "llm_d_epp_flow_control_capacity_utilization_requests", {"priority": "3", "inference_pool": "cap"}
        )
        == 0
    )


async def test_close_answers_every_queued_request_and_refuses_new_ones() -> None:
    fc = controller(flow_config(SetSaturation(1.0)))
    task = asyncio.create_task(fc.admit(request("r")))
    await queued_task(task)
    await fc.close()
    with pytest.raises(FlowControlRejected) as caught:
        await task
    assert caught.value.shutting_down
    with pytest.raises(FlowControlRejected) as again:
        await fc.admit(request("late"))
    assert again.value.shutting_down and again.value.outcome is Outcome.REJECTED_OTHER


async def test_enqueue_is_synchronous_and_marks_state() -> None:
    fc = controller(flow_config(SetSaturation(1.0)))
    item = fc.enqueue(request("r"))
    assert item.state is ItemState.QUEUED and item.future is not None
    fc2 = controller(flow_config(SetSaturation(0.0)))
    assert fc2.enqueue(request("r")).state is ItemState.DISPATCHED


async def test_the_dispatcher_task_moves_requests_when_notified() -> None:
    """The background dispatcher (real loop, no injected clock): the assertion is on the outcome;
    the timeout is only a guard against a hang."""
    from epp.flowcontrol.controller import FlowController

    detector = SetSaturation(1.0)
    fc = FlowController(flow_config(detector), Pool(), pool_name="live")
    task = asyncio.create_task(fc.admit(request("r")))
    await queued_task(task)
    detector.value = 0.0
    fc.notify()
    await asyncio.wait_for(task, timeout=10)
    assert fc.queued == 0
    await fc.close()


async def test_a_failing_detector_does_not_stop_the_dispatcher(caplog: pytest.LogCaptureFixture) -> None:
    from epp.flowcontrol.controller import FlowController

    class Flaky(SetSaturation):
        def __init__(self) -> None:
            super().__init__(1.0)
            self.failures = 0

        def pool_saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
            if self.value == 0.0 and self.failures < 2:
                self.failures += 1
                raise RuntimeError("detector bug")
            return super().pool_saturation(endpoints, now)

    detector = Flaky()
    fc = FlowController(flow_config(detector), Pool(), pool_name="flaky")
    task = asyncio.create_task(fc.admit(request("r")))
    await queued_task(task)
    detector.value = 0.0
    fc.notify()
    await asyncio.wait_for(task, timeout=10)
    assert detector.failures == 2 and "dispatch cycle failed" in caplog.text
    await fc.close()


async def test_an_unlisted_band_is_dropped_after_ten_idle_minutes() -> None:
    """Bands decide the usage-limit ceilings (priority-holdback spreads them over the bands that
    exist), so a priority nobody uses any more must stop holding the others back."""
    clock = Clock()
    detector = SetSaturation(1.0)
    holdback = PriorityHoldbackPolicy("holdback", "rank", 0.5, 1.0)
    fc = controller(flow_config(detector, usage_limit=holdback), clock=clock)
    task = asyncio.create_task(fc.admit(request("urgent", priority=5)))  # provisions band 5
    await queued_task(task)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    detector.value = 0.8  # band 0's ceiling is 0.5 below band 5, 1.0 on its own
    waiting = asyncio.create_task(fc.admit(request("normal")))
    await queued_task(waiting)
    assert not fc.dispatch_cycle()
    clock.advance(599)
    assert fc.collect_idle_bands() == []
    clock.advance(1)
    assert fc.collect_idle_bands() == [5]  # the configured band 0 is never collected
    assert fc.dispatch_cycle()
    await waiting
