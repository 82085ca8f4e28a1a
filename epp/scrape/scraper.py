"""Concurrent scraping of every endpoint's model-server metrics.

One asyncio task per endpoint polls ``scheme://ip:metricsPort/path`` every ``interval`` seconds over
a keep-alive connection (plain HTTP: the lean client in :mod:`epp.scrape.http`; HTTPS: aiohttp), so
a slow or dead pod only delays itself. A successful scrape
swaps in a new :class:`EndpointMetrics`; a failure bumps the endpoint's failure count (so the
director stops picking it) and keeps the last values for diagnostics.

Idle pods are scraped less (``idle_interval``). A pod is *quiet* when its last page showed nothing
waiting or running and matched the page before it, and this EPP has routed nothing to it since that
scrape and holds nothing in flight there. While a pod is quiet its page cannot change through this
EPP, so its ticks skip the GET and vouch for the last page instead (its ``updated_at`` moves on, so
staleness checks keep treating it as fresh) until ``idle_interval`` has passed since the last real
scrape; a request routed to it ends the quiet at the next tick. Upstream polls every endpoint at
``--refresh-metrics-interval`` whatever it does (llm-d-router pkg/epp/datalayer collectors; GIE
``--refresh-metrics-interval`` 50 ms). The saving is the pods' CPU: a scrape costs a model server an
HTTP request on its API server's event loop (real vLLM renders /metrics there), about 1 ms of CPU
on the simulator, 20 per second per pod at 50 ms. What quiet skipping gives up is how soon a
quiet pod's load from *other* clients (another EPP replica, direct traffic) shows up: within
``idle_interval`` instead of ``interval``. See docs/cpu-bill.md.

Scrapes ask for only the metrics the EPP reads (``name_filter``). prometheus_client's exposition
(the ASGI app vLLM mounts at ``/metrics/``, with the trailing slash) renders only the families named
in ``name[]`` query parameters. vLLM's full page is ~48 KB and costs its API server ~7 ms of CPU per
scrape on this project's bench machine; the filtered one is ~1.7 KB and ~0.5 ms (BENCHMARKS.md,
``vllm-scrape``). Not every server honours the filter, or serves that path, so it is
*verified* per endpoint: a full scrape, then the filtered candidates; a candidate is used only if it
is at most half the full page and carries every wanted family the full page carries. That check is
redone every ``FILTER_RECHECK_S``. A filtered answer that is not a usable page (a status, malformed HTTP, no
parse) falls back to the full page within the same scrape: a broken filter costs an extra GET, never
a failed scrape. (No answer at all fails the scrape, as it would on the full page.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import operator
import random
import time
from urllib.parse import urlencode

import aiohttp

from epp import metrics as epp_metrics
from epp.datastore import Datastore, Endpoint, EndpointMetrics
from epp.scrape.http import MAX_BODY_BYTES, HttpError, KeepAliveGetter
from epp.scrape.parser import VLLM, MetricNames, MetricsParseError, parse_metrics, samples

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class _Quiet:
    """What an endpoint's last successful scrape saw, for deciding whether its next tick may skip."""

    scraped_at: float  # time.monotonic() of that scrape
    routed: int  # endpoint.routed just before that scrape's GET
    idle_and_unchanged: bool  # nothing waiting or running, and the same page as the scrape before


# How often an endpoint's filtered page is checked again against its full page.
FILTER_RECHECK_S = 60.0
_FETCH_ERRORS = (aiohttp.ClientError, HttpError, TimeoutError, OSError)
# An answer that is not a page (as opposed to no answer): malformed HTTP, or a page that does not parse.
_BAD_ANSWERS = (HttpError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError, MetricsParseError)


@dataclasses.dataclass(slots=True)
class _Filter:
    """The verdict of an endpoint's last filter check."""

    path: str | None  # the filtered path to scrape, or None: the full page
    checked_at: float  # time.monotonic() of the check


