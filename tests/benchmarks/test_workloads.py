"""Workloads: sizes, sharing structure and ordering are what their definitions say."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter

import pytest

from benchmarks.workloads import (
    CHARS_PER_TOKEN,
    CacheChurnWorkload,
    MultiTenantWorkload,
    MultiTurnChatWorkload,
    RandomWorkload,
    SharedPrefixWorkload,
    poisson_offsets,
    random_text,
)


def test_random_text_has_exact_length() -> None:
    import random

    rng = random.Random(1)
    for tokens in (0, 1, 7, 300):
        assert len(random_text(rng, tokens)) == tokens * CHARS_PER_TOKEN


def test_shared_prefix_groups_share_exactly_the_system_prompt() -> None:
    workload = SharedPrefixWorkload(
        groups=3, prompts_per_group=4, system_prompt_tokens=50, question_tokens=10, output_tokens=5
    )
    specs = workload.requests("m", seed=7)
    assert len(specs) == 12
    by_group: dict[str, list[str]] = {}
    for spec in specs:
        assert spec.path == "/v1/completions" and spec.body["stream"] is True and spec.body["max_tokens"] == 5
        by_group.setdefault(spec.group, []).append(spec.body["prompt"])
    assert sorted(by_group) == ["g0", "g1", "g2"]
    prefixes = {group: prompts[0][: 50 * CHARS_PER_TOKEN] for group, prompts in by_group.items()}
    assert len(set(prefixes.values())) == 3  # each group has its own system prompt
    for group, prompts in by_group.items():
        assert all(p.startswith(prefixes[group]) for p in prompts)
        assert len(set(prompts)) == 4  # questions differ
    # Shuffled across groups, and the same seed gives the same requests.
    assert [s.group for s in specs] != sorted(s.group for s in specs)
    assert [s.body for s in workload.requests("m", seed=7)] == [s.body for s in specs]


def test_multi_turn_chat_sends_each_conversation_in_order_and_extends_history() -> None:
    workload = MultiTurnChatWorkload(
        conversations=4,
        turns=3,
        system_prompt_tokens=20,
        user_turn_tokens=5,
        assistant_turn_tokens=4,
        output_tokens=3,
    )
    specs = workload.requests("m", seed=3)
    assert len(specs) == 12
    seen: dict[str, list[list[dict[str, str]]]] = {}
    for spec in specs:
        seen.setdefault(spec.group, []).append(list(spec.body["messages"]))
    for turns in seen.values():
        assert [len(m) for m in turns] == [2, 4, 6]  # system+user, then +assistant+user each turn
        for earlier, later in itertools.pairwise(turns):
            assert later[: len(earlier)] == earlier
    assert specs[0].prompt_tokens == 25 and max(s.prompt_tokens for s in specs) == 20 + 3 * 5 + 2 * 4


def test_random_workload_prompts_are_unrelated() -> None:
    specs = RandomWorkload(count=20, prompt_tokens=40, output_tokens=2).requests("m", seed=1)
    assert len({s.body["prompt"][:64] for s in specs}) == 20


def test_bad_sizes_are_rejected_with_their_names() -> None:
    with pytest.raises(ValueError, match="groups=0"):
        SharedPrefixWorkload(groups=0)
    with pytest.raises(ValueError, match="rate must be > 0"):
        poisson_offsets(3, 0.0, seed=1)


def test_poisson_offsets_have_the_requested_mean_gap() -> None:
    offsets = poisson_offsets(4000, rate=20.0, seed=5)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert offsets[0] == 0.0 and all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(1 / 20.0, rel=0.06)


def test_multi_tenant_requests_are_a_tenant_context_plus_a_unique_query() -> None:
    workload = MultiTenantWorkload(tenants=3, requests_per_tenant=4, context_tokens=50, query_tokens=10)
    specs = workload.requests("m", seed=2)
    assert len(specs) == 12 and {s.group for s in specs} == {"t0", "t1", "t2"}
    for tenant in ("t0", "t1", "t2"):
        prompts = [s.body["prompt"] for s in specs if s.group == tenant]
        assert len({p[:200] for p in prompts}) == 1 and len(set(prompts)) == 4
        assert all(p[200] == "\n" for p in prompts)  # the context ends where the query begins
    assert {s.prompt_tokens for s in specs} == {60}
    assert specs == workload.requests("m", seed=2)


def test_cache_churn_is_uniform_or_zipf_skewed() -> None:
    uniform = CacheChurnWorkload(groups=10, prompts_per_group=5, prefix_tokens=20, question_tokens=5)
    counts = Counter(s.group for s in uniform.requests("m", seed=1))
    assert set(counts.values()) == {5} and len(counts) == 10
    assert uniform.working_set_tokens == 250
    skewed = CacheChurnWorkload(
        groups=10, prompts_per_group=50, prefix_tokens=20, question_tokens=5, zipf=1.2
    )
    counts = Counter(s.group for s in skewed.requests("m", seed=1))
    assert sum(counts.values()) == 500 and counts["p0"] > 3 * counts.get("p9", 0)
    with pytest.raises(ValueError, match="zipf must be >= 0"):
        CacheChurnWorkload(zipf=-1)
