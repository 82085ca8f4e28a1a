"""A purpose-built HTTP/2 gRPC server on asyncio for the EPP's ext_proc stream (issue 16).

grpc.aio spreads every message over three threads (its event engine, the poller and the asyncio
loop); this transport parses and writes frames on the event loop thread and answers each batch of
frames with one write. It serves any protobuf method through a handler of the shape
``handler(requests, send)`` (see :mod:`epp.transport.methods`), which is how the EPP's
``ExtProcStream.run`` is called.

Modules, one kind of thing each: ``frames`` (wire format), ``headers`` (HPACK and request header
rules), ``grpc`` (status, message framing, timeouts), ``calls`` (which requests become calls),
``methods`` (handler shapes), ``stream`` (one call), ``connection`` (one HTTP/2 connection),
``server`` (listeners, limits, shutdown), ``options``, ``tls``, ``extproc`` (the ext_proc method),
``health`` (grpc.health.v1).
"""

from epp.transport.extproc import EXT_PROC_PATH, ExtProcHandler, ext_proc_method
from epp.transport.grpc import RpcError, StatusCode
from epp.transport.health import health_methods
from epp.transport.methods import Method, bidi_method, server_stream_method, unary_method
from epp.transport.options import TransportOptions
from epp.transport.server import H2Server
from epp.transport.stream import StreamClosedError
from epp.transport.tls import server_ssl_context

__all__ = [
    "EXT_PROC_PATH",
    "ExtProcHandler",
    "H2Server",
    "Method",
    "RpcError",
    "StatusCode",
    "StreamClosedError",
    "TransportOptions",
    "bidi_method",
    "ext_proc_method",
    "health_methods",
    "server_ssl_context",
    "server_stream_method",
    "unary_method",
]
