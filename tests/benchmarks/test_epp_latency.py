"""The added-latency benchmark's arithmetic and report (the measurement itself runs in benchmarks/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.epp_latency import PhaseResult, percentile, render_markdown, run, summary_rows
from epp.server.stream import BodyMode


def phase(path: str, rate: float, p50: float, p99: float, cpu: dict[str, float]) -> PhaseResult:
    return PhaseResult(path, rate, 5.0, 1000, 1000, 0, rate, p50, p50, p99, p99, cpu)


def test_percentile_picks_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # round(0.5 * 99) = 50 -> 51st value
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_added_latency_is_relative_to_direct_at_the_same_rate() -> None:
    results = [
        phase("direct", 200, 1.0, 2.0, {"envoy": 0.1, "backend": 0.3}),
        phase("epp-FULL_DUPLEX_STREAMED", 200, 2.5, 4.0, {"envoy": 0.3, "backend": 0.3, "epp": 1.2}),
    ]
    rows = summary_rows(results)
    assert rows[0][6:8] == ["-", "-"]
    assert rows[1][6:8] == ["1.50", "2.00"]
    assert rows[1][9] == "1.200"
    text = render_markdown(results, 5.0)
    assert (
        "**Target (< 1 ms p99 added at 200 rps, FULL_DUPLEX_STREAMED): missed** — added p99 2.00 ms" in text
    )


def test_target_met_is_reported_as_met() -> None:
    results = [
        phase("direct", 200, 1.0, 2.0, {}),
        phase("epp-FULL_DUPLEX_STREAMED", 200, 1.2, 2.5, {"epp": 0.5}),
    ]
    assert "met** — added p99 0.50 ms" in render_markdown(results, 5.0)


@pytest.mark.e2e
def test_benchmark_runs_end_to_end_at_a_tiny_rate(tmp_path: Path) -> None:
    results = run([20.0], 1.0, [BodyMode.FULL_DUPLEX_STREAMED], tmp_path, rounds=2)
    assert [r.path for r in results] == ["direct", "epp-FULL_DUPLEX_STREAMED"]
    for result in results:
        assert result.errors == 0 and result.ok == result.sent == 20
        assert 0 < result.p50_ms <= result.p99_ms
    assert set(results[1].cpu_ms_per_request) == {"envoy", "backend", "epp"}
