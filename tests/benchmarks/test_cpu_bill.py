"""benchmarks.cpu_bill's arithmetic and CPU accounting (no pods or routers started)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks import cpu_bill
from benchmarks.cpu_bill import REFERENCE, Cell, bill, section, session_cpu_seconds


def _cell(router: str, router_cpu: dict[str, float], pods_cpu: float, requests: int = 100) -> Cell:
    return Cell(
        router=router,
        rate_rps=8.0,
        requests=requests,
        failed=0,
        load_s=16.0,
        idle_s=5.0,
        router_cpu_s=router_cpu,
        pods_cpu_s=pods_cpu,
        idle_router_cpu_s=0.25,
        idle_pods_cpu_s=0.4,
        ttft_p50_ms=40.0,
        ttft_p90_ms=330.0,
        prefix_hit_rate=0.83,
    )


def test_the_bill_is_the_routers_cpu_plus_its_pods_cpu_above_the_reference() -> None:
    reference = _cell(REFERENCE, {REFERENCE: 0.3}, pods_cpu=1.0)
    epp = _cell("epp-default", {"epp": 0.9, "envoy": 0.5}, pods_cpu=1.4)
    assert bill(reference, reference) == {"router_ms": 3.0, "pods_share_ms": 0.0, "bill_ms": 3.0}
    got = bill(epp, reference)
    assert round(got["router_ms"], 6) == 14.0 and round(got["pods_share_ms"], 6) == 4.0
    assert round(got["bill_ms"], 6) == 18.0


def test_section_lists_every_router_that_ran_with_its_ratio_to_the_reference() -> None:
    cells = [
        _cell(REFERENCE, {REFERENCE: 0.3}, pods_cpu=1.0),
        _cell("epp-scrape-every-tick", {"epp": 1.2, "envoy": 0.5}, pods_cpu=2.0),
        _cell("epp-default", {"epp": 0.9, "envoy": 0.5}, pods_cpu=1.4),
    ]
    text = section(cells, (1.0, 1.5), pods=8, idle_s=5.0)
    assert "| epp-default | 8 | 14.0 (epp 9.0, envoy 5.0) | 1.40 | +4.0 | **18.0** | 6.0x |" in text
    assert "`vllm-router-cache-aware`" not in text  # not run: not described
    assert "160 scrapes/s" in text


def test_section_reports_what_the_filtered_page_saved_per_request() -> None:
    cells = [
        _cell(REFERENCE, {REFERENCE: 0.3}, pods_cpu=1.0),
        _cell("epp-full-page", {"epp": 1.1, "envoy": 0.5}, pods_cpu=1.6),
        _cell("epp-default", {"epp": 0.9, "envoy": 0.5}, pods_cpu=1.4),
    ]
    text = section(cells, (1.0, 1.5), pods=8, idle_s=5.0)
    # 0.2 s less of each over the cell's 100 requests: 2 ms per request.
    assert "changed the pods' CPU by -2.0 ms and the EPP's by -2.0 ms per request" in text


def test_session_cpu_counts_a_child_process_of_the_session() -> None:
    # A session leader that spins in a child: the child's CPU is counted under the leader's session.
    spin = (
        "import time\nend = time.process_time() + 0.1\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while session_cpu_seconds(leader.pid) < 0.1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session_cpu_seconds(leader.pid) >= 0.1
    finally:
        os.killpg(leader.pid, 9)
        leader.wait()


def test_an_unknown_router_name_is_refused_not_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    # A misspelt name used to be dropped silently: the run measured fewer routers than asked for.
    with pytest.raises(SystemExit) as exited:
        cpu_bill.main(["--routers", "sglang-cache-aware,round-robbin", "--no-write"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown round-robbin" in err and "round-robin" in err  # the Envoy-alone floor is a choice


def test_section_sets_envoys_own_share_beside_the_reference() -> None:
    cells = [
        _cell(REFERENCE, {REFERENCE: 0.3}, pods_cpu=1.0),  # 3.0 ms per request
        _cell("round-robin", {"envoy-round-robin": 0.25}, pods_cpu=1.5),
        _cell("epp-default", {"epp": 0.9, "envoy": 0.6}, pods_cpu=1.4),
    ]
    text = section(cells, (1.0, 1.5), pods=8, idle_s=5.0)
    assert (
        "- At 8 req/s Envoy alone (`round-robin`) spent 2.5 ms per request, 0.8x sglang-cache-aware's whole "
        "bill (3.0); in front of the EPP Envoy spent 6.0 ms (+3.5 ms for its side of ext_proc), 2.0x"
    ) in text
