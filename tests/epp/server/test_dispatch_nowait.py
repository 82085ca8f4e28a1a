"""``ExtProcStream.dispatch_nowait``: the synchronous entry point the h2 transport calls while ``run``
waits for the next message. Response-phase messages get the same answers, and the Director hears
the same, as through ``run``; request-phase messages are refused with nothing changed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from epp.metrics import ServerMetrics
from epp.server.stream import ExtProcStream, StreamSettings
from epp.types import Decision
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
