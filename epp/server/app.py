"""The EPP's three listeners (ext_proc, gRPC health, Prometheus) around one Director, with draining."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from epp.metrics import MetricsHttpServer, ServerMetrics
from epp.server.health import HealthStatus
from epp.server.listeners import Listener, Transport, make_listener
from epp.server.processor import ExtProcService
from epp.server.stream import StreamSettings
from epp.server.tls import CertificateSource
from epp.transport import TransportOptions, health_methods
from epp.types import Director

log = logging.getLogger(__name__)

# Large request bodies arrive as many ext_proc messages of Envoy's chunk size, but a BUFFERED body is
# one message: allow the body cap plus framing.
_MESSAGE_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerOptions:
    host: str = "0.0.0.0"
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    stream: StreamSettings = field(default_factory=StreamSettings)
    # After SIGTERM: readiness goes NOT_SERVING at once and ext_proc keeps taking new streams for
    # drain_notice seconds (the time the gateway needs to see that and send new streams to other
    # replicas), then waits for the open streams to finish, drain_timeout in all at most. Then the
    # listeners close with GOAWAY.
    drain_timeout: float = 30.0
    drain_notice: float = 5.0
    # --secure-serving: the pair the ext_proc port serves (self-signed or mounted); None = cleartext.
    tls: CertificateSource | None = None
    # --transport: the asyncio HTTP/2 server (epp.transport) or grpc.aio, the reference.
    transport: Transport = Transport.H2

    def transport_options(self) -> TransportOptions:
        """ext_proc's limits: messages up to the body cap plus framing, both ways."""
        max_message = self.stream.max_request_body_bytes + _MESSAGE_OVERHEAD_BYTES
        defaults = TransportOptions()
        return TransportOptions(
            max_receive_message_bytes=max_message,
            max_send_message_bytes=max_message,
            max_buffered_bytes=max(defaults.max_buffered_bytes, 2 * max_message),
        )


class EppServer:
    def __init__(
        self, director: Director, options: ServerOptions, metrics: ServerMetrics | None = None
    ) -> None:
        self.options = options
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.health = HealthStatus(director.ready)
        self.processor = ExtProcService(director, options.stream, self.metrics)
        self._metrics_http = MetricsHttpServer(self.metrics, options.host, options.metrics_port)
        self._ext_proc: Listener | None = None
        self._health: Listener | None = None

    @property
    def ports(self) -> tuple[int, int]:
        """(ext_proc, health) as bound (a configured 0 picks a free port)."""
        return (
            self._ext_proc.port if self._ext_proc is not None else self.options.grpc_port,
            self._health.port if self._health is not None else self.options.grpc_health_port,
        )

    async def start(self) -> None:
        options = self.options
        self._ext_proc = make_listener(
            options.transport,
            [self.processor.method()],
            options.host,
            options.grpc_port,
            tls=options.tls,
            options=options.transport_options(),
        )
        # Always plaintext: Kubernetes gRPC probes cannot speak TLS (the reference EPP does the same).
        self._health = make_listener(
            options.transport, health_methods(self.health.status), options.host, options.grpc_health_port
        )
        await self._ext_proc.start()
        await self._health.start()
        await self._metrics_http.start()
        log.info(
            "ext_proc on %s:%d (%s, %s), health on :%d, metrics on :%d",
            options.host,
            self._ext_proc.port,
            options.transport.value,
            "TLS" if options.tls else "plaintext",
            self._health.port,
            options.metrics_port,
        )

    async def drain(self) -> None:
        """Report NOT_SERVING; keep taking new streams for the notice period (the gateway moves new
        streams to other replicas meanwhile); then close the ext_proc listener with GOAWAY and let
        the open streams finish, the drain timeout in all at most. GOAWAY matters for gateways that
        reach the EPP through its Service's ClusterIP (kgateway resolves the Service name): their
        HTTP/2 connection would otherwise keep carrying new streams here until the process exits.
        A replica drained this way loses no request it accepted."""
        self.health.draining = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        notice = min(self.options.drain_notice, self.options.drain_timeout)
        log.info(
            "draining: readiness off, still serving for %.1fs, then up to %.1fs for the open streams",
            notice,
            self.options.drain_timeout,
        )
        await asyncio.sleep(notice)
        open_streams = self.processor.active_streams
        if self._ext_proc is not None:
            # GOAWAY now, new streams refused, open ones run until done or the drain timeout ends.
            listener, self._ext_proc = self._ext_proc, None
            await listener.shutdown(max(0.0, started + self.options.drain_timeout - loop.time()))
        if self.processor.active_streams:
            log.warning("drain timeout: %d streams still open were cut", self.processor.active_streams)
        else:
            log.info(
                "drained after %.1fs (%d streams finished after GOAWAY)", loop.time() - started, open_streams
            )

    async def stop(self, grace: float = 1.0) -> None:
        for listener in (self._ext_proc, self._health):
            if listener is not None:
                await listener.shutdown(grace)
        self._ext_proc = self._health = None
        await self._metrics_http.stop()
