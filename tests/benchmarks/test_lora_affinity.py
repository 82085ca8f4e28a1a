"""The LoRA affinity benchmark: its EPP profile is the one the stack renders, its workload is data,
its pods get vLLM's LoRA flags, and a quick run goes end to end (real pods, routers, client)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from benchmarks.lora_affinity import LORA_CONFIG, AdapterWorkload, LoraTiming
from pulumi_llmd.components.pickerconfig import render_epp_config
from pulumi_llmd.config.models import EppConfig
from tests.support.paths import REPO_ROOT


def test_the_profile_is_the_one_the_stack_renders_for_a_pool_with_adapters() -> None:
    rendered = render_epp_config(EppConfig(), disaggregated=False, lora=True)
    assert yaml.safe_load(LORA_CONFIG) == yaml.safe_load(rendered)


def test_the_workload_is_deterministic_and_skewed_towards_few_adapters() -> None:
    workload = AdapterWorkload(count=400, adapters=8)
    first, again = workload.requests("m", seed=3), workload.requests("m", seed=3)
    assert [s.body for s in first] == [s.body for s in again]
    counts = Counter(str(s.body["model"]) for s in first)
    assert set(counts) <= set(workload.adapter_names)
    # Zipf s=1 over 8: the hottest adapter ~37 %, the coldest ~5 %.
    assert counts["adapter-0"] > 3 * counts["adapter-7"]
    assert len({s.body["prompt"] for s in first}) == 400  # unrelated prompts: no prefix to share
    assert sum(workload.shares()) == pytest.approx(1.0)


def test_the_pods_serve_every_adapter_with_the_slots_and_load_time() -> None:
    flags = LoraTiming(adapters=("a", "b"), max_loras=3, lora_load_s=0.05).flags()
    assert (
        flags[flags.index("--max-loras") + 1] == "3" and flags[flags.index("--lora-load-time") + 1] == "0.05"
    )
    assert flags[flags.index("--lora-modules") + 1 :] == ["a=/adapters/a", "b=/adapters/b"]
    assert "--enable-lora" in flags and "--kv-cache-tokens" in flags


@pytest.mark.e2e
def test_a_quick_run_routes_every_request_and_counts_adapter_loads(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.lora_affinity",
            "--quick",
            "--pods",
            "2",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads((tmp_path / "lora-affinity.json").read_text())["runs"]
    assert [r["router"] for r in runs] == ["round-robin", "epp-default", "epp-lora"]
    quick = AdapterWorkload(count=12, adapters=3, prompt_tokens=80, output_tokens=4)  # what --quick sends
    used = {str(spec.body["model"]) for spec in quick.requests("sim-llama", seed=7)}
    for run in runs:
        assert run["failed"] == 0 and sum(run["requests_per_pod"].values()) == 12
        # Every adapter used is put into a slot at least once somewhere; never more than once a request.
        assert len(used) <= run["adapter_loads"] <= 12
