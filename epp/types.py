"""The boundary between the ext_proc protocol layer and the scheduling core.

The protocol layer (``epp.server``) turns an Envoy ext_proc stream into an :class:`InferenceRequest`,
asks a :class:`Director` for a :class:`Decision`, and reports what happened to the response. It knows
nothing about scoring. The core (``epp.director``, ``epp.scheduling``, ``epp.datastore`` ...) knows
nothing about gRPC or Envoy. Everything that crosses the line is defined here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class EppError(Exception):
    """A request the EPP refuses; the protocol layer turns it into an ImmediateResponse.

    ``status`` is the HTTP status the client sees (400, 404, 413, 429, 503 ...). ``reason`` is
    the value of ``x-llm-d-request-dropped-reason`` when one applies (e.g. ``rejected-no-endpoints``).
    """

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """What the request parser extracted from an OpenAI-style body."""

    model: str
    # The text prefix-affinity hashes: the completions prompt, or chat messages rendered in order.
    prompt_text: str
    stream: bool
    # "completions" | "chat"; "none" for a request without a body (GET /v1/models ...): model and
    # prompt_text are then empty and the director routes it without a model check.
    api: str
    lora_adapter: str | None = None


@dataclass(slots=True)
class InferenceRequest:
    request_id: str
    path: str
    headers: Mapping[str, str]  # lower-cased keys, system-owned headers already removed
    body: dict[str, Any]  # the parsed JSON body (mutable: a model rewrite changes body["model"])
    parsed: ParsedBody
    objective: str | None = None  # x-llm-d-inference-objective (or the legacy alias)
    fairness_id: str = "default-flow"
    # Subset hint from the proxy (filter metadata envoy.lb.subset_hint): None = whole pool;
    # [] = nothing eligible (the director answers 503).
    subset: list[str] | None = None
    received_at: float = 0.0  # time.monotonic() when the headers arrived
    body_bytes: int = 0  # size of the request body as received (flow control's byte limits)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and what to change on its way.

    ``endpoints`` is the ordered "ip:port" list for ``x-gateway-destination-endpoint``: primary
    first, then fallbacks. ``headers`` are extra request headers to set (``x-prefiller-host-port``
    for P/D). ``body`` is not None when the director rewrote the body (model rewrite); the
    protocol layer then sends it instead of the original bytes and fixes Content-Length.
    """

    endpoints: tuple[str, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    target_model: str | None = None
    scores: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None


class Director(Protocol):
    """What the protocol layer calls, once per request, in this order. A director may also define
    ``handle_response_started(request)``: the protocol layer then calls it on the first response
    body chunk (the scheduling director stops counting the request as queued there); and a true
    ``decides_nowait`` attribute, promising that ``handle_request`` never suspends: the protocol
    layer then routes without a task switch or a decision timer (ExtProcStream.dispatch_nowait)."""

    def ready(self) -> bool:
        """True when the endpoint set has synced and, with leader election on, this replica holds the
        Lease (drives gRPC health readiness)."""
        ...

    async def handle_request(self, request: InferenceRequest) -> Decision:
        """Admission, candidate selection, scheduling, pre-request hooks. Raises EppError."""
        ...

    def handle_response_headers(self, request: InferenceRequest, served: str | None, status: int) -> None:
        """The model server answered; ``served`` is the endpoint Envoy actually used, if known."""
        ...

    def handle_response_complete(self, request: InferenceRequest, usage: Usage | None, failed: bool) -> None:
        """The stream ended (normally, by error, or by client cancel). Called exactly once per
        request that got a Decision, so in-flight counts stay exact."""
        ...
