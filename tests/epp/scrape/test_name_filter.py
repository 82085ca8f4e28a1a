"""Scrapes ask only for the metrics the EPP reads (``name[]``), once the filtered page is verified
against the full one per endpoint; servers that ignore the filter, refuse the path or drop a family
keep being scraped in full, and a filtered page that breaks never costs a failed scrape."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from epp import metrics as epp_metrics
from epp.datastore import Datastore, Endpoint, EndpointMetrics, EndpointSpec
from epp.scrape import scraper as scraper_module
from epp.scrape.http import HttpError
from epp.scrape.parser import VLLM, parse_metrics
from epp.scrape.scraper import MetricsScraper, filtered_paths
from epp.server.tls import self_signed
from tests.support.fake_metrics import FakeMetricsServer, filter_page, vllm_metrics_page

PAGE = vllm_metrics_page(waiting=2, running=3, kv=0.25, loras=("sql",), max_lora=4)
WANTED = [
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:lora_requests_info",
    "vllm:cache_config_info",
]
FULL = "/metrics"
SAME_PATH, SLASHED = filtered_paths(FULL, VLLM)


def _values(metrics: EndpointMetrics) -> EndpointMetrics:
    return dataclasses.replace(metrics, updated_at=0.0)


async def _scraped(server: FakeMetricsServer, **kwargs: object) -> tuple[MetricsScraper, Endpoint]:
    """A started scraper over ``server`` with no poll task: only the test calls scrape()."""
    await server.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.05, **kwargs)  # type: ignore[arg-type]
    scraper._start = lambda endpoint, first_delay: None  # type: ignore[method-assign]
    await scraper.start()
    datastore.replace_endpoints([EndpointSpec("pod", "127.0.0.1", 1, server.port)])
    (endpoint,) = datastore.endpoints()
    return scraper, endpoint


def _fail_fetches(
    monkeypatch: pytest.MonkeyPatch,
    scraper: MetricsScraper,
    failure_for: Callable[[str], BaseException | None],
) -> None:
    """The scraper's GETs of a path raise ``failure_for(path)`` where that is not None."""
    real_fetch = scraper._fetch

    async def fetch(target: Endpoint, path: str) -> tuple[int, bytes]:
        failure = failure_for(path)
        if failure is not None:
            raise failure
        return await real_fetch(target, path)

    monkeypatch.setattr(scraper, "_fetch", fetch)


def test_the_candidates_name_every_metric_read_on_the_path_then_with_a_trailing_slash() -> None:
    same, slashed = filtered_paths("/metrics", VLLM)
    assert urlsplit(same).path == "/metrics" and urlsplit(slashed).path == "/metrics/"
    for candidate in (same, slashed):
        assert parse_qs(urlsplit(candidate).query) == {"name[]": WANTED}
    assert filtered_paths("/metrics/", VLLM) == [f"/metrics/?{urlsplit(same).query}"]
    assert filtered_paths("/metrics?format=text", VLLM) == []  # a query of its own: left alone


async def test_a_server_that_filters_on_the_slashed_path_is_scraped_filtered_after_one_check() -> None:
    server = FakeMetricsServer(PAGE, filtering=True)
    scraper, endpoint = await _scraped(server)
    try:
        assert await scraper.scrape(endpoint)
        # The full page, then the candidates: /metrics ignores the query (not smaller), /metrics/ filters.
        assert server.paths == [FULL, SAME_PATH, SLASHED]
        from_full = _values(endpoint.metrics)
        assert from_full == _values(parse_metrics(PAGE, 0.0))

        for _ in range(3):
            assert await scraper.scrape(endpoint)
        assert server.paths[3:] == [SLASHED] * 3
        assert epp_metrics.FILTERED_ENDPOINTS._value.get() == 1
        assert _values(endpoint.metrics) == from_full  # the same numbers, LoRA and cache info included
        assert endpoint.metrics.running_loras == frozenset({"sql"})
        assert endpoint.metrics.num_gpu_blocks == 2048

        server.page = vllm_metrics_page(waiting=0, running=1, kv=0.5)
        assert await scraper.scrape(endpoint)
        assert (endpoint.metrics.waiting, endpoint.metrics.running, endpoint.metrics.kv_usage) == (0, 1, 0.5)

        scraper.datastore.replace_endpoints([])  # the pod left: its verdict and the count go with it
        assert scraper.filtered_path(endpoint) is None
        assert epp_metrics.FILTERED_ENDPOINTS._value.get() == 0
    finally:
        await scraper.stop()
        await server.stop()


