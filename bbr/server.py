"""The router's listeners: ext_proc (TLS by default), gRPC health (plaintext, for kubelet probes) and
Prometheus metrics, with the EPP's drain: readiness off, a notice period, then GOAWAY and the open
streams finish.

The TLS setup (self-signed or a mounted pair, reloaded on change) and the health service are the
EPP's own (:mod:`epp.server.tls`, :mod:`epp.server.health`, :mod:`epp.server.listeners`), so the
Gateway dials both the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from bbr.metrics import MetricsHttpServer, RouterMetrics
from bbr.stream import RouterSettings, RouterStream
from bbr.table import RoutingTable
from epp.server.health import HealthStatus
from epp.server.listeners import Listener, Transport, grpc_credentials, make_listener
from epp.server.stream import BufferBudget
from epp.server.tls import CertificateSource
from epp.transport import health_methods

log = logging.getLogger(__name__)

# A BUFFERED body is one message: allow the body cap plus framing (as the EPP does).
_MESSAGE_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class RouterOptions:
    host: str = "0.0.0.0"
    grpc_port: int = 9004
    grpc_health_port: int = 9005
    metrics_port: int = 9090
    settings: RouterSettings = field(default_factory=RouterSettings)
    drain_timeout: float = 30.0
    drain_notice: float = 5.0
    # The pair the ext_proc port serves (self-signed or mounted); None = cleartext HTTP/2.
    tls: CertificateSource | None = None


class BodyRouterProcessor(ext_proc_grpc.ExternalProcessorServicer):
    """The gRPC ExternalProcessor service: one RouterStream per Process call."""

    def __init__(self, table: RoutingTable, settings: RouterSettings, metrics: RouterMetrics) -> None:
        self._table = table
        self._settings = settings
        self._metrics = metrics
        self._budget = BufferBudget(settings.max_buffered_request_bytes)
        self._created = int(time.time())
        self.active_streams = 0

    async def Process(
        self,
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = RouterStream(self._table, self._settings, self._metrics, self._budget, self._created)
        self.active_streams += 1
        self._metrics.streams.inc()
        try:
            await stream.run(request_iterator, context.write)
        except Exception:
            # The proxy applies the router's failure mode to a stream that ends in error.
            log.exception("ext_proc stream failed")
            await context.abort(grpc.StatusCode.INTERNAL, "body router stream failed")
        finally:
            self.active_streams -= 1
            self._metrics.streams.dec()


class RouterServer:
    def __init__(
        self, table: RoutingTable, options: RouterOptions, metrics: RouterMetrics | None = None
    ) -> None:
        self.options = options
        self.metrics = metrics if metrics is not None else RouterMetrics()
        # Ready as soon as it listens: the table is loaded before the server starts.
        self.health = HealthStatus(lambda: True)
        self.processor = BodyRouterProcessor(table, options.settings, self.metrics)
        self._metrics_http = MetricsHttpServer(self.metrics, options.host, options.metrics_port)
        self._grpc: grpc.aio.Server | None = None
        self._health: Listener | None = None

    async def start(self) -> None:
        max_message = self.options.settings.max_request_body_bytes + _MESSAGE_OVERHEAD_BYTES
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                # Notice a vanished proxy instead of keeping its streams (and their buffers) forever.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ]
        )
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(self.processor, self._grpc)
        address = f"{self.options.host}:{self.options.grpc_port}"
        if self.options.tls is None:
            self._grpc.add_insecure_port(address)
        else:
            self._grpc.add_secure_port(address, grpc_credentials(self.options.tls))
        self._health = make_listener(
            Transport.GRPC,
            health_methods(self.health.status),
            self.options.host,
            self.options.grpc_health_port,
        )
        await self._grpc.start()
        await self._health.start()
        await self._metrics_http.start()
        log.info(
            "body router: ext_proc on %s (%s), health on :%d, metrics on :%d",
            address,
            "TLS" if self.options.tls else "plaintext",
            self.options.grpc_health_port,
            self.options.metrics_port,
        )

    async def drain(self) -> None:
        """Readiness off; keep serving new streams for the notice period (the gateway moves to other
        replicas meanwhile); then GOAWAY and let the open streams finish, the drain timeout in all."""
        self.health.draining = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(min(self.options.drain_notice, self.options.drain_timeout))
        if self._grpc is not None:
            server, self._grpc = self._grpc, None
            await server.stop(max(0.0, started + self.options.drain_timeout - loop.time()))
        log.info("drained after %.1fs", loop.time() - started)

    async def stop(self, grace: float = 1.0) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._health is not None:
            await self._health.shutdown(grace)
        self._grpc = self._health = None
        await self._metrics_http.stop()