def filtered_paths(path: str, names: MetricNames) -> list[str]:
    """The filtered variants of ``path`` to try, in order: the same path with ``name[]`` parameters,
    then with a trailing slash (vLLM: ``/metrics`` is an instrumentator route that ignores the query,
    ``/metrics/`` the prometheus_client ASGI app that honours it)."""
    if "?" in path:
        return []  # a configured query string of its own: leave it alone
    query = urlencode([("name[]", name) for name in names.every])
    candidates = [f"{path}?{query}", f"{path.rstrip('/')}/?{query}"]
    return list(dict.fromkeys(candidates))


def _families(text: str, names: MetricNames) -> frozenset[str]:
    """The wanted metric names that have at least one sample on ``text``."""
    present = set()
    for name in names.every:
        try:
            if next(samples(text, name), None) is not None:
                present.add(name)
        except MetricsParseError:
            pass
    return frozenset(present)


# Everything a page says, i.e. every field but the time it was read (a C-level getter: two
# dataclasses.replace() per scrape cost ~10 µs).
_PAGE_FIELDS = operator.attrgetter(
    *(field.name for field in dataclasses.fields(EndpointMetrics) if field.name != "updated_at")
)


def _same_page(old: EndpointMetrics, new: EndpointMetrics) -> bool:
    return bool(_PAGE_FIELDS(old) == _PAGE_FIELDS(new))


