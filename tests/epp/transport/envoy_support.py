"""Real Envoy in front of an ext_proc transport under test, the way the gateways wire it.

``localrun.envoy`` renders the gateway; ``TlsGateway`` adds what it cannot do yet: dial the EPP
over TLS without verifying it, as kgateway's endpoint-picker plugin does (``buildExtProcCluster``:
an UpstreamTlsContext with an empty validation context, no ALPN list).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from prometheus_client import CollectorRegistry

from epp.metrics import ServerMetrics
from epp.server.processor import ExternalProcessor
from epp.server.stream import ActiveRequestIds, BufferBudget, ExtProcStream, StreamSettings
from epp.transport import (
    H2Server,
    RpcError,
    StatusCode,
    TransportOptions,
    ext_proc_method,
    server_ssl_context,
)
from epp.types import Decision, Director, InferenceRequest, Usage
from localrun import EnvoyGateway, ManagedProcess, envoy_binary, http_ok
from localrun.envoy import EPP_CLUSTER, render_bootstrap

log = logging.getLogger(__name__)
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass
class RecordingDirector:
    """Sends every request to ``endpoint`` (or raises ``error``) and records what it is told.
    (tests/support/extproc.py has a fuller one; it is not importable from this package.)"""

    endpoint: str
    error: Exception | None = None
    requests: list[InferenceRequest] = field(default_factory=list)
    completions: list[tuple[str, Usage | None, bool]] = field(default_factory=list)

    def ready(self) -> bool:
        return True

    async def handle_request(self, request: InferenceRequest) -> Decision:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return Decision(endpoints=(self.endpoint,))

    def handle_response_headers(self, request: InferenceRequest, served: str | None, status: int) -> None:
        pass

    def handle_response_complete(self, request: InferenceRequest, usage: Usage | None, failed: bool) -> None:
        self.completions.append((request.request_id, usage, failed))


class TlsGateway(EnvoyGateway):
    def __init__(self, *args: Any, ext_proc_tls: bool = False, **kwargs: Any) -> None:
        # The base renders cleartext; TLS is added below the way kgateway builds it (no ALPN).
        super().__init__(*args, ext_proc_tls=False, **kwargs)
        self.ext_proc_tls = ext_proc_tls

    def start(self) -> TlsGateway:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = render_bootstrap(self.config)
        if self.ext_proc_tls:
            for cluster in bootstrap["static_resources"]["clusters"]:
                if cluster["name"] == EPP_CLUSTER:
                    cluster["transport_socket"] = {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": _UPSTREAM_TLS,
                            "common_tls_context": {"validation_context": {}},
                        },
                    }
        self.bootstrap_path.write_text(json.dumps(bootstrap, indent=1))
        command = [str(envoy_binary()), "-c", str(self.bootstrap_path), "--concurrency", "1"]
        command += ["--log-level", "warning", "--disable-hot-restart"]
        self._process = ManagedProcess(
            command, ready=http_ok(self.admin_url + "/ready"), name="envoy", log_dir=self._log_dir
        ).start()
        return self


def ext_proc_handler(director: Director, settings: StreamSettings, metrics: ServerMetrics) -> Any:
    """ExtProcStream on the h2 transport with the grpc.aio servicer's error handling
    (``epp.server.processor.ExternalProcessor``: a failing stream ends with INTERNAL)."""
    budget = BufferBudget(settings.max_buffered_request_bytes)
    request_ids = ActiveRequestIds()

    async def handle(requests: AsyncIterator[Any], send: Any) -> None:
        stream = ExtProcStream(director, settings, metrics, budget, request_ids)
        try:
            await stream.run(requests, send)
        except RpcError:
            raise
        except Exception:
            metrics.stream_errors.inc()
            log.exception("ext_proc stream failed")
            raise RpcError(StatusCode.INTERNAL, "endpoint picker stream failed") from None

    return handle


class ExtProcUnderTest:
    """The EPP's ext_proc service with the real ExtProcStream on either transport."""

    def __init__(self, transport: str, director: Director, tls: tuple[Path, Path] | None) -> None:
        self.transport = transport
        self.director = director
        self.tls = tls
        self.metrics = ServerMetrics(CollectorRegistry())
        self.settings = StreamSettings()
        self.port = 0
        self._h2: H2Server | None = None
        self._aio: grpc.aio.Server | None = None

    async def __aenter__(self) -> ExtProcUnderTest:
        if self.transport == "h2":
            options = TransportOptions(
                max_receive_message_bytes=self.settings.max_request_body_bytes + 65_536
            )
            self._h2 = H2Server(
                [ext_proc_method(ext_proc_handler(self.director, self.settings, self.metrics))], options
            )
            self.port = await self._h2.start(
                "127.0.0.1", 0, server_ssl_context(*self.tls) if self.tls else None
            )
            return self
        self._aio = grpc.aio.server()
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(
            ExternalProcessor(self.director, self.settings, self.metrics), self._aio
        )
        if self.tls:
            cert, key = self.tls
            credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            self.port = self._aio.add_secure_port("127.0.0.1:0", credentials)
        else:
            self.port = self._aio.add_insecure_port("127.0.0.1:0")
        await self._aio.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._h2 is not None:
            await self._h2.shutdown(0)
        if self._aio is not None:
            await self._aio.stop(0)
