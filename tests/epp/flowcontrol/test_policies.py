"""Flow-control policy plugins: their choices on hand-made queues and their parameters."""

from __future__ import annotations

from typing import Any

import pytest

import epp.plugins  # noqa: F401  (registers concurrency-detector: the file passes run alone too)
from epp.flowcontrol.framework import BandView, FlowQueue, ItemState, QueueItem
from epp.flowcontrol.policies import (
    FcfsOrderingPolicy,
    GlobalStrictFairnessPolicy,
    PriorityHoldbackPolicy,
    RoundRobinFairnessPolicy,
    StaticUsageLimitPolicy,
)
from epp.scheduling.errors import ConfigError
from epp.scheduling.registry import create

FCFS = FcfsOrderingPolicy("fcfs-ordering-policy")


def item(seq: int, flow: str) -> QueueItem:
    entry = QueueItem(f"r{seq}", flow, 0, 10, 0.0, float(seq), seq, 60.0, {})
    entry.key = FCFS.key(entry)
    return entry


def band_with(
    fairness: RoundRobinFairnessPolicy | GlobalStrictFairnessPolicy, flows: dict[str, list[int]]
) -> BandView:
    view = BandView(0, FCFS, fairness.new_state())
    for flow, seqs in flows.items():
        if not seqs:
            view.add_flow(FlowQueue(flow, 0))  # a flow with nothing queued: policies skip it
        for seq in seqs:
            view.push(item(seq, flow))
    return view


def test_round_robin_cycles_in_id_order_and_skips_empty_flows() -> None:
    policy = RoundRobinFairnessPolicy("round-robin-fairness-policy")
    view = band_with(policy, {"c": [1], "a": [2, 3], "b": []})
    picks = []
    for _ in range(4):
        queue = policy.pick(view)
        assert queue is not None
        picks.append(queue.fairness_id)
    assert picks == ["a", "c", "a", "c"]
    view.push(item(9, "b"))
    assert policy.pick(view).fairness_id == "a"  # type: ignore[union-attr]
    assert policy.pick(view).fairness_id == "b"  # type: ignore[union-attr]


def test_round_robin_on_an_empty_band_resets_its_cursor() -> None:
    policy = RoundRobinFairnessPolicy("rr")
    view = band_with(policy, {})
    assert policy.pick(view) is None
    assert view.state.last is None


def test_global_strict_takes_the_earliest_head_across_flows() -> None:
    policy = GlobalStrictFairnessPolicy("global-strict-fairness-policy")
    view = band_with(policy, {"a": [5, 6], "b": [3], "c": []})
    assert policy.pick(view).fairness_id == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("domain", "priorities", "expected"),
    [
        ("rank", [10, 0, -5], [1.0, 0.75, 0.5]),
        ("value", [10, 0, -10], [1.0, 0.75, 0.5]),
        ("value", [3, 3], [1.0, 1.0]),
        ("rank", [7], [1.0]),
    ],
)
def test_priority_holdback_ceilings(domain: str, priorities: list[int], expected: list[float]) -> None:
    policy = PriorityHoldbackPolicy("h", domain, 0.5, 1.0)
    assert policy.ceilings(0.3, priorities) == pytest.approx(expected)


def test_static_usage_limit_is_one_threshold_for_all() -> None:
    policy = create("static-usage-limit-policy", "s", {"threshold": 0.8})
    assert isinstance(policy, StaticUsageLimitPolicy)
    assert policy.ceilings(0.0, [1, 0, -1]) == [0.8, 0.8, 0.8]