class MetricsScraper:
    def __init__(
        self,
        datastore: Datastore,
        *,
        interval: float,
        idle_interval: float = 0.0,
        timeout: float = 1.0,
        scheme: str = "http",
        path: str = "/metrics",
        insecure_skip_verify: bool = True,
        names: MetricNames = VLLM,
        name_filter: bool = True,
        port: int | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"scrape interval must be positive, got {interval}")
        if idle_interval < 0:
            raise ValueError(f"idle scrape interval must not be negative, got {idle_interval}")
        self.datastore = datastore
        self.interval = interval
        # 0, or anything not above interval: every tick scrapes, as upstream does.
        self.idle_interval = idle_interval
        self.timeout = timeout
        self.scheme, self.path = scheme, path
        self.insecure_skip_verify = insecure_skip_verify
        # metrics-data-source's port: every endpoint's metrics on this port instead of its own.
        self.port = port
        self.names = names
        self._candidates = filtered_paths(path, names) if name_filter else []
        self._filters: dict[str, _Filter] = {}
        self._session: aiohttp.ClientSession | None = None
        self._getter = KeepAliveGetter()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._targets: dict[str, Endpoint] = {}
        self._quiet: dict[str, _Quiet] = {}
        self.scrapes = 0  # completed scrape attempts, for benchmarks and tests
        self.skipped = 0  # ticks of quiet endpoints that vouched for the last page instead

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # one connection per endpoint at most anyway: each task scrapes serially
            ssl=not self.insecure_skip_verify,
            keepalive_timeout=max(30.0, self.interval * 4),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=True,
        )
        self.datastore.add_listener(self.sync)
        self.sync()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._targets.clear()
        self._quiet.clear()
        self._filters.clear()
        self._count_filtered()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._getter.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def sync(self) -> None:
        """Start a polling task for every new endpoint, cancel those of departed ones."""
        if self._session is None:
            return
        live = {endpoint.hostport: endpoint for endpoint in self.datastore.endpoints()}
        for hostport in list(self._tasks):
            if hostport not in live:
                self._tasks.pop(hostport).cancel()
                gone = self._targets.pop(hostport)
                self._getter.drop(gone.address, self._port(gone), forget=True)
                with contextlib.suppress(KeyError):  # no error was ever counted for it
                    epp_metrics.SCRAPE_ERRORS.remove(hostport)
        # What was learnt about departed endpoints goes with them (whether or not a task polled them).
        for known in (self._quiet, self._filters):
            for hostport in [hp for hp in known if hp not in live]:
                del known[hostport]
        self._count_filtered()
        for hostport, endpoint in live.items():
            if hostport not in self._tasks:
                self._targets[hostport] = endpoint
                self._start(endpoint, first_delay=random.uniform(0, self.interval))

    def _start(self, endpoint: Endpoint, first_delay: float) -> None:
        task = asyncio.create_task(self._poll(endpoint, first_delay), name=f"scrape {endpoint.hostport}")
        self._tasks[endpoint.hostport] = task
        task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """A poll task only ends by cancellation. If one ever ends otherwise (a bug), its endpoint
        would silently keep its last metrics forever: log it and start a new one."""
        if task.cancelled():
            return
        hostport = next((hp for hp, t in self._tasks.items() if t is task), None)
        if hostport is None or self._session is None:
            return
        endpoint = self._targets[hostport]
        error = task.exception()
        log.error("metrics poll task of %s ended (%r); restarting it", endpoint.name, error, exc_info=error)
        epp_metrics.SCRAPE_TASK_RESTARTS.inc()
        self._start(endpoint, first_delay=self.interval)

    async def _poll(self, endpoint: Endpoint, first_delay: float) -> None:
        # A random first delay spreads the pool's scrapes over the interval instead of in bursts.
        await asyncio.sleep(first_delay)
        while True:
            started = time.monotonic()
            if self.may_skip(endpoint, started):
                self._vouch(endpoint, started)
            else:
                await self.scrape(endpoint)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def may_skip(self, endpoint: Endpoint, now: float) -> bool:
        """True when ``endpoint`` is quiet (see the module doc) and its idle interval has not run out."""
        if self.idle_interval <= self.interval:
            return False
        quiet = self._quiet.get(endpoint.hostport)
        return (
            quiet is not None
            and quiet.idle_and_unchanged
            and endpoint.scrape_failures == 0
            and endpoint.in_flight == 0
            and endpoint.routed == quiet.routed
            and now - quiet.scraped_at < self.idle_interval
        )

    def _vouch(self, endpoint: Endpoint, now: float) -> None:
        endpoint.metrics = dataclasses.replace(endpoint.metrics, updated_at=now)
        self.skipped += 1
        epp_metrics.SCRAPES_SKIPPED.inc()

    async def scrape(self, endpoint: Endpoint) -> bool:
        """One scrape of one endpoint; True on success. Never raises for pod-side failures."""
        assert self._session is not None, "start() first"
        url = self._url(endpoint, self.path)
        started = time.monotonic()
        # Read before the GET: a request routed while the GET is out may not be on this page.
        routed = endpoint.routed
        self._quiet.pop(endpoint.hostport, None)  # a failed scrape leaves the endpoint not quiet
        try:
            new = await self._page(endpoint, started)
            idle = new.waiting == 0 and new.running == 0 and _same_page(endpoint.metrics, new)
            endpoint.metrics = new
            self._quiet[endpoint.hostport] = _Quiet(new.updated_at, routed, idle)
        except (*_FETCH_ERRORS, MetricsParseError) as exc:
            self._failed(endpoint, url, exc)
            return False
        except Exception as exc:  # a parser or client bug: still one failed scrape, never a dead task
            log.exception("unexpected error scraping %s (%s)", endpoint.name, url)
            self._failed(endpoint, url, exc)
            return False
        finally:
            self.scrapes += 1
            epp_metrics.SCRAPE_SECONDS.observe(time.monotonic() - started)
        if endpoint.scrape_failures:
            log.info(
                "metrics of %s (%s) are back after %d failed scrapes",
                endpoint.name,
                url,
                endpoint.scrape_failures,
            )
        endpoint.scrape_failures = 0
        endpoint.scrape_error = None
        return True

    async def _page(self, endpoint: Endpoint, now: float) -> EndpointMetrics:
        """The endpoint's metrics: from its verified filtered page when it has one, else (and when
        that page fails to parse) from the full page, checking the filter candidates after it when
        due. Raises what a failed full scrape raises."""
        verdict = self._filters.get(endpoint.hostport)
        due = verdict is None or now - verdict.checked_at >= FILTER_RECHECK_S
        if verdict is not None and verdict.path is not None and not due:
            # A pod that does not answer at all fails this scrape as it would the full page's; an
            # answer that is not a usable page (a status, malformed HTTP, a page that does not
            # parse) falls back to the full page.
            try:
                status, body = await self._fetch(endpoint, verdict.path)
                if status != 200:
                    raise MetricsParseError(f"HTTP {status}")
                return parse_metrics(body.decode("utf-8", "replace"), time.monotonic(), self.names)
            except _BAD_ANSWERS as exc:
                # An upgrade, a reconfigured server: the full page now, and the check right after it.
                log.info("filtered metrics page of %s unusable (%s): checking again", endpoint.name, exc)
                due = True
        status, body = await self._fetch(endpoint, self.path)
        if status != 200:
            raise MetricsParseError(f"HTTP {status}")
        text = body.decode("utf-8", "replace")
        new = parse_metrics(text, time.monotonic(), self.names)
        if due and self._candidates:
            self._set_filter(endpoint, await self._check_filter(endpoint, text), now)
        return new

    def _set_filter(self, endpoint: Endpoint, path: str | None, now: float) -> None:
        before = self._filters.get(endpoint.hostport)
        self._filters[endpoint.hostport] = _Filter(path, now)
        if (before.path if before is not None else None) != path:
            log.info(
                "scraping %s %s",
                endpoint.name,
                f"with the filtered page {path}" if path is not None else "with the full page",
            )
            self._count_filtered()

    def _count_filtered(self) -> None:
        epp_metrics.FILTERED_ENDPOINTS.set(sum(1 for f in self._filters.values() if f.path is not None))

    async def _check_filter(self, endpoint: Endpoint, full: str) -> str | None:
        """The first filtered path at most half the size of ``full`` that carries every wanted family
        ``full`` carries; None when none does (the full page is scraped)."""
        wanted = _families(full, self.names)
        for path in self._candidates:
            try:
                status, body = await self._fetch(endpoint, path)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever a candidate does, this scrape has its full page
                log.debug("filter candidate %s of %s failed: %r", path, endpoint.name, exc)
                continue
            # At most half the full page: a working filter drops most of it (vLLM: 1.7 of ~48 KB).
            # A server that ignores the query answers the full page again, and that can come out
            # a few bytes shorter (a gauge gone from 0.0123 to 0.0): not a filter (CI, 2026-11-28).
            if status != 200 or 2 * len(body) > len(full):
                continue  # refused, or the filter ignored
            if _families(body.decode("utf-8", "replace"), self.names) >= wanted:
                log.debug("scraping %s with %s (%d of %d bytes)", endpoint.name, path, len(body), len(full))
                return path
        return None

    def filtered_path(self, endpoint: Endpoint) -> str | None:
        """The filtered path ``endpoint`` is scraped with, or None (the full page, or not checked yet)."""
        verdict = self._filters.get(endpoint.hostport)
        return None if verdict is None else verdict.path

    def _port(self, endpoint: Endpoint) -> int:
        return self.port or endpoint.metrics_port

    def _url(self, endpoint: Endpoint, path: str) -> str:
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address  # IPv6
        return f"{self.scheme}://{host}:{self._port(endpoint)}{path}"

    async def _fetch(self, endpoint: Endpoint, path: str) -> tuple[int, bytes]:
        assert self._session is not None
        if self.scheme == "http":
            async with asyncio.timeout(self.timeout):
                return await self._getter.get(endpoint.address, self._port(endpoint), path)
        async with self._session.get(self._url(endpoint, path)) as response:
            # Bounded as the lean client's pages are: ``read()`` takes whatever the pod sends, and
            # the timeout alone lets a fast pod push gigabytes into memory first.
            limit = MAX_BODY_BYTES
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise HttpError(f"response body exceeds {limit} bytes")
            return response.status, bytes(body)

    def _failed(self, endpoint: Endpoint, url: str, exc: BaseException) -> None:
        endpoint.scrape_failures += 1
        endpoint.scrape_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        epp_metrics.SCRAPE_ERRORS.labels(endpoint.hostport).inc()
        if endpoint.scrape_failures == 1:  # log the transition, not every 50 ms
            log.warning(
                "scraping %s (%s) failed: %s; not picking it until it recovers",
                endpoint.name,
                url,
                endpoint.scrape_error,
            )
