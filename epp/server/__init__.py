"""The ext_proc protocol layer: Envoy streams in, :class:`epp.types.Director` calls out.

``EppServer`` runs the three listeners (the gRPC ones on either transport: ``listeners``);
``ExtProcStream`` is the per-request state machine;
``parse_request_body`` turns an OpenAI body into a ``ParsedBody``.
"""

from epp.metrics import ServerMetrics
from epp.server.app import EppServer, ServerOptions
from epp.server.body import parse_request_body
from epp.server.listeners import Transport
from epp.server.stream import BodyMode, ExtProcStream, StreamSettings

__all__ = [
    "BodyMode",
    "EppServer",
    "ExtProcStream",
    "ServerMetrics",
    "ServerOptions",
    "StreamSettings",
    "Transport",
    "parse_request_body",
]
