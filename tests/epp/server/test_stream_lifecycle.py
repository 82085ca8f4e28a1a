"""How long a request holds its ext_proc stream (issue 12, findings 5 and 6): requests the EPP cannot
route and streams that start at response headers are answered at once, and with
``release_after_routing`` the stream ends as soon as the request is on its way."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from epp.metrics import ServerMetrics
from epp.server.stream import RELEASED, UNROUTED, ExtProcStream, StreamSettings
from epp.types import Decision
from tests.support.extproc import (
    Collector,
    ScriptedDirector,
    body_msg,
    feed,
    headers_msg,
    request_headers,
    response_headers,
    set_headers,
)

COMPLETION = json.dumps({"model": "m", "prompt": "hello world"}).encode()


def sample(metrics: ServerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def run_until_closed(stream: ExtProcStream, messages: list, out: Collector) -> list:
    """Feed ``messages``; return the ones the stream never read because it ended first."""
    unread = list(messages)

    async def source():
        while unread:
            yield unread.pop(0)

    await asyncio.wait_for(stream.run(source(), out), 5)
    return unread


@pytest.mark.parametrize(
    "headers",
    [
        {":method": "GET", ":path": "/v1/realtime", "connection": "Upgrade", "upgrade": "websocket"},
        {":method": "CONNECT", ":authority": "10.0.0.1:443"},
        {":method": "CONNECT", ":protocol": "websocket", ":path": "/chat"},
    ],
)
@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
async def test_a_request_the_epp_cannot_route_is_handed_back_at_once(
    director: ScriptedDirector, metrics: ServerMetrics, headers: dict[str, str], mode: str
) -> None:
    out = Collector()
    stream = ExtProcStream(director, StreamSettings(), metrics)
    steering = {"x-gateway-destination-endpoint": "6.6.6.6:1"}
    unread = await run_until_closed(
        stream,
        [headers_msg({**headers, **steering}, mode=mode), body_msg(b"tunnel bytes", end_of_stream=False)],
        out,
    )
    # One plain CONTINUE (client steering removed), then the stream ends: the proxy goes on without
    # the EPP, so no body is waited for (it would never come before the tunnel is accepted).
    assert out.kinds() == ["request_headers"]
    answer = out.sent[0].request_headers.response
    assert list(answer.header_mutation.remove_headers) == ["x-gateway-destination-endpoint"]
    assert not answer.header_mutation.set_headers and not answer.clear_route_cache
    assert len(unread) == 1
    assert director.requests == [] and director.completions == []
    assert sample(metrics, "epp_requests_total", {"code": UNROUTED}) == 1
    assert sample(metrics, "epp_requests_in_flight") == 0


async def test_a_stream_that_starts_at_response_headers_is_answered_and_passed_through(
    director: ScriptedDirector, metrics: ServerMetrics
) -> None:
    """Envoy's own replies (a local 404, 503 ...) can reach the EPP with no request before them."""
    out = Collector()
    stream = ExtProcStream(director, StreamSettings(), metrics)
    reply = b'{"error": "no route"}'
    await asyncio.wait_for(
        stream.run(
            feed([response_headers(404, mode="FULL_DUPLEX_STREAMED"), body_msg(reply, response=True)]), out
        ),
        5,
    )
    assert out.kinds() == ["response_headers", "response_body"]
    assert out.sent[1].response_body.response.body_mutation.streamed_response.body == reply
    assert director.response_headers == [] and director.completions == []
    assert sample(metrics, "epp_time_to_first_token_seconds_count") == 0  # no request, no TTFT
    assert sample(metrics, "epp_requests_total", {"code": "404"}) == 1
    assert sample(metrics, "epp_requests_in_flight") == 0


async def test_release_after_routing_ends_the_stream_once_the_body_is_sent(
    director: ScriptedDirector, metrics: ServerMetrics
) -> None:
    out = Collector()
    stream = ExtProcStream(director, StreamSettings(release_after_routing=True), metrics)
    later = [response_headers(200), body_msg(b"{}", response=True)]
    unread = await run_until_closed(
        stream, [request_headers(mode="FULL_DUPLEX_STREAMED"), body_msg(COMPLETION), *later], out
    )
    assert out.kinds() == ["request_headers", "request_body"]
    assert unread == later  # the response never passes through the EPP
    [(_, usage, failed)] = director.completions
    assert usage is None and failed is False  # complete as far as the EPP can know
    assert sample(metrics, "epp_requests_total", {"code": RELEASED}) == 1
    assert sample(metrics, "epp_requests_in_flight") == 0


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
async def test_release_after_routing_on_every_routing_path(
    director: ScriptedDirector, metrics: ServerMetrics, mode: str
) -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

    trailers = ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())
    paths = {
        "headers only": [request_headers(end_of_stream=True, mode=mode)],
        "body": [request_headers(mode=mode), body_msg(COMPLETION)],
        "trailers": [request_headers(mode=mode), body_msg(COMPLETION, end_of_stream=False), trailers],
    }
    for name, messages in paths.items():
        director.completions.clear()
        stream = ExtProcStream(director, StreamSettings(release_after_routing=True), metrics)
        unread = await run_until_closed(stream, [*messages, response_headers(200)], Collector())
        assert len(unread) == 1, name  # only the response headers were left unread
        assert len(director.completions) == 1, name


