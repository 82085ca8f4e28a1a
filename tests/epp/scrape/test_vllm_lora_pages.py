"""The EPP's parser and lora-affinity-scorer on real vLLM 0.32 ``/metrics`` pages with LoRA on.

The fixtures were scraped from ``vllm.entrypoints.openai.api_server`` 0.32.0 (CPU) serving the tiny
model of tools/build_tiny_model.py with ``--enable-lora --max-loras 1 --lora-modules sql=...`` and a
second adapter ``chat`` loaded through ``/v1/load_lora_adapter`` (VLLM_ALLOW_RUNTIME_LORA_UPDATING),
while 4 ``sql`` requests ran and 4 ``chat`` requests waited (``-busy``, the whole page), and after
all finished (``-idle``, the LoRA and core series only). What they show about vLLM:

* ``vllm:lora_requests_info`` has one series per label set ever seen, its value the time of the
  last update; the newest says what runs now;
* both adapter labels list the same set, the adapters with running requests: the deferred ``chat``
  requests appear in neither (they are counted in ``num_requests_waiting_by_reason{reason="deferred"}``);
* there is no ``engine``/``model_name`` label on it, and ``max_lora`` is the configured limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import epp.plugins  # noqa: F401 - registers lora-affinity-scorer; run alone, nothing else did
from epp.scrape.parser import parse_metrics
from tests.support.epp import endpoint, scheduling_request

FIXTURES = Path(__file__).parent / "fixtures"


def page(name: str) -> str:
    return (FIXTURES / f"vllm-0.32-lora-{name}.txt").read_text()


def test_busy_page_reads_the_running_adapter_and_the_queue() -> None:
    metrics = parse_metrics(page("busy"), now=1.0)
    assert metrics.running_loras == frozenset({"sql"}) == metrics.waiting_loras
    assert metrics.max_loras == 1
    # num_requests_waiting, not the longer num_requests_waiting_by_reason that follows it.
    assert (metrics.running, metrics.waiting) == (4, 4)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (128, 4096)


def test_idle_page_takes_the_newest_of_three_label_sets() -> None:
    text = page("idle")
    assert text.count("vllm:lora_requests_info{") == 3
    metrics = parse_metrics(text, now=1.0)
    assert metrics.running_loras == frozenset() and metrics.waiting_loras == frozenset()
    assert metrics.max_loras == 1


def _from_page(name: str, text: str) -> object:
    metrics = parse_metrics(text, now=1.0)
    return endpoint(
        name,
        running_loras=metrics.running_loras,
        waiting_loras=metrics.waiting_loras,
        max_loras=metrics.max_loras,
    )


def test_the_scorer_sends_an_adapter_where_it_runs_and_away_from_a_full_server() -> None:
    from epp.scheduling.registry import create

    scorer = create("lora-affinity-scorer", "lora-affinity-scorer", None)
    pool = [_from_page("busy", page("busy")), _from_page("idle", page("idle"))]
    # sql runs on the busy server: affinity. chat would need a second slot there (max_lora 1).
    assert scorer.score(scheduling_request(lora="sql"), pool) == [1.0, 0.8]  # type: ignore[arg-type]
    assert scorer.score(scheduling_request(lora="chat"), pool) == [0.0, 0.8]  # type: ignore[arg-type]


def test_a_server_with_a_free_slot_is_not_taken_for_full() -> None:
    """vLLM lists each running adapter in both labels; counting the two lists separately made a
    server with max_lora 2 and one running adapter look full."""
    from epp.scheduling.registry import create

    two_slots = page("busy").replace('max_lora="1"', 'max_lora="2"')
    scorer = create("lora-affinity-scorer", "lora-affinity-scorer", None)
    [score] = scorer.score(scheduling_request(lora="chat"), [_from_page("busy", two_slots)])  # type: ignore[list-item]
    assert score == 0.8


def _lora_page(*series: tuple[str, str]) -> str:
    """A minimal page whose ``vllm:lora_requests_info`` has one series per (adapter, value)."""
    lines = ["vllm:num_requests_waiting 0", "vllm:num_requests_running 0", "vllm:kv_cache_usage_perc 0"]
    lines += [
        f'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="{name}",'
        f'waiting_lora_adapters="{name}"}} {value}'
        for name, value in series
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "series",
    [
        (("new", "2"), ("broken", "NaN"), ("old", "1")),
        (("broken", "NaN"), ("new", "2"), ("old", "1")),
        (("broken", "+Inf"), ("new", "2"), ("old", "1")),
        (("old", "1"), ("broken", "1e999"), ("new", "2")),
        (("broken", "-Inf"), ("old", "1"), ("new", "2")),
    ],
)
def test_a_non_finite_timestamp_neither_wins_nor_hides_the_newest_series(
    series: tuple[tuple[str, str], ...],
) -> None:
    """The series' value is its update time; a NaN once made every later (older) series win, and
    +Inf pinned one label set as "newest" for good, so a pod's adapters never looked changed."""
    metrics = parse_metrics(_lora_page(*series), now=1.0)
    assert metrics.running_loras == frozenset({"new"})


def test_only_non_finite_timestamps_read_as_no_lora_information() -> None:
    metrics = parse_metrics(_lora_page(("broken", "NaN"), ("other", "+Inf")), now=1.0)
    assert (metrics.running_loras, metrics.waiting_loras, metrics.max_loras) == (frozenset(), frozenset(), 0)


def test_a_fresh_lora_server_is_not_scored_as_full() -> None:
    """Real vLLM 0.32 with ``--enable-lora`` shows ``vllm:lora_requests_info`` without a sample until
    it has served a request (the gauge is set from scheduler stats; checked on the CPU server): a
    new or restarted pod reads as max_lora 0. Scored as "no room" (0), it lost every adapter
    request to a busy pod with a free slot (0.8), or even to a full one where it waits (0.6)."""
    from epp.scheduling.registry import create

    fresh_page = "\n".join(
        line for line in page("idle").splitlines() if not line.startswith("vllm:lora_requests_info{")
    )
    fresh = parse_metrics(fresh_page, now=1.0)
    assert (fresh.running_loras, fresh.max_loras) == (frozenset(), 0)
    two_slots = page("busy").replace('max_lora="1"', 'max_lora="2"')
    scorer = create("lora-affinity-scorer", "lora-affinity-scorer", None)
    pool = [_from_page("fresh", fresh_page), _from_page("busy", two_slots)]
    assert scorer.score(scheduling_request(lora="chat"), pool) == [0.8, 0.8]  # type: ignore[arg-type]
    # The adapter running on the busy pod still wins there.
    assert scorer.score(scheduling_request(lora="sql"), pool) == [0.8, 1.0]  # type: ignore[arg-type]
