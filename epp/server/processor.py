"""The ext_proc service: one :class:`ExtProcStream` per ``Process`` call, on either transport.

``handle(requests, send)`` is the method handler both listeners call (``epp.server.listeners``): the
h2 transport directly, grpc.aio through ``context.write``. This is the one place that adapts the
stream state machine to a transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from epp.metrics import ServerMetrics
from epp.server.stream import ActiveRequestIds, BufferBudget, ExtProcStream, Send, StreamSettings
from epp.transport import RpcError, StatusCode, ext_proc_method
from epp.transport.methods import Method
from epp.types import Director

log = logging.getLogger(__name__)


class ExtProcService:
    def __init__(self, director: Director, settings: StreamSettings, metrics: ServerMetrics) -> None:
        self._director = director
        self._settings = settings
        self._metrics = metrics
        self._budget = BufferBudget(settings.max_buffered_request_bytes)
        self._request_ids = ActiveRequestIds()
        self.active_streams = 0
        self.idle = asyncio.Event()  # set while no stream is open (what a drain waits for)
        self.idle.set()

    def method(self) -> Method:
        return ext_proc_method(self.handle)

    async def handle(self, requests: AsyncIterator[ext_proc.ProcessingRequest], send: Send) -> None:
        stream = ExtProcStream(self._director, self._settings, self._metrics, self._budget, self._request_ids)
        self.active_streams += 1
        self.idle.clear()
        # The h2 transport hands response-phase messages to the stream synchronously, from its read
        # path, while run() waits for the next message (epp.transport.stream: set_inline); with
        # ``send`` its own, the answers take the same route. grpc.aio has no such entry point.
        set_inline = getattr(requests, "set_inline", None)
        if set_inline is not None:
            set_inline(stream.dispatch_nowait)
        try:
            await stream.run(requests, send)
        except RpcError:
            raise
        except Exception:
            # The proxy applies its failure mode (FailOpen/FailClose) to a stream that ends in error.
            self._metrics.stream_errors.inc()
            log.exception("ext_proc stream failed")
            raise RpcError(StatusCode.INTERNAL, "endpoint picker stream failed") from None
        finally:
            self.active_streams -= 1
            if not self.active_streams:
                self.idle.set()