async def test_https_scrapes_are_filtered_the_same_way(tmp_path: Path) -> None:
    # HTTPS goes through aiohttp, not the lean client: the candidates' encoded queries must survive it.
    pair = self_signed()
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = FakeMetricsServer(PAGE, filtering=True, ssl_context=context)
    scraper, endpoint = await _scraped(server, scheme="https", insecure_skip_verify=True)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        # (aiohttp sends the colons of the query unescaped: the same query once decoded.)
        expected = [FULL, SAME_PATH, SLASHED, SLASHED]
        assert [unquote(path) for path in server.paths] == [unquote(path) for path in expected]
        assert _values(endpoint.metrics) == _values(parse_metrics(PAGE, 0.0))
    finally:
        await scraper.stop()
        await server.stop()


async def test_a_server_that_ignores_the_filter_or_lacks_the_path_keeps_the_full_page() -> None:
    server = FakeMetricsServer(PAGE)  # /metrics ignores name[]; /metrics/ is a 404
    scraper, endpoint = await _scraped(server)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert server.paths == [FULL, SAME_PATH, FULL]
        assert endpoint.scrape_failures == 0
        assert epp_metrics.FILTERED_ENDPOINTS._value.get() == 0
    finally:
        await scraper.stop()
        await server.stop()


async def test_an_ignored_filter_is_not_taken_for_one_when_the_page_shrinks_a_little() -> None:
    # The server ignores name[] and answers the full page again, a few bytes shorter because a
    # gauge changed between the two GETs (real vLLM did this in CI): that is no filter.
    longer = vllm_metrics_page(waiting=2, running=3, kv=0.2512345678, loras=("sql",), max_lora=4)
    assert len(longer) > len(PAGE)
    server = FakeMetricsServer(PAGE, first_pages=[longer])
    scraper, endpoint = await _scraped(server)
    try:
        assert await scraper.scrape(endpoint)
        assert server.paths == [FULL, SAME_PATH]
        assert scraper.filtered_path(endpoint) is None
    finally:
        await scraper.stop()
        await server.stop()


async def test_a_filter_that_drops_a_family_the_full_page_has_is_not_used() -> None:
    # A server whose filtered registry does not find the LoRA family: filtering would silently lose
    # which adapters each pod holds, so the full page stays.
    server = FakeMetricsServer(PAGE, filtering=True, unfilterable=frozenset({"vllm:lora_requests_info"}))
    scraper, endpoint = await _scraped(server)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert server.paths == [FULL, SAME_PATH, SLASHED, FULL]
        assert endpoint.metrics.running_loras == frozenset({"sql"})
    finally:
        await scraper.stop()
        await server.stop()


async def test_a_family_absent_from_both_pages_does_not_block_the_filter() -> None:
    no_lora = "\n".join(line for line in PAGE.splitlines() if "lora_requests_info" not in line) + "\n"
    server = FakeMetricsServer(no_lora, filtering=True)
    scraper, endpoint = await _scraped(server)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert server.paths[-1] == SLASHED
    finally:
        await scraper.stop()
        await server.stop()


@pytest.mark.parametrize("breakage", ["status", "empty page"])
async def test_a_filtered_page_that_breaks_falls_back_within_the_same_scrape(breakage: str) -> None:
    server = FakeMetricsServer(PAGE, filtering=True)
    scraper, endpoint = await _scraped(server)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert server.paths[-1] == SLASHED
        if breakage == "status":
            server.filtered_status = 404  # e.g. an upgrade moved the mount
        else:
            server.unfilterable = frozenset(WANTED)  # 200 with none of the core gauges
        del server.paths[:]

        assert await scraper.scrape(endpoint)  # not a failure: the full page answered
        assert endpoint.scrape_failures == 0
        assert _values(endpoint.metrics) == _values(parse_metrics(PAGE, 0.0))
        # The broken filtered GET, the full page, then the check again (neither candidate passes).
        assert server.paths == [SLASHED, FULL, SAME_PATH, SLASHED]
        assert await scraper.scrape(endpoint)
        assert server.paths[-1] == FULL
    finally:
        await scraper.stop()
        await server.stop()


