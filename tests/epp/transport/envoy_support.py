"""Real Envoy in front of the EPP's ext_proc server under test, the way the gateways wire it.

``localrun.envoy`` renders the gateway (TLS to the EPP without verification, offering h2 by ALPN as
Istio and agentgateway do, or nothing as kgateway does); ``ExtProcUnderTest`` is the EPP's own
``EppServer`` on the transport under test with a scripted Director.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from epp.metrics import ServerMetrics
from epp.server import EppServer, ServerOptions, Transport
from epp.server.tls import CertificateSource
from epp.types import Decision, InferenceRequest, Usage
from localrun import free_port


@dataclass
class RecordingDirector:
    """Sends every request to ``endpoint`` (or raises ``error``) and records what it is told.
    (tests/support/extproc.py has a fuller one; it is not importable from this package.)"""

    endpoint: str
    error: Exception | None = None
    requests: list[InferenceRequest] = field(default_factory=list)
    completions: list[tuple[str, Usage | None, bool]] = field(default_factory=list)
    # As the scheduling director without flow control (the default): handle_request never waits,
    # so on h2 the request phase is routed from the transport's read path too.
    decides_nowait: bool = True

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


class ExtProcUnderTest:
    """``EppServer`` (what ``python -m epp`` runs) on ``transport``, TLS from a certificate
    directory as ``--cert-path`` gives it, or cleartext."""

    def __init__(self, transport: str, director: RecordingDirector, tls: tuple[Path, Path] | None) -> None:
        self.director = director
        options = ServerOptions(
            host="127.0.0.1",
            grpc_port=free_port(),
            grpc_health_port=free_port(),
            metrics_port=free_port(),
            tls=CertificateSource(tls[0].parent) if tls else None,
            transport=Transport(transport),
        )
        self.server = EppServer(director, options, ServerMetrics(CollectorRegistry()))

    @property
    def port(self) -> int:
        return self.server.ports[0]

    async def __aenter__(self) -> ExtProcUnderTest:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(grace=0)
