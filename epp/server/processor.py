"""The gRPC ``ExternalProcessor`` service: one :class:`ExtProcStream` per ``Process`` call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from epp.metrics import ServerMetrics
from epp.server.stream import ActiveRequestIds, BufferBudget, ExtProcStream, StreamSettings
from epp.types import Director

log = logging.getLogger(__name__)


class ExternalProcessor(ext_proc_grpc.ExternalProcessorServicer):
    def __init__(self, director: Director, settings: StreamSettings, metrics: ServerMetrics) -> None:
        self._director = director
        self._settings = settings
        self._metrics = metrics
        self._budget = BufferBudget(settings.max_buffered_request_bytes)
        self._request_ids = ActiveRequestIds()
        self.active_streams = 0
        self.idle = asyncio.Event()  # set while no stream is open (what a drain waits for)
        self.idle.set()

    # A coroutine writing through the context (not an async generator): cancellation then runs the
    # stream's cleanup deterministically, which keeps the Director's in-flight counts exact.
    async def Process(
        self,
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = ExtProcStream(self._director, self._settings, self._metrics, self._budget, self._request_ids)
        self.active_streams += 1
        self.idle.clear()
        try:
            await stream.run(request_iterator, context.write)
        except Exception:
            # The proxy applies its failure mode (FailOpen/FailClose) to a stream that ends in error.
            self._metrics.stream_errors.inc()
            log.exception("ext_proc stream failed")
            await context.abort(grpc.StatusCode.INTERNAL, "endpoint picker stream failed")
        finally:
            self.active_streams -= 1
            if not self.active_streams:
                self.idle.set()