async def test_a_rewritten_model_keeps_the_stream_for_the_response(
    director: ScriptedDirector, metrics: ServerMetrics
) -> None:
    new_body = json.dumps({"model": "m-v2", "prompt": "hello world"}).encode()
    director.decision = Decision(endpoints=("10.0.0.1:8000",), body=new_body, target_model="m-v2")
    out = Collector()
    stream = ExtProcStream(director, StreamSettings(release_after_routing=True), metrics)
    answer = b'{"model":"m-v2","usage":{"prompt_tokens":3,"completion_tokens":2}}'
    messages = [
        request_headers(),
        body_msg(COMPLETION),
        response_headers(200),
        body_msg(answer, response=True),
    ]
    assert await run_until_closed(stream, messages, out) == []
    assert out.sent[-1].response_body.response.body_mutation.streamed_response.body == answer.replace(
        b"m-v2", b"m"
    )
    [(_, usage, failed)] = director.completions
    assert usage is not None and usage.completion_tokens == 2 and not failed
    assert sample(metrics, "epp_requests_total", {"code": RELEASED}) == 0


async def test_a_buffered_body_followed_by_trailers_is_routed(
    director: ScriptedDirector, metrics: ServerMetrics
) -> None:
    """In BUFFERED mode the body is one message, not end_of_stream when trailers follow: it was
    answered with a 500 ("a mode the EPP cannot hold")."""
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

    out = Collector()
    trailers = ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())
    messages = [request_headers(mode="BUFFERED"), body_msg(COMPLETION, end_of_stream=False), trailers]
    await ExtProcStream(director, StreamSettings(), metrics).run(feed(messages), out)
    assert out.kinds() == ["request_headers", "request_body", "request_trailers"]
    assert out.sent[1].request_body.response.header_mutation.set_headers
    assert len(director.requests) == 1


@pytest.mark.parametrize(
    ("last", "final"),
    [
        ([body_msg(b'{"usage":{"prompt_tokens":3,"completion_tokens":2}}', response=True)], "response_body"),
        ([body_msg(b"{}", end_of_stream=False, response=True), "trailers"], "response_trailers"),
        ([], "response_headers"),  # a response without a body: its headers are the last message
    ],
    ids=["last-body-chunk", "trailers", "bodyless-response"],
)
async def test_the_request_is_complete_before_the_answer_that_ends_the_exchange(
    director: ScriptedDirector, metrics: ServerMetrics, last: list, final: str
) -> None:
    """Envoy resets the ext_proc stream as soon as it has the last answer (Envoy 1.40:
    closeGrpcStreamIfLastRespReceived), which cancels a handler still inside that send (grpc.aio's
    context.write). The Director must already have heard the request succeeded."""
    completed_before_final: list[bool] = []

    async def send(message: ext_proc.ProcessingResponse) -> None:
        if message.WhichOneof("response") == final:
            completed_before_final.append(bool(director.completions))
            raise asyncio.CancelledError  # the reset arrives while this write is in progress

    trailers = ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers())
    last = [trailers if m == "trailers" else m for m in last]
    stream = ExtProcStream(director, StreamSettings(), metrics)
    messages = [request_headers(), body_msg(COMPLETION), response_headers(end_of_stream=not last), *last]
    with pytest.raises(asyncio.CancelledError):
        await stream.run(feed(messages), send)
    assert completed_before_final == [True]
    assert [failed for _, _, failed in director.completions] == [False]
    assert sample(metrics, "epp_requests_in_flight") == 0


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", "post"])
@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"model": "not-served", "prompt": "x"}', b"[1, 2]", b"\xff\xfe", b'{"prompt": "x"}'],
    ids=["garbage", "unknown-model", "array", "not-utf8", "no-model"],
)
@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
async def test_a_body_sent_with_a_method_other_than_post_is_routed_unjudged(
    director: ScriptedDirector, metrics: ServerMetrics, method: str, body: bytes, mode: str
) -> None:
    """No model-server route takes a JSON body except by POST: the EPP answered such requests with
    a 400 or a 404 from their body where vLLM answers 405. They are routed like requests without a
    body (no model, no prompt), the body passed on untouched, and the model server answers."""
    out = Collector()
    headers = request_headers(extra={":method": method}, mode=mode)
    await ExtProcStream(director, StreamSettings(), metrics).run(feed([headers, body_msg(body)]), out)
    assert "immediate_response" not in out.kinds()
    [request] = director.requests
    assert request.parsed.api == "none" and request.parsed.model == "" and request.body == {}
    if mode == "FULL_DUPLEX_STREAMED":
        routed = out.sent[0].request_headers.response
        sent_on = b"".join(m.request_body.response.body_mutation.streamed_response.body for m in out.sent[1:])
        assert sent_on == body
    else:
        routed = out.sent[1].request_body.response
        assert not routed.HasField("body_mutation")  # Envoy sends its buffered body as it is
    assert "x-gateway-destination-endpoint" in set_headers(routed)
