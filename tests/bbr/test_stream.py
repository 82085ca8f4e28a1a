"""One ext_proc stream through the body router, without gRPC or Envoy: what it answers for each
kind of request, in both body modes the gateways use."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from prometheus_client import CollectorRegistry

from bbr.metrics import RouterMetrics
from bbr.stream import RouterSettings, RouterStream
from bbr.table import RoutingTable
from epp.server.stream import BufferBudget
from tests.support.extproc import Collector, body_msg, feed, headers_msg, request_headers, set_headers

TABLE = RoutingTable.from_document(
    {
        "models": [
            {"model": "llama", "names": ["llama", "sql-v1", "sql"]},
            {"model": "qwen", "names": ["qwen"]},
        ]
    }
)
BASE = "x-gateway-base-model-name"


def make(
    settings: RouterSettings | None = None, budget: BufferBudget | None = None
) -> tuple[RouterStream, RouterMetrics]:
    metrics = RouterMetrics(CollectorRegistry())
    settings = settings or RouterSettings()
    budget = budget or BufferBudget(settings.max_buffered_request_bytes)
    return RouterStream(TABLE, settings, metrics, budget, created=1700000000), metrics


async def run(messages: list[ext_proc.ProcessingRequest], **kw: Any) -> tuple[Collector, RouterMetrics]:
    stream, metrics = make(**kw)
    sent = Collector()
    await stream.run(feed(messages), sent)
    return sent, metrics


def outcome(metrics: RouterMetrics, name: str) -> float:
    return metrics.registry.get_sample_value("bbr_requests_total", {"outcome": name}) or 0.0


def immediate(sent: Collector) -> tuple[int, dict[str, Any]]:
    [answer] = sent.sent
    response = answer.immediate_response
    return response.status.code, json.loads(response.body)


BODY = json.dumps({"model": "sql", "prompt": "SELECT 1"}).encode()


async def test_full_duplex_sets_the_base_model_header_then_streams_the_body_back_unchanged() -> None:
    sent, metrics = await run(
        [request_headers(mode="FULL_DUPLEX_STREAMED"), body_msg(BODY[:10], False), body_msg(BODY[10:], True)]
    )
    assert sent.kinds() == ["request_headers", "request_body"]
    common = sent.sent[0].request_headers.response
    assert common.clear_route_cache  # the proxy picks the route again, now with the header
    assert set_headers(common) == {
        BASE: "llama",
        "x-gateway-model-name": "sql",
        "content-length": str(len(BODY)),
    }
    streamed = sent.sent[1].request_body.response.body_mutation.streamed_response
    assert streamed.body == BODY and streamed.end_of_stream
    assert outcome(metrics, "routed") == 1
    assert metrics.registry.get_sample_value("bbr_routed_requests_total", {"model": "llama"}) == 1


async def test_buffered_answers_the_headers_then_mutates_them_on_the_body_answer() -> None:
    sent, _ = await run([request_headers(mode="BUFFERED"), body_msg(BODY, True)])
    assert sent.kinds() == ["request_headers", "request_body"]
    assert not sent.sent[0].request_headers.response.header_mutation.set_headers
    common = sent.sent[1].request_body.response
    assert set_headers(common) == {BASE: "llama", "x-gateway-model-name": "sql"}
    assert common.clear_route_cache and not common.HasField("body_mutation")


async def test_a_buffered_body_followed_by_trailers_is_routed_then_the_trailers_answered() -> None:
    trailers = ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())
    sent, _ = await run([request_headers(mode="BUFFERED"), body_msg(BODY, False), trailers])
    assert sent.kinds() == ["request_headers", "request_body", "request_trailers"]


async def test_a_client_sent_route_header_is_overwritten() -> None:
    body = json.dumps({"model": "qwen", "prompt": "x"}).encode()
    sent, _ = await run([request_headers(extra={BASE: "llama"}), body_msg(body)])
    header = sent.sent[0].request_headers.response.header_mutation.set_headers
    [route] = [h for h in header if h.header.key == BASE]
    assert route.header.raw_value == b"qwen"
    assert route.append_action == route.OVERWRITE_IF_EXISTS_OR_ADD


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            json.dumps({"model": "gpt-9", "prompt": "x"}).encode(),
            404,
            'model "gpt-9" is not served by this gateway',
        ),
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "request body is empty"),
        (b"[1, 2]", 400, "must be a JSON object, got list"),
        (b'{"prompt": "x"}', 400, "no 'model' field"),
        (b'{"model": 7, "prompt": "x"}', 400, "'model' must be a non-empty string, got 7"),
        (b'{"model": "  ", "prompt": "x"}', 400, "'model' must be a non-empty string"),
        (b'{"model": "llama", "prompt": "\\ud800"}', 400, "lone UTF-16 surrogate"),
        (b'{"model": "llama", "x": ' + b"[" * 150 + b"]" * 150 + b"}", 400, "nests deeper than 100 levels"),
        (b'{"model": "llama", "temperature": NaN}', 400, "NaN"),
    ],
)
async def test_bad_bodies_and_unknown_models_get_a_clear_4xx(body: bytes, status: int, message: str) -> None:
    sent, metrics = await run([request_headers(), body_msg(body)])
    code, answer = immediate(sent)
    assert code == status and message in answer["error"]["message"], answer
    # OpenAI's (and vLLM's) error object: message, type, param and code, param null when no one
    # field is to blame. The param key was missing.
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["param"] is None
    assert answer["error"]["code"] == status
    assert outcome(metrics, "unknown_model" if status == 404 else "bad_request") == 1


async def test_a_compressed_body_is_415_naming_the_encoding() -> None:
    """It was a 400 saying the gzip bytes are "not UTF-8 text"."""
    raw = gzip.compress(json.dumps({"model": "llama", "prompt": "x"}).encode())
    sent, metrics = await run([request_headers(extra={"content-encoding": "gzip"}), body_msg(raw)])
    code, answer = immediate(sent)
    assert code == 415 and "content-encoding 'gzip' are not supported" in answer["error"]["message"]
    assert outcome(metrics, "bad_request") == 1


async def test_an_oversized_body_gets_413_and_an_exhausted_budget_503() -> None:
    sent, metrics = await run(
        [request_headers(), body_msg(b"x" * 600, False)], settings=RouterSettings(max_request_body_bytes=512)
    )
    assert immediate(sent)[0] == 413 and outcome(metrics, "too_large") == 1
    budget = BufferBudget(1000)
    assert budget.reserve(900)  # other streams hold 900 bytes
    sent, metrics = await run([request_headers(), body_msg(b"x" * 200, False)], budget=budget)
    assert immediate(sent)[0] == 503 and outcome(metrics, "overloaded") == 1


async def test_a_refused_or_routed_stream_returns_its_bytes_to_the_budget() -> None:
    budget = BufferBudget(10_000)
    await run([request_headers(), body_msg(BODY[:5], False), body_msg(BODY[5:], True)], budget=budget)
    await run([request_headers(), body_msg(b"{bad", True)], budget=budget)
    assert budget.used == 0


async def test_models_are_listed_from_the_table_without_a_body() -> None:
    sent, metrics = await run([headers_msg({":method": "GET", ":path": "/v1/models"}, end_of_stream=True)])
    code, listing = immediate(sent)
    assert code == 200 and [m["id"] for m in listing["data"]] == ["llama", "sql-v1", "sql", "qwen"]
    assert outcome(metrics, "models_listed") == 1
    sent, _ = await run([headers_msg({":method": "GET", ":path": "/v1/models/sql-v1"}, end_of_stream=True)])
    assert immediate(sent) == (200, {**immediate(sent)[1], "id": "sql-v1", "parent": "llama"})
    sent, _ = await run([headers_msg({":method": "GET", ":path": "/v1/models/nope"}, end_of_stream=True)])
    assert immediate(sent)[0] == 404


@pytest.mark.parametrize(
    "headers",
    [
        {":method": "GET", ":path": "/health"},
        {":method": "POST", ":path": "/v1/completions"},
        {":method": "CONNECT", ":path": "/"},
    ],
)
async def test_a_request_without_a_body_cannot_be_routed_and_gets_404(headers: dict[str, str]) -> None:
    sent, metrics = await run([headers_msg(headers, end_of_stream=True)])
    code, answer = immediate(sent)
    assert code == 404 and "routes requests by the model their JSON body names" in answer["error"]["message"]
    assert outcome(metrics, "no_body") == 1


async def test_an_upgrade_is_refused_at_once_instead_of_waiting_for_a_body() -> None:
    sent, _ = await run([request_headers(extra={"upgrade": "websocket"}), body_msg(BODY)])
    assert sent.kinds() == ["immediate_response"]


async def test_response_events_pass_through_if_a_proxy_sends_them() -> None:
    stream, _ = make()
    sent = Collector()
    messages = [
        headers_msg({":status": "200"}, response=True),
        body_msg(b"chunk", end_of_stream=True, response=True),
        ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers()),
    ]
    await stream.run(feed(messages), sent)
    assert sent.kinds() == ["response_headers", "response_body", "response_trailers"]
    assert sent.sent[1].response_body.response.body_mutation.streamed_response.body == b"chunk"


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
@pytest.mark.parametrize(
    "body", [b"{}", b"{bad", BODY, b"[1]"], ids=["empty-object", "garbage", "routable", "array"]
)
async def test_a_request_other_than_post_is_answered_from_its_method_and_path_not_its_body(
    mode: str, body: bytes
) -> None:
    """A body with GET /v1/models got a 400 from the body ("no 'model' field") instead of the
    listing; with any other non-POST request the verdict depended on what the body held."""
    listing_request = [headers_msg({":method": "GET", ":path": "/v1/models"}, mode=mode), body_msg(body)]
    sent, _ = await run(listing_request)
    assert immediate(sent)[0] == 200
    for method in ("GET", "PUT", "OPTIONS", "DELETE"):
        headers = headers_msg({":method": method, ":path": "/v1/completions"}, mode=mode)
        sent, metrics = await run([headers, body_msg(body)])
        code, answer = immediate(sent)
        assert code == 404 and f"{method} /v1/completions is not a POST" in answer["error"]["message"]
        assert outcome(metrics, "no_body") == 1
