"""One ext_proc stream = one HTTP request: read the body's ``model``, answer with the routing header.

Request side: collect headers, buffer the body (bounded per stream and over all streams), parse it
with the stack's strict JSON reader (:mod:`jsonbody`), look the model up, then answer

* FULL_DUPLEX_STREAMED (what the gateways use): the deferred header answer setting
  ``X-Gateway-Base-Model-Name`` (and ``X-Gateway-Model-Name``) with ``clear_route_cache``, so the
  proxy picks the route again with the header, then the body unchanged, in chunks, as
  llm-d-inference-payload-processor answers (pkg/handlers/request.go);
* BUFFERED: the same header mutation on the body answer.

Then the stream ends: the router has nothing to do with the response, and a stream that outlives
routing would tie every running generation to this process (a restart would break them).

Refusals are answered by the proxy on the router's behalf, with an OpenAI-style error body: 400 for
a body that is not a JSON object or names no model, 404 for a model no pool serves, 413 for a body
over the cap, 503 when all streams together hold too many body bytes. A request without a body has
no model to route by: ``GET /v1/models`` (and ``/v1/models/<name>``) are answered from the table,
anything else gets a 404 saying so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import unquote

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.type.v3 import http_status_pb2

import jsonbody
from bbr import metrics as outcomes
from bbr.metrics import RouterMetrics
from bbr.table import RoutingTable
from epp.server import messages
from epp.server.state import BodyMode
from epp.server.stream import BufferBudget

log = logging.getLogger(__name__)

Send = Callable[[ext_proc.ProcessingResponse], Awaitable[None]]

MODELS_PATH = "/v1/models"

_PROTO_BODY_MODES = {
    processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED: BodyMode.FULL_DUPLEX_STREAMED,
    processing_mode_pb2.ProcessingMode.BUFFERED: BodyMode.BUFFERED,
}


@dataclass(frozen=True, slots=True)
class RouterSettings:
    max_request_body_bytes: int = 4 * 1024 * 1024
    # All streams together (see epp.server.stream.BufferBudget).
    max_buffered_request_bytes: int = 256 * 1024 * 1024
    # Used when the proxy does not announce its processing mode (Envoy >= 1.33 sends protocol_config).
    default_body_mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED


class RouterError(Exception):
    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


class _StreamClosed(Exception):
    """The stream's work is done (answered or refused): stop reading it."""


