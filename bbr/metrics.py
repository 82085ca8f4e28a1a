"""The router's Prometheus series (its own registry) and the ``/metrics`` endpoint that serves them."""

from __future__ import annotations

import logging

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

# What became of each request the router saw.
ROUTED = "routed"
UNKNOWN_MODEL = "unknown_model"
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
OVERLOADED = "overloaded"
NO_BODY = "no_body"
MODELS_LISTED = "models_listed"
OUTCOMES = (ROUTED, UNKNOWN_MODEL, BAD_REQUEST, TOO_LARGE, OVERLOADED, NO_BODY, MODELS_LISTED)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "bbr_requests", "Requests the body router handled, by outcome.", ["outcome"], registry=r
        )
        self.routed = Counter(
            "bbr_routed_requests", "Requests routed, by the base model they went to.", ["model"], registry=r
        )
        self.decision = Histogram(
            "bbr_decision_duration_seconds",
            "From the last body byte to the routing answer (parse, look up, build the answer).",
            buckets=(10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3),
            registry=r,
        )
        self.streams = Gauge("bbr_streams_active", "ext_proc streams open.", registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)


class MetricsHttpServer:
    """``GET /metrics`` in the Prometheus text format, on its own port."""

    def __init__(self, metrics: RouterMetrics, host: str, port: int) -> None:
        self._registry = metrics.registry
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, _request: web.Request) -> web.Response:
        text = prometheus_client.generate_latest(self._registry)
        return web.Response(body=text, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
