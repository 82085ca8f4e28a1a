"""The saturation benchmark's parts that need no processes: what counts as served, shed and lost;
the SLO verdicts; the traffic mixtures; the agentic workload; and that the configs it measures are
the ones the stacks render."""

from __future__ import annotations

import yaml

from benchmarks.loadgen import RequestResult
from benchmarks.saturation import (
    FAIRNESS,
    OBJECTIVE,
    Run,
    Settings,
    Stream,
    fc_defaults_config,
    mixture,
    plan,
    random_requests,
    summary,
    tuned_config,
)
from benchmarks.sweep import Point, point_of, throughput_at_slo
from benchmarks.workloads import CHARS_PER_TOKEN, AgenticWorkload
from epp.config.loader import load_config


def result(
    index: int, status: int = 200, *, ttft: float | None = 0.1, reason: str | None = None, group: str = "g"
) -> RequestResult:
    ok = status == 200
    return RequestResult(
        index,
        group,
        float(index),
        float(index),
        status,
        ttft if ok else None,
        0.5 if ok else None,
        4 if ok else 0,
        None if ok else f"HTTP {status}",
        reason,
    )


def test_shed_means_refused_on_purpose_and_everything_else_is_lost() -> None:
    results = [
        result(0),
        result(1, 429, reason="rejected-ttl-expired"),
        result(2, 429),  # a 429 is backpressure even without a reason (no endpoint passed the filters)
        result(3, 503, reason="rejected-no-endpoints"),
        result(4, 503),  # a bare 503 is not flow control's answer
        result(5, 0),  # reset / timeout
    ]
    point = point_of(results, rate=6.0, ttft_slo_s=1.0)
    assert point.served == 1
    assert point.shed == {"429 rejected-ttl-expired": 1, "429": 1, "503 rejected-no-endpoints": 1}
    assert point.lost == 2 and not point.meets_slo


def test_slo_verdict_is_on_served_requests_and_tolerates_shedding() -> None:
    fast = [result(i, ttft=0.2) for i in range(9)] + [result(9, 429, reason="rejected-saturated")]
    slow = [result(i, ttft=2.0) for i in range(10)]
    p_fast, p_slow = point_of(fast, 10.0, 1.0), point_of(slow, 5.0, 1.0)
    assert p_fast.meets_slo and not p_slow.meets_slo
    assert throughput_at_slo([p_slow, p_fast]) is p_fast
    assert p_fast.goodput_rps == p_fast.throughput_rps  # every served request was within the SLO


def test_per_class_accounting() -> None:
    results = [result(0, group="quiet"), result(1, group="flood"), result(2, 429, reason="x", group="flood")]
    groups = point_of(results, 3.0, 1.0).by_group
    assert groups["quiet"]["served"] == 1 and groups["flood"]["shed"] == 1


def test_point_round_trips_through_json() -> None:
    point = point_of([result(0), result(1, 429, reason="r")], 2.0, 1.0)
    assert Point.from_json(point.to_json()) == point
    run = Run("sweep", "random", "rr", 1.0, point, 0.5, {"pod-0": 3, "pod-1": 0})
    assert Run.from_json(run.to_json()) == run
    assert run.idle_pods == 1


def test_mixture_tags_each_stream_and_merges_in_time_order() -> None:
    streams = [
        Stream("quiet", 2.0, random_requests, ((FAIRNESS, "quiet"),)),
        Stream("flood", 20.0, random_requests, ((FAIRNESS, "flood"),)),
    ]
    specs, offsets = mixture(streams, duration_s=5.0, seed=3)
    assert offsets == sorted(offsets)
    assert {s.group for s in specs} == {"quiet", "flood"}
    assert (
        sum(1 for s in specs if s.group == "quiet") == 10
        and sum(1 for s in specs if s.group == "flood") == 100
    )
    assert all(s.headers == {FAIRNESS: s.group} for s in specs)