class RouterStream:
    def __init__(
        self,
        table: RoutingTable,
        settings: RouterSettings,
        metrics: RouterMetrics,
        budget: BufferBudget,
        created: int,
    ) -> None:
        self._table = table
        self._settings = settings
        self._metrics = metrics
        self._budget = budget
        self._created = created
        self._mode = settings.default_body_mode
        self._headers: dict[str, str] = {}
        self._parts: list[bytes] = []
        self._size = 0
        self._decided = False

    async def run(self, requests: AsyncIterator[ext_proc.ProcessingRequest], send: Send) -> None:
        try:
            async for message in requests:
                await self._dispatch(message, send)
        except _StreamClosed:
            pass
        finally:
            self._release_body()

    async def _dispatch(self, message: ext_proc.ProcessingRequest, send: Send) -> None:
        if message.HasField("protocol_config"):
            mode = _PROTO_BODY_MODES.get(message.protocol_config.request_body_mode)
            if mode is not None:
                self._mode = mode
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            await self._on_headers(message.request_headers, send)
        elif kind == "request_body":
            await self._on_body(message.request_body, send)
        elif kind == "request_trailers":
            if not self._decided:
                await self._route(send, release=False)
            await send(messages.request_trailers_done())
            raise _StreamClosed
        # The gateways send the router no response events; if one asks anyway, let it pass.
        elif kind == "response_headers":
            await send(messages.continue_response_headers())
        elif kind == "response_body":
            body = message.response_body
            if self._mode is BodyMode.BUFFERED:
                await send(messages.replaced_response_body(None))
            else:
                for answer in messages.streamed_response_body(body.body, body.end_of_stream, chunked=False):
                    await send(answer)
        elif kind == "response_trailers":
            await send(messages.response_trailers_done())

    async def _on_headers(self, headers: ext_proc.HttpHeaders, send: Send) -> None:
        for header in headers.headers.headers:
            value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
            self._headers[header.key.lower()] = value
        # Only a POST body names a model (every vLLM route with a JSON body is a POST route): any
        # other method is answered from its method and path, its body unread. Parsing it answered
        # GET /v1/models with a body a 400 ("no 'model' field") instead of the listing, and a
        # GET /v1/completions one a 400 or a 404 depending on what its body happened to hold.
        method = self._headers.get(":method", "POST")
        if headers.end_of_stream or _tunnel(self._headers) or not jsonbody.carries_json_body(method):
            await self._answer_without_body(send)
        if self._mode is BodyMode.BUFFERED:
            # Envoy waits for this answer before it sends the body.
            await send(messages.continue_request_headers())
        # FULL_DUPLEX_STREAMED: the header answer waits until the body names the model.

    async def _on_body(self, body: ext_proc.HttpBody, send: Send) -> None:
        if self._decided:
            return
        size = len(body.body)
        if self._size + size > self._settings.max_request_body_bytes:
            await self._refuse(
                send,
                RouterError(
                    413,
                    f"request body exceeds {self._settings.max_request_body_bytes} bytes",
                    outcomes.TOO_LARGE,
                ),
            )
        if not self._budget.reserve(size):
            await self._refuse(
                send,
                RouterError(
                    503,
                    "the body router is holding too many request bodies; retry later",
                    outcomes.OVERLOADED,
                ),
            )
        self._size += size
        self._parts.append(body.body)
        if body.end_of_stream:
            await self._route(send, release=True)
        elif self._mode is BodyMode.BUFFERED:
            # A BUFFERED body is one message; without end_of_stream only because trailers follow.
            await self._route(send, release=False)

    async def _route(self, send: Send, *, release: bool) -> None:
        self._decided = True
        started = time.perf_counter()
        raw = b"".join(self._parts)
        self._release_body()
        try:
            if (problem := jsonbody.encoding_problem(self._headers.get("content-encoding", ""))) is not None:
                raise RouterError(415, problem, outcomes.BAD_REQUEST)
            model, base = self._lookup(raw)
        except RouterError as error:
            await self._refuse(send, error)
        set_headers = {
            self._table.header.lower(): base,
            self._table.model_header.lower(): model,
        }
        if self._mode is BodyMode.FULL_DUPLEX_STREAMED:
            # The body is sent back whole: the proxy needs its length again.
            set_headers["content-length"] = str(len(raw))
            await send(_route_headers(set_headers))
            for chunk in messages.streamed_request_body(raw):
                await send(chunk)
        else:
            await send(_route_body(set_headers))
        self._metrics.decision.observe(time.perf_counter() - started)
        self._metrics.requests.labels(outcomes.ROUTED).inc()
        self._metrics.routed.labels(base).inc()
        if release:
            raise _StreamClosed

    def _lookup(self, raw: bytes) -> tuple[str, str]:
        if not raw.strip():
            raise RouterError(
                400, "request body is empty; expected a JSON object naming a model", outcomes.BAD_REQUEST
            )
        try:
            body = jsonbody.loads(raw, max_containers=jsonbody.MAX_REQUEST_CONTAINERS)
        except jsonbody.BodyError as error:
            raise RouterError(400, error.message, outcomes.BAD_REQUEST) from None
        if not isinstance(body, dict):
            raise RouterError(
                400, f"request body must be a JSON object, got {_describe(body)}", outcomes.BAD_REQUEST
            )
        model = body.get("model")
        if model is None:
            raise RouterError(400, "request body has no 'model' field", outcomes.BAD_REQUEST)
        if not isinstance(model, str) or not model.strip():
            raise RouterError(
                400, f"'model' must be a non-empty string, got {_describe(model)}", outcomes.BAD_REQUEST
            )
        base = self._table.base_of(model)
        if base is None:
            raise RouterError(
                404,
                f"model {_describe(model)} is not served by this gateway (GET {MODELS_PATH} lists the"
                " models)",
                outcomes.UNKNOWN_MODEL,
            )
        return model, base

    async def _answer_without_body(self, send: Send) -> NoReturn:
        self._decided = True
        method = self._headers.get(":method", "GET")
        path = self._headers.get(":path", "/").split("?", 1)[0].rstrip("/")
        if method in ("GET", "HEAD") and path == MODELS_PATH:
            await send(_immediate(200, self._table.listing(self._created)))
            self._metrics.requests.labels(outcomes.MODELS_LISTED).inc()
            raise _StreamClosed
        if method in ("GET", "HEAD") and path.startswith(MODELS_PATH + "/"):
            name = path[len(MODELS_PATH) + 1 :]
            card = self._table.model_card(unquote(name), self._created)
            if card is not None:
                await send(_immediate(200, json.dumps(card, separators=(",", ":")).encode()))
                self._metrics.requests.labels(outcomes.MODELS_LISTED).inc()
                raise _StreamClosed
            await self._refuse(
                send,
                RouterError(
                    404, f"model {_describe(name)} is not served by this gateway", outcomes.UNKNOWN_MODEL
                ),
            )
        why = "has no body" if method == "POST" else "is not a POST"
        await self._refuse(
            send,
            RouterError(
                404,
                f"{method} {path or '/'} {why}: this gateway routes requests by the model their JSON body"
                f" names (GET {MODELS_PATH} lists the models)",
                outcomes.NO_BODY,
            ),
        )

    async def _refuse(self, send: Send, error: RouterError) -> NoReturn:
        log.info("refused with %d: %s", error.status, error.message)
        self._metrics.requests.labels(error.outcome).inc()
        await send(_immediate(error.status, _error_body(error.status, error.message)))
        raise _StreamClosed

    def _release_body(self) -> None:
        self._parts.clear()
        self._budget.release(self._size)
        self._size = 0


