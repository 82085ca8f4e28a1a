"""The mutable state of one ext_proc stream, split the way GIE's ``RequestContext`` splits it
(``pkg/epp/handlers/server.go`` in GIE <= v1.5.0, now ``llm-d-router``): what the request path
learns and decides, and what the response path observes. The state machine in
:mod:`epp.server.stream` owns one of each; keeping them apart makes it plain which fields the
response path may read (the decision, the rewriter) and which only the request path writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from epp.server.response_body import BufferedBodyTracker, ModelNameRewriter, SseTracker, StreamingRewriter
from epp.types import Decision, InferenceRequest, Usage


class BodyMode(Enum):
    FULL_DUPLEX_STREAMED = "FULL_DUPLEX_STREAMED"
    BUFFERED = "BUFFERED"


@dataclass(slots=True)
class RequestState:
    """Request headers and body as received, and the scheduling outcome."""

    mode: BodyMode
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/"
    # The id the Director knows the request by (the client's x-request-id, made unique).
    request_id: str = ""
    # True when the EPP made the id up: it is then sent upstream as x-request-id.
    request_id_generated: bool = False
    received_at: float = 0.0  # time.monotonic() at the request headers; 0 = never seen
    body_parts: list[bytes] = field(default_factory=list)
    body_size: int = 0  # bytes held in body_parts (and reserved in the shared BufferBudget)
    subset: list[str] | None = None  # the proxy's subset hint; None = the whole pool
    decided: bool = False  # a routing answer (or a rejection) has been produced
    # Set only once the Director returned a Decision: from then on it must hear about the end.
    scheduled: InferenceRequest | None = None
    decision: Decision | None = None  # the Director's answer (the opt-in served-by header reads it)


@dataclass(slots=True)
class ResponseState:
    """What the model server's answer looked like, and what the EPP changes in it."""

    mode: BodyMode | None  # None: the proxy does not send response bodies (mode NONE)
    status: int | None = None
    served: str | None = None  # the endpoint the proxy reports it really used
    started: bool = False  # a response body byte has been seen (TTFT taken)
    ended: bool = False  # the response reached end_of_stream
    rewriter: ModelNameRewriter | None = None  # puts the client's model name back
    sse: SseTracker | None = None  # set for text/event-stream answers
    buffered: BufferedBodyTracker = field(default_factory=BufferedBodyTracker)
    json_rewrite: StreamingRewriter | None = None  # the rewriter's state on a JSON (non-SSE) body
    size: int = 0  # response body bytes seen

    def usage(self) -> Usage | None:
        return self.sse.usage if self.sse is not None else self.buffered.usage

    def server_failed(self) -> bool:
        return self.status is None or self.status >= 500