def test_plan_covers_the_parts() -> None:
    settings = Settings(capacity_rps=10.0, multiples=(0.5, 2.0))
    names = ["round-robin", "epp-flow-control", "epp-default"]
    cells = plan(settings, ["sweep", "tenants", "priorities", "placement"], ["random"], names)
    parts = [c[0] for c in cells]
    assert parts.count("sweep") == 2 * 3 and parts.count("placement") == 3
    tenants = [c for c in cells if c[0] == "tenants"]
    assert [c[2] for c in tenants] == ["round-robin", "epp-flow-control"]
    priorities = next(c for c in cells if c[0] == "priorities")
    assert {dict(s.headers)[OBJECTIVE] for s in priorities[4]} == {"critical", "batch"}


def test_summary_compares_with_round_robin() -> None:
    def run(router: str, multiple: float, ttfts: list[float], shed: int = 0) -> Run:
        results = [result(i, ttft=t) for i, t in enumerate(ttfts)]
        results += [result(len(ttfts) + i, 429, reason="r") for i in range(shed)]
        return Run("sweep", "random", router, multiple, point_of(results, 10.0 * multiple, 1.0))

    rows = {
        row["router"]: row
        for row in summary(
            [
                run("round-robin", 1.0, [0.5] * 10),
                run("round-robin", 2.0, [0.5] * 2 + [5.0] * 8),  # past saturation: mostly too late
                run("epp", 2.0, [0.5] * 8, shed=2),
            ]
        )
    }
    assert rows["round-robin"]["throughput_at_slo_rps"] is not None
    assert rows["epp"]["goodput_at_top_vs_round_robin"] > 1
    assert rows["epp"]["shed_at_top"] == 2 and rows["epp"]["lost"] == 0


def test_agentic_sessions_share_the_head_and_grow_their_own_tail() -> None:
    workload = AgenticWorkload(
        sessions=3, turns=3, shared_prompt_tokens=40, turn_tokens=5, assistant_turn_tokens=2
    )
    specs = workload.requests("m", seed=1)
    assert len(specs) == 9
    heads = {s.body["messages"][0]["content"] for s in specs}
    assert len(heads) == 1 and len(heads.pop()) == 40 * CHARS_PER_TOKEN
    by_session: dict[str, list[int]] = {}
    for spec in specs:
        by_session.setdefault(spec.group, []).append(len(spec.body["messages"]))
    assert all(lengths == [2, 4, 6] for lengths in by_session.values())  # turns in order


def test_the_measured_stack_configs_are_what_the_stacks_render() -> None:
    from epp.config.samples import IN_FLIGHT_AWARE_CONFIG
    from pulumi_llmd.components.pickerconfig import in_flight_aware_config, with_flow_control
    from pulumi_llmd.config.models import EppFlowControlConfig

    assert with_flow_control(in_flight_aware_config(), EppFlowControlConfig()) == yaml.safe_load(
        IN_FLIGHT_AWARE_CONFIG
    )
    switched_on = with_flow_control(in_flight_aware_config(), EppFlowControlConfig(enabled=True))
    assert yaml.safe_load(fc_defaults_config()) == switched_on


def test_both_flow_control_configs_load_cleanly() -> None:
    for text in (fc_defaults_config(), tuned_config(Settings()), tuned_config(Settings(gate="concurrency"))):
        config = load_config(text)
        assert config.flow_control is not None and config.warnings == []
    tuned = load_config(tuned_config(Settings()))
    assert tuned.flow_control is not None and tuned.flow_control.default_request_ttl == 0.3
    assert tuned.flow_control.detector.type_name == "utilization-detector"


def test_capacity_knee_is_the_best_point_within_the_slo() -> None:
    from benchmarks.capacity import TARGETS, knee_text, table

    target = TARGETS["sim-pod"]
    light = point_of([result(i, ttft=0.2) for i in range(10)], 2.0, target.ttft_slo_s)
    heavy = point_of([result(i, ttft=3.0) for i in range(20)], 8.0, target.ttft_slo_s)
    text = knee_text(target, [light, heavy])
    assert text.startswith(f"Knee: **{light.throughput_rps:.2f} req/s**")
    assert "| 8 |" in table([light, heavy]) and "| no |" in table([light, heavy])
