"""One ext_proc stream = one HTTP request: the protocol state machine between Envoy and a Director.

Request side: collect headers, buffer the body (bounded), parse it, ask the Director where to go,
then answer with the destination header + ``envoy.lb`` metadata and the body (FULL_DUPLEX_STREAMED)
or with a body answer carrying the routing headers (BUFFERED). Response side: report status and the
served endpoint, pass the body through (rewriting the model name back when the decision changed
it), read ``usage``, and tell the Director the request is over exactly once, whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

import jsonbody
from epp.metrics import ServerMetrics
from epp.server import messages
from epp.server.body import parse_request_body
from epp.server.protocol import (
    CONSUMED_HEADERS,
    DEBUG_ENDPOINT,
    DEFAULT_FAIRNESS_ID,
    DESTINATION_ENDPOINT,
    DESTINATION_ENDPOINT_SERVED,
    DESTINATION_ENDPOINT_SUBSET,
    FAIRNESS_ID_HEADERS,
    LB_METADATA_NAMESPACE,
    OBJECTIVE_HEADERS,
    PREFILL_ENDPOINT,
    REQUEST_ID,
    SERVED_BY,
    STEERING_HEADERS,
    SUBSET_HINT_NAMESPACE,
)
from epp.server.response_body import ModelNameRewriter, SseTracker
from epp.server.state import BodyMode, RequestState, ResponseState
from epp.types import Decision, Director, EppError, InferenceRequest, ParsedBody

log = logging.getLogger(__name__)

Send = Callable[[ext_proc.ProcessingResponse], Awaitable[None]]
SendNowait = Callable[[ext_proc.ProcessingResponse], None]
Answers = Iterable[ext_proc.ProcessingResponse]


# The messages whose handling never waits (see _answer_now).
_RESPONSE_KINDS = frozenset({"response_headers", "response_body", "response_trailers"})

_PROTO_BODY_MODES = {
    processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED: BodyMode.FULL_DUPLEX_STREAMED,
    processing_mode_pb2.ProcessingMode.BUFFERED: BodyMode.BUFFERED,
}


class BufferBudget:
    """Bytes of request bodies held by all streams together. Each stream's body is capped on its
    own; this caps the sum, so many slow partial uploads cannot exhaust the EPP's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used = max(0, self.used - size)


class ActiveRequestIds:
    """Request ids of the streams in progress. The Director keys its in-flight bookkeeping on the
    id, and a client may send the same ``x-request-id`` twice at once: the second one gets a suffix
    (the upstream still sees the client's header unchanged).

    The suffixes of one id are numbered on from the last one given while any stream holds that id,
    so a claim costs O(1) however many streams share it. Trying ``#2``, ``#3`` ... from the start
    made k concurrent requests with one client-chosen id cost O(k^2) on the event loop (4,000 of
    them: 1.9 s of CPU)."""

    def __init__(self) -> None:
        self._active: dict[str, str] = {}  # id given -> the client's id it was made from
        self._holders: dict[str, int] = {}  # client's id -> how many given ids come from it
        self._last_suffix: dict[str, int] = {}  # client's id -> the last suffix given

    def claim(self, request_id: str) -> str:
        unique = request_id
        if unique in self._active:
            n = self._last_suffix.get(request_id, 1)
            while unique in self._active:  # another client may have sent "<id>#<n>" itself
                n += 1
                unique = f"{request_id}#{n}"
            self._last_suffix[request_id] = n
        self._active[unique] = request_id
        self._holders[request_id] = self._holders.get(request_id, 0) + 1
        return unique

    def release(self, request_id: str) -> None:
        base = self._active.pop(request_id, None)
        if base is None:
            return
        left = self._holders[base] - 1
        if left:
            self._holders[base] = left
        else:
            del self._holders[base]
            self._last_suffix.pop(base, None)

    def __len__(self) -> int:
        return len(self._active)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    max_request_body_bytes: int = 4 * 1024 * 1024
    # All streams together; see BufferBudget.
    max_buffered_request_bytes: int = 256 * 1024 * 1024
    # Upper bound on one Director decision (admission queues included); past it the client gets 503.
    decision_timeout: float = 30.0
    # Used when Envoy does not announce its processing mode (protocol_config, Envoy >= 1.33 sends it).
    default_body_mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED
    # End the ext_proc stream as soon as the request is routed (the proxy then streams the response
    # without the EPP: ext_proc protocol, "if the server closes the gRPC stream cleanly, the data
    # plane proceeds without consulting the server"). An EPP restart then loses only requests being
    # routed at that instant, not every response in progress; the price is no response-side data
    # (token usage, TTFT, status) and in-flight counts that end at routing. A decision that rewrote
    # the model name keeps the stream: the response must get the client's name back.
    release_after_routing: bool = False


