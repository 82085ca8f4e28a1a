"""The gRPC health service (grpc/grpc doc/health-checking.md) on this transport, so an EPP serving
ext_proc here needs no grpc.aio server for its probes either.

``status(service)`` decides the answer; the EPP passes ``epp.server.health.HealthStatus.status``,
which keeps its probe semantics (liveness, readiness, draining) in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from grpc_health.v1 import health_pb2

from epp.transport.methods import Method, Send, server_stream_method, unary_method

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
HEALTH_WATCH_PATH = "/grpc.health.v1.Health/Watch"

# How often Watch re-evaluates the status (the grpc.aio servicer in epp.server.health polls alike).
WATCH_PERIOD_SECONDS = 0.5


def health_methods(
    status: Callable[[str], health_pb2.HealthCheckResponse.ServingStatus.ValueType],
    watch_period: float = WATCH_PERIOD_SECONDS,
) -> list[Method]:
    async def check(request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=status(request.service))

    async def watch(request: health_pb2.HealthCheckRequest, send: Send) -> None:
        # Runs until the client cancels (RST_STREAM cancels this task) or the server shuts down.
        last: health_pb2.HealthCheckResponse.ServingStatus.ValueType | None = None
        while True:
            current = status(request.service)
            if current != last:
                last = current
                await send(health_pb2.HealthCheckResponse(status=current))
            await asyncio.sleep(watch_period)

    return [
        unary_method(HEALTH_CHECK_PATH, health_pb2.HealthCheckRequest, check),
        server_stream_method(HEALTH_WATCH_PATH, health_pb2.HealthCheckRequest, watch),
    ]
