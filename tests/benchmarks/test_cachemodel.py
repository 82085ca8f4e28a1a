"""The cache model behind the precise benchmark's analysis (benchmarks/cachemodel.py): with one EPP
whose LRU capacity is the pod's KV (autoTune), approximate routing's picture of the pods' caches is
exact as long as only prompts take cache space, so it routes as precise does; generated tokens'
blocks (which vLLM caches), two replicas or a wrong capacity make it go stale."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from benchmarks.cachemodel import ModelSetup, main, run

# Small enough to run in well under a second: 4 pods of 4k tokens, 24 prefixes of 1k tokens (2.3x).
SMALL = ModelSetup(pods=4, kv_tokens=4096, groups=24, prefix_tokens=1008, question_tokens=32, requests=240)


def test_one_epp_with_the_pods_capacity_believes_exactly_what_the_pods_hold() -> None:
    approx = run(replace(SMALL, output_cached=False), "approximate")
    assert approx.evictions > 0  # the working set does not fit: pods evict
    assert approx.stale == 0.0
    # What it believed the chosen pod held is what the pod held (to a block or two per request:
    # the pod frees a request's blocks when it finishes, the index touches them when it routes).
    assert approx.believed_hit_tokens == pytest.approx(approx.actual_hit_tokens, rel=0.01)
    precise = run(SMALL, "precise")
    assert precise.stale == 0.0
    assert precise.believed_hit_tokens == precise.actual_hit_tokens
    assert approx.hit_rate == pytest.approx(precise.hit_rate, abs=0.05)


def test_cached_output_blocks_are_space_approximate_does_not_count() -> None:
    private = run(replace(SMALL, output_cached=False, output_tokens=160), "approximate")
    cached = run(replace(SMALL, output_tokens=160), "approximate")
    assert cached.evictions > private.evictions
    assert cached.stale > private.stale
    assert cached.believed_hit_tokens > cached.actual_hit_tokens
    precise = run(replace(SMALL, output_tokens=160), "precise")
    assert precise.stale == 0.0 and precise.believed_hit_tokens == precise.actual_hit_tokens


def test_two_replicas_go_stale_and_miss_where_precise_does_not() -> None:
    two = run(replace(SMALL, replicas=2), "approximate")
    one = run(SMALL, "approximate")
    assert two.stale > 0
    assert two.believed_hit_tokens > two.actual_hit_tokens
    assert two.hit_rate < one.hit_rate
    assert two.hit_rate < run(SMALL, "precise").hit_rate


def test_an_overestimated_capacity_goes_stale() -> None:
    result = run(replace(SMALL, capacity_factor=4.0), "approximate")
    assert result.stale > 0
    assert result.believed_hit_tokens > result.actual_hit_tokens


def test_round_robin_spreads_and_hits_least() -> None:
    assert run(SMALL, "round-robin").hit_rate < run(SMALL, "approximate").hit_rate


def test_cli_prints_the_three_routers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--pods", "2", "--kv-tokens", "2048", "--groups", "8", "--prefix-tokens", "512"]
    argv += ["--requests", "40"]
    assert main([*argv, "--weights", "3,2,2", "--precise-weights", "2,1,1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["router"] for r in out["results"]] == ["round-robin", "approximate", "precise"]
    assert out["setup"]["precise_weights"] == [2.0, 1.0, 1.0]


def test_cli_refuses_bad_weights() -> None:
    with pytest.raises(SystemExit):
        main(["--weights", "1,2"])
