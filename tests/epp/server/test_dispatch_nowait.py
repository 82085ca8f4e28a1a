"""``ExtProcStream.dispatch_nowait``: the synchronous entry point the h2 transport calls while ``run``
waits for the next message. Response-phase messages get the same answers, and the Director hears
the same, as through ``run``. Request-phase messages are refused with nothing changed, unless the
Director ``decides_nowait``: then they too are handled there, with the same outcome as through
``run`` (routed, rejected, released)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from epp.metrics import ServerMetrics
from epp.server.stream import ExtProcStream, StreamSettings
from epp.types import Decision, EppError
from tests.support.extproc import Collector, ScriptedDirector, body_msg, request_headers, response_headers

COMPLETION = json.dumps({"model": "m", "prompt": "hello world"}).encode()
SSE = b'data: {"choices":[{"text":"hi"}],"model":"target"}\n\ndata: [DONE]\n\n'


def request_phase() -> list[ext_proc.ProcessingRequest]:
    return [request_headers(mode="FULL_DUPLEX_STREAMED", extra={"x-request-id": "r1"}), body_msg(COMPLETION)]


def response_phase() -> list[ext_proc.ProcessingRequest]:
    trailers = ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers())
    return [
        response_headers(200, "text/event-stream"),
        body_msg(SSE[:20], end_of_stream=False, response=True),
        body_msg(SSE[20:], end_of_stream=False, response=True),
        body_msg(b"", end_of_stream=True, response=True),
        trailers,
    ]


class Parked:
    """The transport's side: yields the queued messages, then waits (as the h2 stream's task does)
    until ``end`` or more messages; ``idle`` is set while the reader waits."""

    def __init__(self, messages: Sequence[ext_proc.ProcessingRequest]) -> None:
        self.queue: asyncio.Queue[ext_proc.ProcessingRequest | None] = asyncio.Queue()
        for message in messages:
            self.queue.put_nowait(message)
        self.idle = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[ext_proc.ProcessingRequest]:
        while True:
            if self.queue.empty():
                self.idle.set()
            message = await self.queue.get()
            self.idle.clear()
            if message is None:
                return
            yield message


def sent_bytes(out: Collector) -> list[bytes]:
    return [m.SerializeToString(deterministic=True) for m in out.sent]


async def test_response_phase_inline_matches_the_task_path(metrics: ServerMetrics) -> None:
    decision = Decision(endpoints=("10.0.0.1:8000",), target_model="target")
    results = []
    for inline in (False, True):
        director = ScriptedDirector(decision=decision)
        stream = ExtProcStream(director, StreamSettings(), metrics)
        out = Collector()
        requests = Parked(request_phase() if inline else request_phase() + response_phase())
        if not inline:
            requests.queue.put_nowait(None)
        running = asyncio.create_task(stream.run(aiter(requests), out))
        if inline:
            await requests.idle.wait()  # routed; run() waits for the next message
            for message in response_phase():
                assert stream.dispatch_nowait(message, out.sent.append)
            requests.queue.put_nowait(None)
        await running
        assert stream.inline_messages == (5 if inline else 0)
        results.append((sent_bytes(out), director.response_headers, director.starts, director.completions))
    assert results[0] == results[1]
    answers, _, starts, completions = results[1]
    assert len(starts) == 1  # handle_response_started, at the first body chunk
    assert len(answers) == 2 + 5  # routed headers + body, then one answer per response message
    assert [failed for _, _, failed in completions] == [False]


async def test_request_phase_messages_are_refused_with_nothing_changed(
    director: ScriptedDirector, metrics: ServerMetrics
) -> None:
    stream = ExtProcStream(director, StreamSettings(), metrics)
    sent: list[ext_proc.ProcessingResponse] = []
    trailers = ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())
    for message in [*request_phase(), trailers]:
        assert not stream.dispatch_nowait(message, sent.append)
    assert sent == [] and stream.inline_messages == 0
    assert metrics.in_flight.value == 0 and director.requests == []
    # The stream is untouched: the same messages through run() route as usual.
    out = Collector()
    await stream.run(aiter(Parked([*request_phase(), None])), out)  # type: ignore[list-item]
    assert out.kinds() == ["request_headers", "request_body"]
    assert len(director.requests) == 1


# ---------------------------------------------------------------- the request phase, decides_nowait

TRAILERS = ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())
BUFFERED_HEADERS = request_headers(mode="BUFFERED", extra={"x-request-id": "r1"})
# Each case: the messages of a request phase (and what settings / Director outcome apply). Every
# one must behave the same whether run() or dispatch_nowait handles it.
REQUEST_CASES: dict[str, tuple[list[ext_proc.ProcessingRequest], StreamSettings, Exception | None]] = {
    "routed": (request_phase(), StreamSettings(), None),
    "body in chunks": (
        [request_phase()[0], body_msg(COMPLETION[:9], end_of_stream=False), body_msg(COMPLETION[9:])],
        StreamSettings(),
        None,
    ),
    "headers only": (
        [request_headers(path="/v1/models", end_of_stream=True, extra={"x-request-id": "r1"})],
        StreamSettings(),
        None,
    ),
    "buffered, with trailers": (
        [BUFFERED_HEADERS, body_msg(COMPLETION, end_of_stream=False), TRAILERS],
        StreamSettings(),
        None,
    ),
    "malformed body: 400": ([request_phase()[0], body_msg(b"{not json")], StreamSettings(), None),
    "body too large: 413": (request_phase(), StreamSettings(max_request_body_bytes=8), None),
    "director refuses: 503": (request_phase(), StreamSettings(), EppError(503, "no capacity")),
    "director fails: 500": (request_phase(), StreamSettings(), ValueError("a bug")),
    "released after routing": (request_phase(), StreamSettings(release_after_routing=True), None),
}


class ParkedWithErrors(Parked):
    """Parked, and what dispatch_nowait raised is raised by the next read, as the h2 transport does."""

    async def __aiter__(self) -> AsyncIterator[ext_proc.ProcessingRequest]:
        async for message in super().__aiter__():
            if isinstance(message, BaseException):
                raise message
            yield message


@pytest.mark.parametrize("case", list(REQUEST_CASES))
async def test_request_phase_inline_matches_the_task_path(case: str, metrics: ServerMetrics) -> None:
    messages, settings, error = REQUEST_CASES[case]
    results = []
    for inline in (False, True):
        director = ScriptedDirector(nowait=inline, error=error)
        stream = ExtProcStream(director, settings, metrics)
        out = Collector()
        requests = ParkedWithErrors([] if inline else [*messages, None])  # type: ignore[list-item]
        running = asyncio.create_task(stream.run(aiter(requests), out))
        offered = 0
        if inline:
            for message in messages:
                await requests.idle.wait()  # run() waits for the next message: the transport offers it
                offered += 1
                try:
                    assert stream.dispatch_nowait(message, out.sent.append)
                except Exception as raised:  # handed to run(), as the transport does
                    requests.queue.put_nowait(raised)  # type: ignore[arg-type]
                    break
                await asyncio.sleep(0)
            requests.queue.put_nowait(None)
        await asyncio.wait_for(running, 5)
        # Inline, every message offered was handled there (the last one may end the stream).
        assert stream.inline_messages == offered and (offered > 0) == inline
        results.append((sent_bytes(out), [r.request_id for r in director.requests], director.completions))
    assert results[0] == results[1], case
    assert results[1][0], "every case answers Envoy"


async def test_a_request_phase_that_suspends_is_reported_not_left_half_done(metrics: ServerMetrics) -> None:
    # A director that claims decides_nowait and then waits breaks its promise: dispatch_nowait says
    # so instead of returning with the decision pending (and the coroutine is closed, not leaked).
    director = ScriptedDirector(nowait=True, delay=0.01)
    stream = ExtProcStream(director, StreamSettings(), metrics)
    sent: list[ext_proc.ProcessingResponse] = []
    assert stream.dispatch_nowait(request_phase()[0], sent.append)
    with pytest.raises(RuntimeError, match="suspended on request_body"):
        stream.dispatch_nowait(request_phase()[1], sent.append)
    assert sent == [] and len(director.requests) == 1
