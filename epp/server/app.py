"""The EPP's three listeners (ext_proc, gRPC health, Prometheus) around one Director, with draining."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2_grpc

from epp.metrics import MetricsHttpServer, ServerMetrics
from epp.server.health import HealthServicer
from epp.server.processor import ExternalProcessor
from epp.server.stream import StreamSettings
from epp.server.tls import CertificateSource
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


class EppServer:
    def __init__(
        self, director: Director, options: ServerOptions, metrics: ServerMetrics | None = None
    ) -> None:
        self.options = options
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.health = HealthServicer(director.ready)
        self.processor = ExternalProcessor(director, options.stream, self.metrics)
        self._metrics_http = MetricsHttpServer(self.metrics, options.host, options.metrics_port)
        self._grpc: grpc.aio.Server | None = None
        self._health_grpc: grpc.aio.Server | None = None

    async def start(self) -> None:
        max_message = self.options.stream.max_request_body_bytes + _MESSAGE_OVERHEAD_BYTES
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
        self._bind(self._grpc, self.options.grpc_port, self.options.tls)
        self._health_grpc = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_grpc)
        # Always plaintext: Kubernetes gRPC probes cannot speak TLS (the reference EPP does the same).
        self._bind(self._health_grpc, self.options.grpc_health_port, None)
        await self._grpc.start()
        await self._health_grpc.start()
        await self._metrics_http.start()
        log.info(
            "ext_proc on %s:%d, health on :%d, metrics on :%d (%s)",
            self.options.host,
            self.options.grpc_port,
            self.options.grpc_health_port,
            self.options.metrics_port,
            "ext_proc over TLS" if self.options.tls else "plaintext",
        )

    def _bind(self, server: grpc.aio.Server, port: int, tls: CertificateSource | None) -> None:
        address = f"{self.options.host}:{port}"
        if tls is None:
            server.add_insecure_port(address)
            return
        server.add_secure_port(address, grpc_credentials(tls))

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
        if self._grpc is not None:
            # grpc.aio: GOAWAY now, new streams refused, open ones run until done or the grace ends.
            server, self._grpc = self._grpc, None
            await server.stop(max(0.0, started + self.options.drain_timeout - loop.time()))
        if self.processor.active_streams:
            log.warning("drain timeout: %d streams still open were cut", self.processor.active_streams)
        else:
            log.info(
                "drained after %.1fs (%d streams finished after GOAWAY)", loop.time() - started, open_streams
            )

    async def stop(self, grace: float = 1.0) -> None:
        for server in (self._grpc, self._health_grpc):
            if server is not None:
                await server.stop(grace)
        self._grpc = self._health_grpc = None
        await self._metrics_http.stop()


def grpc_credentials(tls: CertificateSource) -> grpc.ServerCredentials:
    """gRPC core asks the fetcher before each handshake; it answers a new configuration only when
    the mounted pair changed (CertificateSource rate-limits the file checks)."""

    def configuration(key_pem: bytes, cert_pem: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)])

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        renewed = tls.changed()
        return None if renewed is None else configuration(renewed.key_pem, renewed.cert_pem)

    return grpc.dynamic_ssl_server_credentials(configuration(tls.pair.key_pem, tls.pair.cert_pem), fetch)
