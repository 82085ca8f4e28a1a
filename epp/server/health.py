"""gRPC health service (``--grpc-health-port``) with the EPP's probe semantics.

``liveness`` is SERVING while the process runs. ``readiness``, ``""`` and the ext_proc service name
are SERVING only when the Director has synced its endpoints and the server is not draining. Other
names get the readiness answer too, as the reference EPP does without leader election (older
manifests probe ``inference-extension``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# How often Watch re-evaluates readiness; a probe stream is cheap, so a short period is fine.
_WATCH_PERIOD_SECONDS = 0.5


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self.draining = False

    def status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        if service == LIVENESS:
            return SERVING
        return SERVING if self._ready() and not self.draining else NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while not context.done():
            current = self.status(request.service)
            if current != last:
                last = current
                yield health_pb2.HealthCheckResponse(status=current)
            await asyncio.sleep(_WATCH_PERIOD_SECONDS)
