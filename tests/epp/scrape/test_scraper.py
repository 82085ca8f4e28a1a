"""The targeted /metrics parser (cross-checked against prometheus_client) and the scraper
against fake model servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.director import SchedulingDirector
from epp.scrape.parser import _LABEL_BLOCK, MetricsParseError, _label_block_end, parse_metrics, samples
from epp.scrape.scraper import MetricsScraper
from tests.support.epp import inference_request, wait_until
from tests.support.fake_metrics import FakeMetricsServer, vllm_metrics_page

counts = st.integers(min_value=0, max_value=10_000)
adapters = st.lists(st.from_regex(r"[a-z][a-z0-9\-]{0,8}", fullmatch=True), max_size=4, unique=True)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(counts, counts, st.floats(min_value=0, max_value=1), adapters, st.integers(0, 8))
def test_parser_agrees_with_prometheus_client(
    waiting: int, running: int, kv: float, loras: list[str], max_lora: int
) -> None:
    page = vllm_metrics_page(
        waiting=waiting, running=running, kv=kv, loras=tuple(loras), max_lora=max_lora, histogram_buckets=3
    )
    parsed = parse_metrics(page, now=1.0)
    reference = {
        sample.name: sample
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name
        in (
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
            "vllm:kv_cache_usage_perc",
            "vllm:lora_requests_info",
        )
    }
    assert parsed.waiting == reference["vllm:num_requests_waiting"].value == waiting
    assert parsed.running == reference["vllm:num_requests_running"].value == running
    assert parsed.kv_usage == pytest.approx(reference["vllm:kv_cache_usage_perc"].value)
    lora_labels = reference["vllm:lora_requests_info"].labels
    assert parsed.running_loras == frozenset(filter(None, lora_labels["running_lora_adapters"].split(",")))
    assert parsed.max_loras == max_lora
    assert (parsed.block_size, parsed.num_gpu_blocks, parsed.updated_at) == (16, 2048, 1.0)


def test_parser_sums_data_parallel_engines_and_takes_fullest_kv() -> None:
    page = (
        'vllm:num_requests_waiting{engine="0"} 2\nvllm:num_requests_waiting{engine="1"} 3\n'
        'vllm:num_requests_running{engine="0"} 1\nvllm:num_requests_running{engine="1"} 1\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.2\nvllm:kv_cache_usage_perc{engine="1"} 0.7\n'
    )
    parsed = parse_metrics(page, now=0.0)
    assert (parsed.waiting, parsed.running, parsed.kv_usage) == (5, 2, 0.7)


def test_parser_reads_pre_rename_kv_metric_and_newest_lora_sample() -> None:
    page = (
        "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:gpu_cache_usage_perc 0.5\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="new",waiting_lora_adapters=""} 20\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters="w1,w2"} 10\n'
    )
    parsed = parse_metrics(page, now=0.0)
    assert parsed.kv_usage == 0.5
    assert parsed.running_loras == frozenset({"new"}) and parsed.waiting_loras == frozenset()


def test_samples_skips_longer_names_and_handles_braces_in_label_values() -> None:
    page = 'x_total 1\nx{a="}{"} 2\nx 3 1700000000\nxy 9'
    assert list(samples(page, "x")) == [('a="}{"', 2.0), ("", 3.0)]


# Label text built from the characters that matter to the block's end: quotes, braces, backslashes.
label_text = st.text(alphabet='a="}{\\ ,x', max_size=40)


@settings(deadline=None)
@given(label_text, st.sampled_from(["", "} 1", ' 2\nx{b="}"} 3']))
def test_the_fast_label_block_end_agrees_with_the_regex(inner: str, tail: str) -> None:
    text = "x{" + inner + tail
    match = _LABEL_BLOCK.match(text, 1)
    assert _label_block_end(text, 1) == (-1 if match is None else match.end())


def test_a_real_filtered_vllm_page_parses_with_its_cache_info() -> None:
    # /metrics/?name[]=... from vllm.entrypoints.openai.api_server 0.32.0 (CPU, the tiny model):
    # cache_config_info's 37 labels are what the fast label-block path is for.
    page = (Path(__file__).parent / "fixtures" / "vllm-0.32-filtered.txt").read_text()
    metrics = parse_metrics(page, 1.0)
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (0, 0, 0.0)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (128, 4096)


def test_samples_read_one_metric_group_only() -> None:
    """The exposition format groups a metric's samples; the parser stops at the group's end."""
    page = 'x{e="0"} 1\nx{e="1"} 2\nx_sum 5\ny 3\nx{e="2"} 4\n'
    assert [value for _, value in samples(page, "x")] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("vllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.1\n", "lacks vllm:num_requests_waiting"),
        ("<html>not metrics</html>", "lacks"),
        ("vllm:num_requests_waiting abc\n", "bad value"),
        ('vllm:num_requests_waiting{a="b" 1\n', "unterminated"),
    ],
)
def test_parser_rejects_pages_that_are_not_model_server_metrics(page: str, message: str) -> None:
    with pytest.raises(MetricsParseError, match=message):
        parse_metrics(page, now=0.0)


async def test_scraper_updates_metrics_marks_failures_and_recovers() -> None:
    healthy, broken = FakeMetricsServer(vllm_metrics_page(waiting=4, kv=0.3)), FakeMetricsServer(status=500)
    await healthy.start()
    await broken.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.5)
    await scraper.start()
    try:
        datastore.replace_endpoints(
            [
                EndpointSpec("ok", "127.0.0.1", 1, healthy.port),
                EndpointSpec("bad", "127.0.0.1", 2, broken.port),
            ]
        )
        ok, bad = datastore.endpoints()
        await wait_until(lambda: ok.metrics.updated_at > 0 and bad.scrape_failures > 0)
        assert (ok.metrics.waiting, ok.metrics.kv_usage) == (4, 0.3)
        assert "HTTP 500" in (bad.scrape_error or "")

        director = SchedulingDirector(datastore, load_config(None))
        picks = {(await director.handle_request(inference_request())).endpoints[0] for _ in range(10)}
        assert picks == {ok.hostport}

        broken.status = 200
        await wait_until(lambda: bad.scrape_failures == 0 and bad.metrics.updated_at > 0)

        hits = healthy.hits
        datastore.replace_endpoints([EndpointSpec("bad", "127.0.0.1", 2, broken.port)])  # "ok" leaves
        await asyncio.sleep(0.1)
        assert healthy.hits <= hits + 1  # its polling task was cancelled
    finally:
        await scraper.stop()
        await healthy.stop()
        await broken.stop()


async def test_unreachable_endpoint_counts_as_failed() -> None:
    server = FakeMetricsServer()
    await server.start()
    port = server.port
    await server.stop()  # nothing listens there any more
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.5)
    await scraper.start()
    try:
        datastore.replace_endpoints([EndpointSpec("gone", "127.0.0.1", 1, port)])
        (gone,) = datastore.endpoints()
        await wait_until(lambda: gone.scrape_failures >= 2)
        assert gone.metrics.updated_at == 0.0
    finally:
        await scraper.stop()


async def test_metrics_source_port_overrides_every_endpoints_metrics_port() -> None:
    """llm-d-router's metrics-data-source ``port`` scrapes every endpoint on that port instead
    of its own (source/metrics/datasource.go WithPortOverride)."""
    server = FakeMetricsServer(vllm_metrics_page(waiting=7, kv=0.1))
    await server.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.5, port=server.port)
    await scraper.start()
    try:
        datastore.replace_endpoints([EndpointSpec("pod", "127.0.0.1", 8000, 1)])  # nothing on port 1
        (pod,) = datastore.endpoints()
        await wait_until(lambda: pod.metrics.updated_at > 0)
        assert pod.metrics.waiting == 7 and pod.scrape_failures == 0
    finally:
        await scraper.stop()
        await server.stop()
