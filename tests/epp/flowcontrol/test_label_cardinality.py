"""Flow control's request-derived labels (fairness id, model names) stay bounded whatever clients send.

Counted as series in the default registry (one pool name per test), not timed."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from epp import metrics as m
from epp.config.loader import load_config
from epp.datastore import Datastore, RewriteTarget
from epp.director import SchedulingDirector
from epp.flowcontrol.controller import FlowRequest
from epp.flowcontrol.policies import RoundRobinFairnessPolicy
from tests.epp.flowcontrol.support import Clock, SetSaturation, band, controller, flow_config
from tests.epp.flowcontrol.test_director_admission import config

pytestmark = pytest.mark.asyncio

QUEUE_DURATION = "llm_d_epp_flow_control_request_queue_duration_seconds"


def series(name: str, pool: str) -> set[tuple[tuple[str, str], ...]]:
    """Label sets of ``name``'s ``_count`` samples for one inference pool."""
    return {
        tuple(sorted(s.labels.items()))
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name + "_count" and s.labels.get("inference_pool") == pool
    }


async def test_fairness_ids_crossed_with_model_names_do_not_grow_series_without_bound() -> None:
    """Each label alone stays under its 1,000-value cap (60 flows, 50 models), but their product is
    3,000 label sets: before the joint cap every one became its own histogram (3,000 series here;
    1,000 x 1,000 reachable)."""
    pool = "cardinality-cross"
    fc = controller(flow_config(SetSaturation(0.0)), pool_name=pool)
    flows, models = 60, 50
    for i in range(flows * models):
        fid, model = f"tenant-{i % flows}", f"model-{i // flows}"
        item = fc.enqueue(FlowRequest(f"r{i}", fid, 0, model_name=model, target_model_name=model))
        assert item.outcome.value == "Dispatched"
    seen = series(QUEUE_DURATION, pool)
    assert len(seen) <= m.MAX_FLOW_LABEL_SETS + 1, len(seen)
    assert len(fc._series) <= 2 * (m.MAX_FLOW_LABEL_SETS + 1) + 8, len(fc._series)
    assert any(dict(labels)["fairness_id"] == m.OVERFLOW_LABEL for labels in seen)


async def test_a_flood_of_unknown_model_names_does_not_displace_the_configured_ones() -> None:
    """llm-d pins the names its InferenceModelRewrites configure (cardinality.go, PreAdmitModelLabels):
    they keep their own label however many unconfigured names came first."""
    labels = m.FlowLabels(limit=10)
    labels.pin_models(["served", "rewritten"])
    for i in range(100_000):
        labels(f"flow-{i}", f"junk-{i}", f"junk-{i}")
    assert labels("flow-late", "served", "served") == (m.OVERFLOW_LABEL, "served", "served")
    assert labels("flow-0", "rewritten", "served") == ("flow-0", "rewritten", "served")
    assert labels("flow-x", "junk-x", "junk-x") == (m.OVERFLOW_LABEL,) * 3
    assert labels("flow-1", "junk-1", "junk-1") == ("flow-1", "junk-1", "junk-1")  # admitted: stable
    assert labels.overflows == 100_000 - 10 + 2
    # 100,000 distinct values held as 10 per label, 2 pins and 13 combinations.
    assert labels.memory() == 10 + 10 + 2 + 13


async def test_past_the_combination_cap_pinned_models_keep_their_label() -> None:
    labels = m.FlowLabels(label_sets=3)
    labels.pin_models(["served"])
    assert [labels(f"f{i}", "served", "served") for i in range(3)] == [
        (f"f{i}", "served", "served") for i in range(3)
    ]
    assert labels("f3", "served", "served") == (m.OVERFLOW_LABEL, "served", "served")
    assert labels("f3", "made-up", "served") == (m.OVERFLOW_LABEL, m.OVERFLOW_LABEL, "served")
    assert labels("f0", "served", "served") == ("f0", "served", "served")
    assert labels.overflows == 2


async def test_the_director_and_the_rewrite_rules_pin_the_configured_model_names() -> None:
    names = ("pin-served", "pin-alias", "pin-target")
    assert [m.FLOW_LABELS.model.pinned_or_other(n) for n in names] == [m.OVERFLOW_LABEL] * 3
    datastore = Datastore()
    SchedulingDirector(datastore, load_config(config()), served_models=frozenset({"pin-served"}))
    datastore.set_model_rewrites({"pin-alias": [RewriteTarget("pin-target")]})
    assert [m.FLOW_LABELS.model.pinned_or_other(n) for n in names] == list(names)


async def test_long_fairness_ids_and_model_names_are_not_copied_into_label_values() -> None:
    """A header or model name may be tens of KiB, and a label value is written on every line of its
    series on every scrape: under the value caps alone, 30 requests with 8 KiB ids and model names
    grew the /metrics page by 13.4 MB (some 450 MB at the 1,000-value cap)."""
    pool = "cardinality-long"
    fc = controller(flow_config(SetSaturation(0.0)), pool_name=pool)
    for i in range(30):
        fid, model = f"{i:04d}" + "f" * 8192, f"{i:04d}" + "m" * 8192
        fc.enqueue(FlowRequest(f"r{i}", fid, 0, model_name=model, target_model_name="served"))
    values = [value for labels in series(QUEUE_DURATION, pool) for _, value in labels]
    assert max(map(len, values)) <= m.MAX_LABEL_VALUE_LENGTH
    assert {dict(labels)["fairness_id"] for labels in series(QUEUE_DURATION, pool)} == {m.OVERFLOW_LABEL}


async def test_per_flow_state_leaves_with_the_flows_last_request() -> None:
    """llm-d garbage-collects an idle flow's queue after a timeout (flowcontrol/registry); here a
    flow's queue goes with its last request, by dispatch or eviction, so distinct fairness ids hold
    nothing once their requests have left."""
    detector, clock = SetSaturation(1.0), Clock()
    rr = RoundRobinFairnessPolicy("round-robin-fairness-policy")
    fc = controller(flow_config(detector, default_band=band(fairness=rr), ttl=30.0), clock=clock)
    flows = fc._bands[0].view.flows
    for i in range(3000):
        fc.enqueue(FlowRequest(f"held-{i}", f"tenant-{i}", 0))
    assert len(flows) == 3000
    clock.advance(31.0)
    assert fc.expire() == 3000 and len(flows) == 0
    for i in range(3000):
        fc.enqueue(FlowRequest(f"queued-{i}", f"other-tenant-{i}", 0))
    detector.value = 0.0
    while fc.dispatch_cycle():
        pass
    assert fc.queued == 0 and len(flows) == 0
