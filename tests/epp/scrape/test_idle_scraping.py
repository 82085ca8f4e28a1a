"""Quiet pods are scraped every idle interval, not every tick: when a pod counts as quiet, what ends
the quiet, and that a skipped tick vouches for the last page (fresh for staleness checks)."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.director import SchedulingDirector
from epp.scrape.scraper import MetricsScraper
from tests.support.epp import inference_request, wait_until
from tests.support.fake_metrics import FakeMetricsServer, vllm_metrics_page

IDLE_PAGE = vllm_metrics_page(waiting=0, running=0, kv=0.0)
BUSY_PAGE = vllm_metrics_page(waiting=0, running=1, kv=0.1)


Scraped = tuple[MetricsScraper, Endpoint, FakeMetricsServer]


async def _scraped(page: str, idle_interval: float = 10.0) -> Scraped:
    """A started scraper over one fake pod serving ``page``, with no poll task: the test alone calls
    scrape(), so nothing races its assertions."""
    server = FakeMetricsServer(page)
    await server.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.01, idle_interval=idle_interval)
    scraper._start = lambda endpoint, first_delay: None  # type: ignore[method-assign]
    await scraper.start()
    datastore.replace_endpoints([EndpointSpec("pod", "127.0.0.1", 1, server.port)])
    (endpoint,) = datastore.endpoints()
    return scraper, endpoint, server


async def test_an_idle_unchanged_page_makes_the_pod_quiet_until_the_idle_interval_ends() -> None:
    scraper, endpoint, server = await _scraped(IDLE_PAGE)
    try:
        assert await scraper.scrape(endpoint)
        first = endpoint.metrics.updated_at
        # The first page differs from the never-scraped value: not yet known to be unchanged.
        assert not scraper.may_skip(endpoint, first + 0.1)
        assert await scraper.scrape(endpoint)
        scraped_at = endpoint.metrics.updated_at
        assert scraper.may_skip(endpoint, scraped_at + 0.1)
        assert scraper.may_skip(endpoint, scraped_at + 9.9)
        assert not scraper.may_skip(endpoint, scraped_at + 10.0)
    finally:
        await scraper.stop()
        await server.stop()


async def test_routing_to_the_pod_or_holding_a_request_there_ends_the_quiet() -> None:
    scraper, endpoint, server = await _scraped(IDLE_PAGE)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        now = endpoint.metrics.updated_at + 0.1
        assert scraper.may_skip(endpoint, now)

        director = SchedulingDirector(scraper.datastore, load_config(None))
        request = inference_request()
        result = await director.handle_request(request)
        assert result.endpoints[0] == endpoint.hostport
        assert not scraper.may_skip(endpoint, now)  # routed there since the last scrape, in flight
        director.handle_response_complete(request, None, failed=False)
        assert endpoint.in_flight == 0
        assert not scraper.may_skip(endpoint, now)  # finished, but routed since the last scrape

        assert await scraper.scrape(endpoint)  # sees the same idle page: quiet again
        assert scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.1)
        endpoint.in_flight = 1  # e.g. held since before the scrape
        assert not scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.1)
    finally:
        await scraper.stop()
        await server.stop()


async def test_a_busy_or_changing_page_or_a_failed_scrape_is_never_quiet() -> None:
    scraper, endpoint, server = await _scraped(BUSY_PAGE)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert not scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.1)  # running 1

        server.page = IDLE_PAGE  # the request finished: the page changed
        assert await scraper.scrape(endpoint)
        assert not scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.1)
        assert await scraper.scrape(endpoint)
        assert scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.1)

        server.status = 500
        assert not await scraper.scrape(endpoint)
        assert not scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.1)
    finally:
        await scraper.stop()
        await server.stop()


async def test_idle_interval_zero_scrapes_every_tick() -> None:
    scraper, endpoint, server = await _scraped(IDLE_PAGE, idle_interval=0.0)
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert not scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.001)
    finally:
        await scraper.stop()
        await server.stop()


async def test_the_poll_loop_skips_quiet_ticks_vouches_for_the_page_and_wakes_on_routing() -> None:
    server = FakeMetricsServer(IDLE_PAGE)
    await server.start()
    datastore = Datastore()
    # An idle interval far beyond the test: after two scrapes the pod stays quiet until routed to.
    # (No name filter: its one-off check GETs would blur the count of pages; test_name_filter.py.)
    scraper = MetricsScraper(datastore, interval=0.01, idle_interval=3600.0, timeout=1.0, name_filter=False)
    await scraper.start()
    try:
        datastore.replace_endpoints([EndpointSpec("pod", "127.0.0.1", 1, server.port)])
        (endpoint,) = datastore.endpoints()
        await wait_until(lambda: scraper.skipped >= 1)
        hits = server.hits
        assert hits == 2  # the first page, then the same page again: quiet from then on
        vouched_from = endpoint.metrics.updated_at
        await wait_until(lambda: scraper.skipped >= 5 and endpoint.metrics.updated_at > vouched_from)
        assert server.hits == hits
        assert endpoint.metrics_fresh(endpoint.metrics.updated_at, staleness=0.2)

        endpoint.routed += 1  # what the director does when it routes a request here
        await wait_until(lambda: server.hits > hits)
    finally:
        await scraper.stop()
        await server.stop()


async def test_an_idle_interval_not_above_the_scrape_interval_scrapes_every_tick() -> None:
    scraper, endpoint, server = await _scraped(IDLE_PAGE, idle_interval=0.01)  # == the interval
    try:
        assert await scraper.scrape(endpoint) and await scraper.scrape(endpoint)
        assert not scraper.may_skip(endpoint, endpoint.metrics.updated_at + 0.001)
    finally:
        await scraper.stop()
        await server.stop()


def test_a_negative_idle_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="idle scrape interval"):
        MetricsScraper(Datastore(), interval=0.05, idle_interval=-1)
    # A slower scrape period than the idle default is not an error: every tick scrapes then.
    slow = MetricsScraper(Datastore(), interval=1.0, idle_interval=0.5)
    assert not slow.may_skip(_endpoint(), 0.0)


def _endpoint() -> Endpoint:
    return Endpoint(EndpointSpec("pod", "127.0.0.1", 1, 1))
