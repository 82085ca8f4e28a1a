"""``./dev bench --quick`` end to end: real pods, routers and client on 127.0.0.1, tiny workloads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

pytestmark = pytest.mark.e2e


def test_quick_run_produces_consistent_results(tmp_path: Path) -> None:
    markdown_before = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else None
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--results-dir",
            str(tmp_path),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Progress goes to stderr as the run proceeds.
    assert "[1/6] shared-prefix @ 10 req/s -> round-robin" in completed.stderr
    assert "done: 6 runs" in completed.stderr
    data = json.loads((tmp_path / "routing.json").read_text())
    assert data["setup"]["pods"] == 3
    runs = data["runs"]
    assert {(r["workload"], r["router"]) for r in runs} == {
        (w, r) for w in ("shared-prefix", "multi-turn-chat", "random") for r in ("round-robin", "epp-default")
    }
    expected_requests = {"shared-prefix": 6, "multi-turn-chat": 4, "random": 4}
    for run in runs:
        stats = run["stats"]
        assert stats["requests"] == expected_requests[run["workload"]], run
        assert stats["completed"] == stats["requests"] and stats["failed"] == 0, run["error_samples"]
        ttft, latency = stats["ttft"], stats["latency"]
        assert 0 < ttft["p50"] <= ttft["p90"] <= ttft["p99"] <= ttft["max"]
        assert latency["p50"] >= ttft["p50"] and latency["max"] >= ttft["max"]
        assert stats["throughput_rps"] == pytest.approx(stats["completed"] / stats["duration_s"])
        # The pods counted exactly the requests the client completed.
        assert sum(run["balance"]["per_pod"].values()) == stats["completed"]
        assert set(run["balance"]["per_pod"]) == {"pod-0", "pod-1", "pod-2"}
        assert 0.0 <= run["prefix_hit_rate"] <= 1.0
    summary = data["summary"]["shared-prefix"]
    assert {row["router"] for row in summary} == {"round-robin", "epp-default"}
    baseline = next(r for r in summary if r["router"] == "round-robin")
    assert baseline["by_rate"][0]["speedup_vs_round_robin"] == pytest.approx(1.0)
    # --quick never touches BENCHMARKS.md.
    assert markdown_before == (BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else None)


def test_bad_arguments_are_rejected_with_a_clear_message() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--routers", "round-robin,nginx"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "unknown router 'nginx'" in completed.stderr
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--rates", "4,-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2 and "rates must be > 0" in completed.stderr


def test_a_quick_run_never_writes_over_the_committed_results(tmp_path: Path) -> None:
    from benchmarks.__main__ import results_dir
    from benchmarks.report import RESULTS_DIR

    quick = results_dir(quick=True, given=None)
    assert quick != RESULTS_DIR and quick.relative_to(ROOT).parts[0] == "build"
    assert results_dir(quick=False, given=None) == RESULTS_DIR
    assert results_dir(quick=True, given=tmp_path) == tmp_path


def test_precise_quick_run(tmp_path: Path) -> None:
    """``python -m benchmarks.precise --quick``: pods publishing KV events, precise and approximate
    EPPs (one and two replicas), sglang-router and round-robin, all completing every request."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.precise",
            "--quick",
            "--routers",
            "round-robin,epp-default,epp-precise,epp-precise-2x",
            "--results-dir",
            str(tmp_path),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    data = json.loads((tmp_path / "precise.json").read_text())
    assert {(r["workload"], r["router"]) for r in data["runs"]} == {
        (w, r)
        for w in ("cache-churn", "multi-tenant")
        for r in ("round-robin", "epp-default", "epp-precise", "epp-precise-2x")
    }
    for run in data["runs"]:
        assert run["stats"]["failed"] == 0, run["error_samples"]
        assert 0.0 <= run["prefix_hit_rate"] <= 1.0
    checks = data["summary"]["multi-tenant"]["checks"]
    assert set(checks["replicas"]) == {"epp-precise @ 10"}
    assert "10" in checks["precise_vs_approx"]


def test_quick_saturation_run_serves_or_sheds_every_request() -> None:
    """Real pods, Envoy and the EPP for a few seconds: every request is served or deliberately shed."""
    from benchmarks.saturation import QUICK_DIR
    from localrun import envoy_binary

    try:
        envoy_binary()
    except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Envoy binary not available: {exc}")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.saturation",
            "--quick",
            "--routers",
            "round-robin,epp-flow-control",
            "--parts",
            "sweep,tenants",
            "--workloads",
            "random",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    data = json.loads((QUICK_DIR / "saturation.json").read_text())
    runs = data["runs"]
    assert {r["part"] for r in runs} == {"sweep", "tenants"}
    for run in runs:
        point = run["point"]
        assert point["lost"] == 0, point["lost_samples"]
        assert point["served"] + sum(point["shed"].values()) == point["requests"]
