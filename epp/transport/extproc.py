"""The one method the EPP serves: Envoy's ``ExternalProcessor/Process`` bidirectional stream.

The handler has the shape the EPP's stream state machine already has::

    server = H2Server([ext_proc_method(lambda requests, send: ExtProcStream(...).run(requests, send))])

``requests`` yields ``ProcessingRequest`` protos (upb, from xds-protos); ``send`` takes a
``ProcessingResponse``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from epp.transport.methods import Method, bidi_method

EXT_PROC_PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

ExtProcSend = Callable[[ext_proc.ProcessingResponse], Awaitable[None]]
ExtProcHandler = Callable[[AsyncIterator[ext_proc.ProcessingRequest], ExtProcSend], Awaitable[None]]


def ext_proc_method(handler: ExtProcHandler) -> Method:
    return bidi_method(EXT_PROC_PATH, ext_proc.ProcessingRequest, handler)
