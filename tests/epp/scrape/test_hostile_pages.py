"""Issue 12 finding 4: a /metrics page with +Inf or a label like ``1e999`` raised OverflowError,
which killed the pod's poll task for good. Every such page must be a counted, logged scrape
failure that the endpoint recovers from, and a poll task must never stay dead."""

from __future__ import annotations

import asyncio
import logging
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp import metrics as epp_metrics
from epp.datastore import Datastore, EndpointSpec
from epp.scrape import parser as parser_module
from epp.scrape.parser import MetricsParseError, parse_metrics
from epp.scrape.scraper import MetricsScraper
from tests.support.epp import wait_until
from tests.support.fake_metrics import FakeMetricsServer, vllm_metrics_page

GOOD = vllm_metrics_page(waiting=1, running=2, kv=0.5)


@pytest.mark.parametrize("value", ["+Inf", "-Inf", "NaN", "1e999"])
@pytest.mark.parametrize(
    "metric", ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"]
)
def test_non_finite_core_metrics_are_a_parse_error(metric: str, value: str) -> None:
    with pytest.raises(MetricsParseError, match="non-finite"):
        parse_metrics(_set(GOOD, metric, value), now=0.0)


def _set(page: str, metric: str, value: str) -> str:
    lines = []
    for line in page.splitlines():
        if line.startswith(metric + "{"):
            line = line.rsplit(" ", 1)[0] + " " + value
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("label", ["1e999", "inf", "-inf", "nan", "1e300", "x", ""])
def test_absurd_label_numbers_are_ignored_not_fatal(label: str) -> None:
    page = GOOD.replace('block_size="16"', f'block_size="{label}"').replace(
        'max_lora="0"', f'max_lora="{label}"'
    )
    parsed = parse_metrics(page, now=0.0)
    assert parsed.block_size is None and parsed.max_loras == 0
    assert parsed.num_gpu_blocks == 2048 and parsed.waiting == 1


@settings(deadline=None, max_examples=200)
@given(
    st.sampled_from(["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"]),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["+Inf", "-Inf", "NaN", "1e999", "-1e999", "1e308", "0x10", "1_0"]),
    ),
    st.text(alphabet="0123456789.e+-infaINFx", max_size=8),
)
def test_any_value_or_label_parses_or_raises_a_parse_error(metric: str, value: str, label: str) -> None:
    page = _set(GOOD, metric, value).replace('block_size="16"', f'block_size="{label}"')
    try:
        parsed = parse_metrics(page, now=0.0)
    except MetricsParseError as error:
        assert str(error)
        return
    assert parsed.waiting >= 0 and parsed.running >= 0 and 0.0 <= parsed.kv_usage <= 1.0
    assert parsed.block_size is None or abs(parsed.block_size) <= 2**53


@pytest.fixture
async def scraper():
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.5)
    await scraper.start()
    yield scraper
    await scraper.stop()


async def test_a_pod_reporting_inf_is_counted_logged_and_recovers(scraper, caplog) -> None:
    server = FakeMetricsServer(_set(GOOD, "vllm:num_requests_waiting", "+Inf"))
    await server.start()
    try:
        scraper.datastore.replace_endpoints([EndpointSpec("inf", "127.0.0.1", 1, server.port)])
        (pod,) = scraper.datastore.endpoints()
        errors = epp_metrics.SCRAPE_ERRORS.labels(pod.hostport)
        before = errors._value.get()
        with caplog.at_level(logging.WARNING, logger="epp.scrape.scraper"):
            await wait_until(lambda: pod.scrape_failures >= 3)
        assert "non-finite" in (pod.scrape_error or "")
        assert errors._value.get() >= before + 3
        assert any("not picking it until it recovers" in r.getMessage() for r in caplog.records)
        # The same task keeps polling: when the page is sane again, the pod is back.
        server.page = GOOD.replace('block_size="16"', 'block_size="1e999"')
        await wait_until(lambda: pod.scrape_failures == 0 and pod.metrics.waiting == 1)
        assert pod.metrics.block_size is None
    finally:
        await server.stop()


async def test_a_poll_task_that_dies_anyway_is_restarted(scraper, monkeypatch, caplog) -> None:
    server = FakeMetricsServer(GOOD)
    await server.start()
    try:
        scraper.datastore.replace_endpoints([EndpointSpec("p", "127.0.0.1", 1, server.port)])
        (pod,) = scraper.datastore.endpoints()
        await wait_until(lambda: pod.metrics.updated_at > 0)
        restarts = epp_metrics.SCRAPE_TASK_RESTARTS._value.get()

        # A bug outside scrape()'s guard (here: in the sleep between scrapes) ends the task once.
        real_sleep, failed = asyncio.sleep, []

        async def sleep_that_fails_once(delay: float) -> None:
            if not failed and asyncio.current_task() is scraper._tasks.get(pod.hostport):
                failed.append(True)
                raise OverflowError("cannot convert float infinity to integer")
            await real_sleep(delay)

        monkeypatch.setattr("epp.scrape.scraper.asyncio.sleep", sleep_that_fails_once)
        with caplog.at_level(logging.ERROR, logger="epp.scrape.scraper"):
            await wait_until(lambda: bool(failed))
            await wait_until(lambda: epp_metrics.SCRAPE_TASK_RESTARTS._value.get() == restarts + 1)
        assert any("restarting it" in r.getMessage() for r in caplog.records)
        hits = server.hits
        await wait_until(lambda: server.hits > hits + 2)  # the new task scrapes on
    finally:
        await server.stop()


async def test_an_unexpected_parser_bug_is_one_failed_scrape(scraper, monkeypatch) -> None:
    server = FakeMetricsServer(GOOD)
    await server.start()
    try:
        calls = []

        def exploding(*args: object, **kwargs: object) -> object:
            calls.append(1)
            if len(calls) == 1:
                raise OverflowError("boom")
            return parser_module.parse_metrics(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr("epp.scrape.scraper.parse_metrics", exploding)
        scraper.datastore.replace_endpoints([EndpointSpec("p", "127.0.0.1", 1, server.port)])
        (pod,) = scraper.datastore.endpoints()
        await wait_until(lambda: len(calls) >= 3 and pod.scrape_failures == 0 and pod.metrics.updated_at > 0)
    finally:
        await server.stop()


async def test_an_oversized_https_page_is_a_failed_scrape(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HTTPS goes through aiohttp, whose read() took a page of any size (the lean HTTP client stops
    # at MAX_BODY_BYTES): a pod could push gigabytes into the EPP within one scrape timeout.
    import ssl

    from epp.scrape import scraper as scraper_module
    from epp.server.tls import self_signed

    pair = self_signed()
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = FakeMetricsServer(GOOD + "# padding\n" * 2000, ssl_context=context)
    await server.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=60.0, scheme="https", insecure_skip_verify=True)
    scraper._start = lambda endpoint, first_delay: None  # type: ignore[method-assign]
    await scraper.start()
    try:
        datastore.replace_endpoints([EndpointSpec("pod", "127.0.0.1", 1, server.port)])
        (endpoint,) = datastore.endpoints()
        monkeypatch.setattr(scraper_module, "MAX_BODY_BYTES", len(GOOD) * 2)
        assert not await scraper.scrape(endpoint)
        assert endpoint.scrape_failures == 1 and "exceeds" in (endpoint.scrape_error or "")
        monkeypatch.setattr(scraper_module, "MAX_BODY_BYTES", 10 * len(server.page))
        assert await scraper.scrape(endpoint)
    finally:
        await scraper.stop()
        await server.stop()