def _tunnel(headers: dict[str, str]) -> bool:
    """CONNECT (HTTP/1, or HTTP/2's extended CONNECT with ``:protocol``) and protocol upgrades carry no
    JSON body to route by; waiting for one would hang them."""
    return headers.get(":method") == "CONNECT" or ":protocol" in headers or "upgrade" in headers


def _route_headers(set_headers: dict[str, str]) -> ext_proc.ProcessingResponse:
    return ext_proc.ProcessingResponse(
        request_headers=ext_proc.HeadersResponse(
            response=ext_proc.CommonResponse(
                header_mutation=messages.header_mutation(set_headers), clear_route_cache=True
            )
        )
    )


def _route_body(set_headers: dict[str, str]) -> ext_proc.ProcessingResponse:
    return ext_proc.ProcessingResponse(
        request_body=ext_proc.BodyResponse(
            response=ext_proc.CommonResponse(
                header_mutation=messages.header_mutation(set_headers), clear_route_cache=True
            )
        )
    )


def _immediate(status: int, body: bytes) -> ext_proc.ProcessingResponse:
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.StatusCode.ValueType(status)),
            headers=messages.header_mutation({"content-type": "application/json"}),
            body=body,
            # Envoy copies details into the response-code details, which must not contain spaces.
            details=f"body_router_{status}",
        )
    )


def _error_body(status: int, message: str) -> bytes:
    kind = {404: "not_found_error", 503: "server_error"}.get(status, "invalid_request_error")
    # OpenAI's error object (vLLM's too): message, type, param and code; no single field is blamed.
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."