# epp_requests_total{code} for requests whose stream ended at routing (the EPP never sees the status)
# and for requests it could not route (CONNECT, upgrades: handed back to the proxy unrouted).
RELEASED = "released"
UNROUTED = "unrouted"


class _StreamClosed(Exception):
    """An ImmediateResponse was sent: Envoy ends the stream, nothing more to do."""


class ExtProcStream:
    def __init__(
        self,
        director: Director,
        settings: StreamSettings,
        metrics: ServerMetrics,
        budget: BufferBudget | None = None,
        request_ids: ActiveRequestIds | None = None,
    ) -> None:
        self._director = director
        # Optional (see epp.types.Director): the scheduling director counts a request as
        # pending until its first response byte; test and benchmark directors need not care.
        self._on_started: Callable[[InferenceRequest], None] | None = getattr(
            director, "handle_response_started", None
        )
        # Optional too: a director whose handle_request never suspends (the scheduling director
        # without flow control or preparers) lets the request phase run on the transport's inline
        # path as well (dispatch_nowait), and its decision needs no timer.
        self._decides_nowait: bool = bool(getattr(director, "decides_nowait", False))
        self._inline_send: SendNowait | None = None
        self._settings = settings
        self._metrics = metrics
        self._budget = budget if budget is not None else BufferBudget(settings.max_buffered_request_bytes)
        self._request_ids = request_ids if request_ids is not None else ActiveRequestIds()
        self._req = RequestState(mode=settings.default_body_mode)
        self._resp = ResponseState(mode=settings.default_body_mode)
        # Lifecycle: the Director heard of the end / the in-flight gauge holds this stream.
        self._completed = False
        self._counted = False
        # Messages handled through dispatch_nowait (the transport's inline path).
        self.inline_messages = 0

    async def run(self, requests: AsyncIterator[ext_proc.ProcessingRequest], send: Send) -> None:
        """Process every message of the stream. Returns when Envoy closes it or after an
        ImmediateResponse; cancellation (Envoy dropped the stream) propagates after cleanup."""
        try:
            async for message in requests:
                await self._dispatch(message, send)
        except _StreamClosed:
            pass
        finally:
            self._finish()

    def dispatch_nowait(self, message: ext_proc.ProcessingRequest, send_nowait: SendNowait) -> bool:
        """Handle ``message`` now if nothing in it can wait, queueing its answers with
        ``send_nowait``; False, with nothing changed, if it needs ``run``'s path. For a transport
        that calls this while ``run`` waits for the next message (epp.transport.stream,
        set_inline): same code, same order, without waking the task. An exception (``_StreamClosed``
        after a rejection included) is the transport's to raise inside ``run``.

        Response-phase messages never wait. Request-phase ones wait only for the Director, so they
        are handled here when it ``decides_nowait``: ``_dispatch_request`` itself runs, driven to its
        end in one step, with a ``send`` that queues at once. Nothing in it can then suspend; if something
        did, that is a bug, reported as one rather than left half done."""
        kind = message.WhichOneof("request")
        answers = self._answer_now(message, kind)
        if answers is None:
            if not self._decides_nowait:
                return False
            self.inline_messages += 1
            self._inline_send = send_nowait
            step = self._dispatch_request(message, kind, self._send_inline)
            try:
                step.send(None)
            except StopIteration:
                return True
            finally:
                self._inline_send = None
            step.close()
            raise RuntimeError(f"the request path suspended on {kind} although the director decides_nowait")
        self.inline_messages += 1
        for answer in answers:
            send_nowait(answer)
        return True

    async def _send_inline(self, answer: ext_proc.ProcessingResponse) -> None:
        """``send`` for the request path run by dispatch_nowait: queues, never suspends."""
        assert self._inline_send is not None
        self._inline_send(answer)

    async def _dispatch(self, message: ext_proc.ProcessingRequest, send: Send) -> None:
        kind = message.WhichOneof("request")
        answers = self._answer_now(message, kind)
        if answers is not None:
            for answer in answers:
                await send(answer)
            return
        await self._dispatch_request(message, kind, send)

    async def _dispatch_request(
        self, message: ext_proc.ProcessingRequest, kind: str | None, send: Send
    ) -> None:
        """A request-phase message (``kind``): everything but _answer_now's."""
        self._absorb(message)
        if kind == "request_headers":
            await self._on_request_headers(message.request_headers, send)
        elif kind == "request_body":
            await self._on_request_body(message.request_body, send)
        elif kind == "request_trailers":
            if not self._req.decided:
                await self._route(send)
            await send(messages.request_trailers_done())
            self._maybe_release()

    def _answer_now(self, message: ext_proc.ProcessingRequest, kind: str | None) -> Answers | None:
        """The answers to a response-phase message (``kind``), computed synchronously: its handling
        never waits, only sending its answers can. None, with nothing changed, for the others."""
        if kind not in _RESPONSE_KINDS:
            return None
        self._absorb(message)
        if kind == "response_body":
            return self._on_response_body(message.response_body)
        if kind == "response_headers":
            return (self._on_response_headers(message.response_headers),)
        self._complete(failed=False)  # response_trailers; before the last answer: see _answer_last
        return (messages.response_trailers_done(),)

    def _absorb(self, message: ext_proc.ProcessingRequest) -> None:
        if message.HasField("protocol_config"):
            self._absorb_protocol_config(message.protocol_config)
        if message.HasField("metadata_context"):
            self._absorb_metadata(message.metadata_context)

    # ----------------------------------------------------------------- request path

    async def _on_request_headers(self, headers: ext_proc.HttpHeaders, send: Send) -> None:
        self._req.received_at = time.monotonic()
        self._metrics.in_flight.inc()
        self._counted = True
        for header in headers.headers.headers:
            value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
            self._req.headers[header.key.lower()] = value
        self._req.path = self._req.headers.get(":path", "/")
        client_id = self._req.headers.get(REQUEST_ID, "")
        if not client_id:
            client_id, self._req.request_id_generated = str(uuid.uuid4()), True
        self._req.request_id = self._request_ids.claim(client_id)

        why = _unroutable(self._req.headers)
        if why is not None:
            # No body will come before the gateway accepts the tunnel, and there is nothing to
            # schedule on: waiting for one hung such requests until a timeout. Step aside at once:
            # let the headers through and end the stream, so the proxy carries on without the EPP
            # (and without buffering a body that never ends, in BUFFERED mode).
            self._req.decided = True
            log.info("request %s (%s) cannot be routed: passed through", self._req.request_id, why)
            await send(messages.continue_request_headers(self._client_steering_headers()))
            self._metrics.requests.labels(UNROUTED).inc()
            raise _StreamClosed
        elif headers.end_of_stream:
            await self._route_headers_only(send)
        elif self._req.mode is BodyMode.BUFFERED:
            # Envoy waits for this answer before sending the body; strip client steering headers now.
            await send(messages.continue_request_headers(self._client_steering_headers()))
        # FULL_DUPLEX_STREAMED: the header answer waits until the body has been scheduled.

    async def _on_request_body(self, body: ext_proc.HttpBody, send: Send) -> None:
        if self._req.decided:
            return
        if self._req.body_size + len(body.body) > self._settings.max_request_body_bytes:
            await self._reject(
                send,
                EppError(413, f"request body exceeds {self._settings.max_request_body_bytes} bytes"),
            )
        if not self._budget.reserve(len(body.body)):
            await self._reject(
                send, EppError(503, "the endpoint picker is buffering too many request bodies; retry later")
            )
        self._req.body_size += len(body.body)
        self._req.body_parts.append(body.body)
        if body.end_of_stream:
            await self._route(send)
            self._maybe_release()  # end_of_stream on a body: no trailers follow
        elif self._req.mode is BodyMode.BUFFERED:
            # BUFFERED hands over the whole body in one message; it is not end_of_stream only when
            # request trailers follow (answered, then released, in _dispatch). Waiting for more
            # body would wait forever; refusing it answered every request with trailers 500.
            await self._route(send)

    async def _route(self, send: Send) -> None:
        self._req.decided = True
        raw = b"".join(self._req.body_parts)
        self._release_body()
        self._metrics.request_bytes.observe(len(raw))
        # A missing :method counts as POST, as before.
        if not jsonbody.carries_json_body(self._req.headers.get(":method", "POST")):
            # No model-server route takes this method with a request body (vLLM's are all POST):
            # judging the body answered GET/PUT/OPTIONS ... with a 400 (not JSON) or a 404 (model
            # not served) where the model server answers 405. Route it as a request without a
            # body and pass the body on untouched, so the model server's own verdict comes back.
            parsed = ParsedBody(model="", prompt_text="", stream=False, api="none")
            body: dict[str, object] = {}
        else:
            try:
                _refuse_encoded(self._req.headers)
                body, parsed = parse_request_body(self._req.path, raw)
            except EppError as error:
                await self._reject(send, error)
        decision = await self._schedule(self._new_request(body, parsed, len(raw)), send)

        out_body = decision.body if decision.body is not None else raw
        set_headers = self._routing_headers(decision)
        remove = [h for h in self._client_steering_headers() if h not in set_headers]
        destination = set_headers[DESTINATION_ENDPOINT]
        if self._req.mode is BodyMode.FULL_DUPLEX_STREAMED:
            set_headers["content-length"] = str(len(out_body))
            await send(messages.routed_request_headers(set_headers, remove, destination))
            for chunk in messages.streamed_request_body(out_body):
                await send(chunk)
        else:
            if decision.body is not None:
                set_headers["content-length"] = str(len(out_body))
            await send(messages.routed_request_body(set_headers, remove, destination, decision.body))

    async def _route_headers_only(self, send: Send) -> None:
        """A request without a body (GET /v1/models, health probes through the gateway): there is no
        prompt to schedule on, so the Director picks with an empty one."""
        self._req.decided = True
        parsed = ParsedBody(model="", prompt_text="", stream=False, api="none")
        decision = await self._schedule(self._new_request({}, parsed), send)
        set_headers = self._routing_headers(decision)
        remove = [h for h in self._client_steering_headers() if h not in set_headers]
        await send(messages.routed_request_headers(set_headers, remove, set_headers[DESTINATION_ENDPOINT]))
        self._maybe_release()

    def _new_request(
        self, body: dict[str, object], parsed: ParsedBody, body_bytes: int = 0
    ) -> InferenceRequest:
        return InferenceRequest(
            request_id=self._req.request_id,
            path=self._req.path,
            headers={k: v for k, v in self._req.headers.items() if k not in CONSUMED_HEADERS},
            body=body,
            parsed=parsed,
            objective=_first_header(self._req.headers, OBJECTIVE_HEADERS),
            fairness_id=_first_header(self._req.headers, FAIRNESS_ID_HEADERS) or DEFAULT_FAIRNESS_ID,
            subset=self._req.subset,
            received_at=self._req.received_at,
            body_bytes=body_bytes,
        )

    async def _schedule(self, request: InferenceRequest, send: Send) -> Decision:
        started = time.perf_counter()
        try:
            if self._decides_nowait:
                # Never suspends (see __init__): no timer, and none could interrupt it anyway.
                decision = await self._director.handle_request(request)
            else:
                async with asyncio.timeout(self._settings.decision_timeout):
                    decision = await self._director.handle_request(request)
        except EppError as error:
            await self._reject(send, error)
        except TimeoutError:
            await self._reject(
                send, EppError(503, f"no scheduling decision within {self._settings.decision_timeout:g}s")
            )
        except Exception:
            log.exception("director failed on request %s", request.request_id)
            await self._reject(send, EppError(500, "internal error while scheduling the request"))
        finally:
            self._metrics.scheduling.observe(time.perf_counter() - started)
        self._req.scheduled, self._req.decision = request, decision
        if not decision.endpoints or not all(decision.endpoints):
            await self._reject(send, EppError(503, "no endpoint available", "rejected-no-endpoints"))
        if decision.target_model and decision.target_model != request.parsed.model and request.parsed.model:
            self._resp.rewriter = ModelNameRewriter(decision.target_model, request.parsed.model)
        return decision

    def _maybe_release(self) -> None:
        """With ``release_after_routing``, end the stream now that the request is on its way
        (raises _StreamClosed): the Director hears the request is complete, the proxy carries on."""
        if not self._settings.release_after_routing or self._req.scheduled is None or self._resp.rewriter:
            return
        self._complete(failed=False, count=False)
        self._metrics.requests.labels(RELEASED).inc()
        raise _StreamClosed

    def _routing_headers(self, decision: Decision) -> dict[str, str]:
        headers = {key.lower(): value for key, value in decision.headers.items()}
        headers[DESTINATION_ENDPOINT] = ",".join(decision.endpoints)
        if self._req.request_id_generated:  # a fresh uuid is unique already: no suffix to strip
            headers[REQUEST_ID] = self._req.request_id
        return headers

    def _client_steering_headers(self) -> list[str]:
        return [name for name in STEERING_HEADERS if name in self._req.headers]

    async def _reject(self, send: Send, error: EppError) -> NoReturn:
        """Answer the client through Envoy and end the stream (raises _StreamClosed)."""
        log.info("rejecting request %s with %d: %s", self._req.request_id, error.status, error.message)
        self._metrics.rejections.labels(str(error.status), error.reason or "").inc()
        self._metrics.requests.labels(str(error.status)).inc()
        self._resp.status = error.status
        await send(messages.immediate_error(error.status, error.message, error.reason))
        self._complete(failed=True, count=False)
        raise _StreamClosed

    # ----------------------------------------------------------------- response path

    def _on_response_headers(self, headers: ext_proc.HttpHeaders) -> ext_proc.ProcessingResponse:
        content_type = ""
        for header in headers.headers.headers:
            key = header.key.lower()
            value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
            if key == ":status":
                self._resp.status = int(value) if value.isdigit() else 0
            elif key == "content-type":
                content_type = value.lower()
        if "text/event-stream" in content_type:
            self._resp.sse = SseTracker(self._resp.rewriter)
        if self._req.scheduled is not None:
            try:
                self._director.handle_response_headers(
                    self._req.scheduled, self._resp.served, self._resp.status or 0
                )
            except Exception:
                log.exception("director.handle_response_headers failed for %s", self._req.request_id)
        # A rewritten model name changes the body length: let the proxy re-frame the response.
        rewriting = self._resp.rewriter is not None and self._resp.mode is not None
        remove = ["content-length"] if rewriting else []
        if headers.end_of_stream:
            self._resp.ended = True
            self._complete(failed=self._resp.server_failed())  # before the last answer: see _answer_last
        return messages.continue_response_headers(remove, self._served_by())

    def _on_response_body(self, body: ext_proc.HttpBody) -> Iterable[ext_proc.ProcessingResponse]:
        chunk, end = body.body, body.end_of_stream
        if not self._resp.started:
            self._resp.started = True
            if self._req.scheduled is not None:  # not for local replies or unrouted requests
                self._metrics.ttft.observe(time.monotonic() - self._req.received_at)
                if self._on_started is not None:
                    try:
                        self._on_started(self._req.scheduled)
                    except Exception:
                        log.exception("director.handle_response_started failed for %s", self._req.request_id)
        self._resp.size += len(chunk)
        answers: Iterable[ext_proc.ProcessingResponse]
        if self._resp.mode is BodyMode.BUFFERED:
            answers = [messages.replaced_response_body(self._track_whole_body(chunk, end))]
        elif self._resp.sse is not None:
            answers = messages.streamed_response_body(self._resp.sse.feed(chunk, end), end, chunked=False)
        elif self._resp.rewriter is not None:
            # Rewritten as it passes, holding back only a possible partial name (RewritingStream).
            if self._resp.rewriting is None:
                self._resp.rewriting = self._resp.rewriter.stream()
            self._resp.buffered.feed(chunk, end)
            out = self._resp.rewriting.feed(chunk, end)
            answers = messages.streamed_response_body(out, end, chunked=False) if out or end else []
        else:
            self._resp.buffered.feed(chunk, end)
            answers = messages.streamed_response_body(chunk, end, chunked=False)
        if end:
            self._resp.ended = True
            self._complete(failed=self._resp.server_failed())  # before the last answer: see _answer_last
        return answers

    def _track_whole_body(self, chunk: bytes, end: bool) -> bytes | None:
        """Feed a (buffered) body to the usage tracker; return the rewritten body or None if unchanged."""
        if self._resp.sse is not None:
            self._resp.sse.feed(chunk, end)
        else:
            self._resp.buffered.feed(chunk, end)
        return self._resp.rewriter(chunk) if self._resp.rewriter is not None else None

    def _served_by(self) -> dict[str, str]:
        """The opt-in debug answer: which endpoint served (as the proxy reports it, else the pick)."""
        decision = self._req.decision
        if self._req.headers.get(DEBUG_ENDPOINT, "").strip().lower() != "true" or decision is None:
            return {}
        served = f"endpoint={self._resp.served or decision.endpoints[0]}"
        if prefill := decision.headers.get(PREFILL_ENDPOINT):
            served += f", prefill={prefill}"
        return {SERVED_BY: served}

    # ----------------------------------------------------------------- bookkeeping

    def _absorb_protocol_config(self, config: ext_proc.ProtocolConfiguration) -> None:
        request_mode = _PROTO_BODY_MODES.get(config.request_body_mode)
        if request_mode is not None:
            self._req.mode = request_mode
        self._resp.mode = _PROTO_BODY_MODES.get(config.response_body_mode)

    def _absorb_metadata(self, context: base_pb2.Metadata) -> None:
        filter_metadata = context.filter_metadata
        if SUBSET_HINT_NAMESPACE in filter_metadata:
            fields = filter_metadata[SUBSET_HINT_NAMESPACE].fields
            if DESTINATION_ENDPOINT_SUBSET in fields:
                values = fields[DESTINATION_ENDPOINT_SUBSET].list_value.values
                self._req.subset = [v.string_value for v in values if v.WhichOneof("kind") == "string_value"]
        if LB_METADATA_NAMESPACE in filter_metadata:
            fields = filter_metadata[LB_METADATA_NAMESPACE].fields
            if DESTINATION_ENDPOINT_SERVED in fields:
                self._resp.served = fields[DESTINATION_ENDPOINT_SERVED].string_value or None

    # _answer_last: the request is complete before the EPP sends the answer that ends the exchange
    # (the last response body chunk, the response trailers, headers of a bodyless response). Envoy
    # closes the ext_proc stream as soon as it has that answer (ext_proc.cc,
    # closeGrpcStreamIfLastRespReceived: Envoy 1.40 sends RST_STREAM), and on grpc.aio the handler
    # can still be inside that last write when the reset cancels it: completing afterwards reported
    # ~4% of successful FULL_DUPLEX_STREAMED requests to the Director as failed.

    def _complete(self, failed: bool, count: bool = True) -> None:
        if self._completed:
            return
        self._completed = True
        usage = self._resp.usage()
        if count:
            self._metrics.requests.labels(str(self._resp.status or 0)).inc()
        if self._req.received_at:
            self._metrics.duration.observe(time.monotonic() - self._req.received_at)
        if self._resp.size:
            self._metrics.response_bytes.observe(self._resp.size)
        if usage is not None:
            self._metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
            self._metrics.tokens.labels("completion").inc(usage.completion_tokens)
        if self._req.scheduled is not None:
            try:
                self._director.handle_response_complete(self._req.scheduled, usage, failed)
            except Exception:
                log.exception("director.handle_response_complete failed for %s", self._req.request_id)

    def _release_body(self) -> None:
        self._req.body_parts.clear()
        self._budget.release(self._req.body_size)
        self._req.body_size = 0

    def _finish(self) -> None:
        """The stream is over (normally, by error or by cancellation)."""
        self._release_body()
        if self._req.request_id:
            self._request_ids.release(self._req.request_id)
        if not self._completed and self._req.scheduled is not None:
            # With response_body_mode NONE a finished response never shows its body: judge by status.
            cut_short = self._resp.started and not self._resp.ended
            self._complete(failed=cut_short or self._resp.server_failed())
        if self._counted:
            self._metrics.in_flight.dec()
            self._counted = False


def _unroutable(headers: Mapping[str, str]) -> str | None:
    """What makes this request one the EPP cannot route, or None: CONNECT (HTTP/1 or an HTTP/2
    extended CONNECT carrying ``:protocol``) or an HTTP/1 protocol upgrade (``upgrade`` header)."""
    if headers.get(":method") == "CONNECT" or ":protocol" in headers:
        return "CONNECT request"
    if "upgrade" in headers:
        return f"protocol upgrade to {headers['upgrade'][:40]!r}"
    return None


def _refuse_encoded(headers: Mapping[str, str]) -> None:
    problem = jsonbody.encoding_problem(headers.get("content-encoding", ""))
    if problem is not None:
        raise EppError(415, problem)


def _first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None
