"""BENCHMARKS.md section, plots and JSON from hand-made run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import publish, report
from benchmarks.results_model import RunRecord
from benchmarks.stats import Balance, Distribution, RunStats


def record(router: str, rate: float, ttft_p50: float, workload: str = "shared-prefix") -> RunRecord:
    ttft = Distribution(ttft_p50, ttft_p50 * 2, ttft_p50 * 3, ttft_p50 * 1.5, ttft_p50 * 4)
    latency = Distribution(1.0, 1.5, 2.0, 1.1, 2.5)
    stats = RunStats(
        requests=10,
        completed=10,
        failed=0,
        duration_s=5.0,
        throughput_rps=2.0,
        output_tokens_per_s=40.0,
        ttft=ttft,
        latency=latency,
        ttft_slo_s=0.3,
        goodput_rps=1.0,
        slo_attainment=0.5,
    )
    return RunRecord(workload, router, rate, stats, 0.5, Balance.of({"pod-0": 6, "pod-1": 4}))


@pytest.fixture
def records() -> list[RunRecord]:
    return [
        record("round-robin", 4, 0.300),
        record("round-robin", 8, 0.400),
        record("epp-default", 4, 0.040),
        record("epp-default", 8, 0.080),
        record("sglang-cache-aware", 4, 0.050),
        record("sglang-cache-aware", 8, 0.100),
        record("round-robin", 4, 0.2, workload="random"),
        record("epp-default", 4, 0.2, workload="random"),
    ]


def test_summary_speedups_and_goal(records: list[RunRecord]) -> None:
    rows = publish.summary_rows([r for r in records if r.workload == "shared-prefix"])
    by_router = {row["router"]: row for row in rows}
    assert [row["router"] for row in rows] == ["epp-default", "sglang-cache-aware", "round-robin"]
    epp = by_router["epp-default"]["by_rate"]
    assert [e["rate_rps"] for e in epp] == [4, 8]
    assert epp[0]["speedup_vs_round_robin"] == pytest.approx(7.5)  # 300 / 40 ms at 4 req/s
    assert epp[1]["speedup_vs_round_robin"] == pytest.approx(5.0)  # 400 / 80 ms at 8 req/s
    # p90 = 2 x p50: 0.16 s at 8 req/s meets the 0.3 s SLO for the EPP; round-robin never does.
    assert by_router["epp-default"]["throughput_at_slo_rps"] == pytest.approx(2.0)
    assert by_router["round-robin"]["throughput_at_slo_rps"] is None
    verdict = publish.goal_verdict(rows)
    assert "at 4 req/s: 40 ms, 7.5x round-robin (met), best peer sglang-cache-aware 50 ms (met)" in verdict
    assert "at 8 req/s: 80 ms, 5.0x round-robin (met), best peer sglang-cache-aware 100 ms (met)" in verdict
    slower = [
        *records,
        record("vllm-router-cache-aware", 4, 0.030),
        record("vllm-router-cache-aware", 8, 0.3),
    ]
    verdict = publish.goal_verdict(publish.summary_rows([r for r in slower if r.workload == "shared-prefix"]))
    assert "best peer vllm-router-cache-aware 30 ms (NOT met)" in verdict


def test_publish_writes_section_plots_and_json(
    records: list[RunRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path / "results")
    setup = {
        "pool_description": "2 pods",
        "ttft_slo_s": 0.3,
        "load_average_1m": {"before": 0.5, "after": 1.5},
        "routers": {"round-robin": "Envoy RR", "epp-default": "EPP", "sglang-cache-aware": "peer"},
        "workloads": {"shared-prefix": "groups of prompts", "random": "unrelated prompts"},
    }
    data = publish.publish(
        records, setup, "./dev bench", write_markdown=True, results_dir=tmp_path / "results"
    )
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- section:routing -->" in text and "Command: `./dev bench`" in text
    assert "### Workload `shared-prefix`" in text and "### Workload `random`" in text
    assert "**Goal check:** EPP default TTFT p50" in text
    assert "| epp-default | 40 (7.5x) | 80 (5.0x) | 2.00 |" in text
    assert "| round-robin | 300 (1.0x) | 400 (1.0x) | missed at every rate |" in text
    for name in ("routing-shared-prefix.png", "routing-random.png"):
        assert (tmp_path / "results" / name).read_bytes().startswith(b"\x89PNG")
    saved = json.loads((tmp_path / "results" / "routing.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(data["summary"]))
    assert len(saved["runs"]) == len(records)


def test_run_records_round_trip_through_json(records: list[RunRecord]) -> None:
    for original in records:
        assert RunRecord.from_json(json.loads(json.dumps(original.to_json()))) == original