async def test_malformed_http_on_the_filtered_path_falls_back_but_no_answer_fails_the_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = FakeMetricsServer(PAGE, filtering=True)
    scraper, endpoint = await _scraped(server)
    failure: list[BaseException] = []
    _fail_fetches(monkeypatch, scraper, lambda path: failure[0] if failure and path == SLASHED else None)
    try:
        assert await scraper.scrape(endpoint) and scraper.filtered_path(endpoint) == SLASHED
        failure.append(HttpError("bad chunk size"))  # the pod answered, with something unusable
        assert await scraper.scrape(endpoint)
        assert endpoint.scrape_failures == 0 and scraper.filtered_path(endpoint) is None

        failure.clear()
        assert await scraper.scrape(endpoint)  # the check passes again on the next due check only
        monkeypatch.setattr(scraper_module, "FILTER_RECHECK_S", 0.0)
        assert await scraper.scrape(endpoint)
        monkeypatch.setattr(scraper_module, "FILTER_RECHECK_S", 3600.0)
        assert scraper.filtered_path(endpoint) == SLASHED
        failure.append(TimeoutError())  # no answer at all: the pod is unreachable, as before
        assert not await scraper.scrape(endpoint)
        assert endpoint.scrape_failures == 1
    finally:
        await scraper.stop()
        await server.stop()


async def test_a_candidate_that_raises_anything_never_fails_the_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = FakeMetricsServer(PAGE, filtering=True)
    scraper, endpoint = await _scraped(server)
    _fail_fetches(monkeypatch, scraper, lambda path: None if path == FULL else ValueError("a client bug"))
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert endpoint.scrape_failures == 0 and scraper.filtered_path(endpoint) is None
    finally:
        await scraper.stop()
        await server.stop()


async def test_the_check_is_redone_after_the_recheck_period(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeMetricsServer(PAGE, filtering=True, filtered_status=404)
    scraper, endpoint = await _scraped(server)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert server.paths[-1] == FULL  # no usable filter yet
        server.filtered_status = 200  # e.g. the pod was upgraded in place
        monkeypatch.setattr(scraper_module, "FILTER_RECHECK_S", 0.0)
        assert await scraper.scrape(endpoint)
        monkeypatch.setattr(scraper_module, "FILTER_RECHECK_S", 3600.0)
        assert await scraper.scrape(endpoint)
        assert server.paths[-1] == SLASHED
    finally:
        await scraper.stop()
        await server.stop()


async def test_a_failed_full_page_is_a_failed_scrape_and_checks_nothing() -> None:
    server = FakeMetricsServer(PAGE, filtering=True, status=503)
    scraper, endpoint = await _scraped(server)
    try:
        assert not await scraper.scrape(endpoint)
        assert server.paths == [FULL] and endpoint.scrape_failures == 1
    finally:
        await scraper.stop()
        await server.stop()


async def test_name_filter_off_scrapes_the_configured_path_only() -> None:
    server = FakeMetricsServer(PAGE, filtering=True)
    scraper, endpoint = await _scraped(server, name_filter=False)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert server.paths == [FULL, FULL]
    finally:
        await scraper.stop()
        await server.stop()


def test_the_fake_filter_keeps_exactly_the_named_families() -> None:
    lines = filter_page(PAGE, ["vllm:num_requests_waiting"]).splitlines()
    assert lines[:2] == [
        "# HELP vllm:num_requests_waiting vllm:num_requests_waiting help text.",
        "# TYPE vllm:num_requests_waiting gauge",
    ]
    # The one sample, not vllm:num_requests_waiting_by_reason, whose name merely starts the same.
    assert [line.split("{")[0] for line in lines[2:]] == ["vllm:num_requests_waiting"]