@pytest.mark.parametrize(
    ("type_name", "params", "message"),
    [
        ("static-usage-limit-policy", {"threshold": 0}, "'threshold' must be in (0.0, 1.0]"),
        ("static-usage-limit-policy", {"threshold": 1.5}, "'threshold' must be <= 1.0"),
        ("priority-holdback-policy", {}, "'minCeiling' is required"),
        ("priority-holdback-policy", {"minCeiling": 1.0}, "'minCeiling' must be in [0.0, 1.0)"),
        ("priority-holdback-policy", {"minCeiling": 0.5, "maxCeiling": 0.4}, "must not exceed maxCeiling"),
        ("priority-holdback-policy", {"minCeiling": 0.5, "shape": "cubic"}, "'shape' must be one of linear"),
        (
            "priority-holdback-policy",
            {"minCeiling": 0.5, "domain": "age"},
            "'domain' must be one of rank, value",
        ),
        ("static-usage-limit-policy", {"typo": 1}, "unknown parameter(s) 'typo'"),
        ("concurrency-detector", {"concurrencyMode": "bytes"}, "'concurrencyMode' must be one of"),
        ("concurrency-detector", {"maxTokenConcurrency": 0}, "'maxTokenConcurrency' must be >= 1"),
        ("concurrency-detector", {"maxConcurrency": 0}, "'maxConcurrency' must be >= 1"),
    ],
)
def test_bad_parameters_name_the_key(type_name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create(type_name, type_name, params)
    assert message in str(caught.value)


def test_every_flow_control_type_is_registered() -> None:
    for type_name in (
        "fcfs-ordering-policy",
        "edf-ordering-policy",
        "slo-deadline-ordering-policy",
        "global-strict-fairness-policy",
        "round-robin-fairness-policy",
        "static-usage-limit-policy",
        "priority-holdback-policy",
    ):
        params = {"minCeiling": 0.2} if type_name == "priority-holdback-policy" else None
        assert create(type_name, type_name, params).type_name == type_name


class _NoScanDict(dict[str, FlowQueue]):
    """Flows a policy may look up one by one but not walk: walking them all is O(F) per pick."""

    def __iter__(self) -> Any:
        raise AssertionError("the policy walked every flow")

    def items(self) -> Any:
        raise AssertionError("the policy walked every flow")

    def values(self) -> Any:
        raise AssertionError("the policy walked every flow")


def test_round_robin_keeps_id_order_as_flows_come_and_go_without_sorting_per_pick() -> None:
    """Fairness ids are client-chosen: sorting every flow's id on every pick made draining 5,000
    one-request flows cost 4 s of CPU. The band keeps its ids in order as flows come and go; the
    picks are the same as sorting each time (checked against that reference over random traffic)."""
    import random

    rng = random.Random(3)
    policy = RoundRobinFairnessPolicy("round-robin-fairness-policy")
    view = BandView(0, FCFS, policy.new_state())
    view.flows = _NoScanDict()
    last: str | None = None
    seq = 0
    for _ in range(3000):
        if rng.random() < 0.55:
            flow = f"tenant-{rng.randrange(60):02d}"
            seq += 1
            view.push(item(seq, flow))
            continue
        # The reference: every flow with something queued, sorted, the first after the last pick.
        ready = sorted(fid for fid in view.flow_ids if len(view.flows[fid]))
        expected = None
        if ready:
            after = [fid for fid in ready if last is None or fid > last]
            expected = (after or ready)[0]
        picked = policy.pick(view)
        assert (picked.fairness_id if picked else None) == expected
        if picked is None:
            last = None
            continue
        last = picked.fairness_id
        head = picked.peek()
        assert head is not None
        head.state = ItemState.DISPATCHED  # as the controller dispatches it
        view.discard(head)
        assert view.flow_ids == sorted(dict.keys(view.flows))


def test_global_strict_picks_the_first_head_without_walking_the_flows() -> None:
    """The default policy walked every flow's head on each pick (O(F): 4 s of CPU to drain 5,000
    one-request flows with client-chosen ids). The band keeps its queued items in order; picks equal
    the walk-every-head reference over random traffic with cancellations from the middle, and the
    band's heap does not keep what left."""
    import random

    rng = random.Random(5)
    policy = GlobalStrictFairnessPolicy("global-strict-fairness-policy")
    view = BandView(0, FCFS, policy.new_state())
    view.flows = _NoScanDict()
    queued: list[QueueItem] = []
    seq = 0
    for _ in range(4000):
        roll = rng.random()
        if roll < 0.5:
            seq += 1
            entry = QueueItem(
                f"r{seq}", f"t{rng.randrange(80)}", 0, 10, 0.0, rng.uniform(0, 100), seq, 60.0, {}
            )
            entry.key = FCFS.key(entry)
            view.push(entry)
            queued.append(entry)
            continue
        if roll < 0.65 and queued:  # a client gone or a TTL expired: out of the middle of a flow
            gone = queued.pop(rng.randrange(len(queued)))
            gone.state = ItemState.FINALIZED
            view.discard(gone)
            continue
        expected = min(queued, key=lambda e: (e.key, e.seq), default=None)
        picked = policy.pick(view)
        assert (picked.peek() if picked else None) is expected
        if expected is not None:
            expected.state = ItemState.DISPATCHED
            view.discard(expected)
            queued.remove(expected)
        assert view.flow_ids == sorted({e.fairness_id for e in queued})
        assert view.heap_size() <= 2 * len(queued) + 65


@pytest.mark.parametrize(
    "type_name",
    [
        "fcfs-ordering-policy",
        "edf-ordering-policy",
        "slo-deadline-ordering-policy",
        "global-strict-fairness-policy",
        "round-robin-fairness-policy",
    ],
)
def test_policies_whose_llm_d_factory_decodes_nothing_load_with_any_parameters(
    type_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """llm-d-router's factories for these take ``_ *json.Decoder``: a config giving them parameters
    loads there, so it loads here, with a warning naming what is ignored (it failed start-up)."""
    with caplog.at_level("WARNING"):
        policy = create(type_name, "p", {"threshold": 0.5, "window": "1s"})
    assert policy.type_name == type_name
    assert "takes no parameters; ignoring 'threshold', 'window'" in caplog.text
