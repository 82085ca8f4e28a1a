"""gRPC health semantics of the EPP (``--grpc-health-port``), served by either transport through
``epp.transport.health_methods(HealthStatus.status)``.

``liveness`` is SERVING while the process runs. ``readiness``, ``""`` and the ext_proc service name
are SERVING only when the Director has synced its endpoints and the server is not draining. Other
names get the readiness answer too, as the reference EPP does without leader election (older
manifests probe ``inference-extension``).
"""

from __future__ import annotations

from collections.abc import Callable

from grpc_health.v1 import health_pb2

LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthStatus:
    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self.draining = False

    def status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        if service == LIVENESS:
            return SERVING
        return SERVING if self._ready() and not self.draining else NOT_SERVING
