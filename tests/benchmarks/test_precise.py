"""``benchmarks.precise``'s summary and checks, from a saved run (no processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.precise import FULL, markdown, summarize
from benchmarks.results_model import RunRecord
from benchmarks.workloads import CacheChurnWorkload

SAVED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "precise.json"


def _saved() -> tuple[list[RunRecord], dict[str, Any]]:
    data = json.loads(SAVED.read_text())
    return [RunRecord.from_json(run) for run in data["runs"]], data["setup"]


def test_checks_compare_precise_with_approximate_for_one_epp_and_for_two_replicas() -> None:
    records, _ = _saved()
    checks = summarize(records)["cache-churn"]["checks"]
    by = {(r.router, r.rate_rps): r for r in records if r.workload == "cache-churn"}
    for key, approx, precise in (
        ("precise_vs_approx", "epp-default", "epp-precise"),
        ("precise_vs_approx_2_replicas", "epp-default-2x", "epp-precise-2x"),
    ):
        rates = {rate for router, rate in by if router == approx} & {
            rate for router, rate in by if router == precise
        }
        assert rates and set(checks[key]) == {f"{rate:g}" for rate in rates}
        for rate in rates:
            a, p = by[(approx, rate)], by[(precise, rate)]
            assert a.stats.ttft is not None and p.stats.ttft is not None
            entry = checks[key][f"{rate:g}"]
            assert entry["ttft_p90_ratio_approx_over_precise"] == pytest.approx(
                a.stats.ttft.p90 / p.stats.ttft.p90
            )
            assert (entry["hit_rate_approx"], entry["hit_rate_precise"]) == (
                a.prefix_hit_rate,
                p.prefix_hit_rate,
            )


def test_markdown_states_both_comparisons_and_links_the_analysis() -> None:
    records, setup = _saved()
    text = markdown(records, setup)
    assert "- one EPP @ " in text and "- two EPP replicas @ " in text
    assert "docs/precise-prefix.md#why-cache-churn-alone-does-not-separate-precise-from-approximate" in text


def test_the_analysis_link_resolves_to_a_heading_of_the_doc() -> None:
    doc = (SAVED.parents[2] / "docs" / "precise-prefix.md").read_text()
    assert "### Why cache churn alone does not separate precise from approximate" in doc


def test_churn_working_set_exceeds_the_pools_kv() -> None:
    """The churn workload's prefixes need over twice what the pods can hold, so they must evict."""
    workload, timing, rates = FULL["cache-churn"]
    assert isinstance(workload, CacheChurnWorkload)
    pods = 8
    assert workload.working_set_tokens > 2 * pods * timing.kv_cache_tokens
    assert len(rates) == 2
