"""The sidecar's two phases against in-test stand-ins that record exactly what they received."""

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import SidecarOptions, parse_allowlist
from sidecar.proxy import Sidecar
from tests.support.nixl_wire import PREFILL_KV_REQUEST

KV_FROM_PREFILL = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_block_ids": [1, 2, 3],
    "remote_engine_id": "engine-p",
    "remote_request_id": "cmpl-p",
    "remote_host": "127.0.0.1",  # the prefill stand-in's own address, as VLLM_NIXL_SIDE_CHANNEL_HOST makes it
    "remote_port": 5600,
    "tp_size": 1,
}


@dataclass
class Received:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: Any


@dataclass
class StandIn:
    """A model server that records requests; its answers are set per test."""

    received: list[Received] = field(default_factory=list)
    status: int = 200
    delay_s: float = 0.0
    answer: Any = None  # JSON body; None = an SSE stream when the request asks for one
    fail_kv_load: bool = False  # answer 500 to requests carrying kv_transfer_params, as vLLM does
    # When set, a stream pauses after its first event until the test releases it.
    hold_stream: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.received.append(Received(request.method, request.path_qs, CIMultiDict(request.headers), body))
        await asyncio.sleep(self.delay_s)
        if self.fail_kv_load and isinstance(body, dict) and "kv_transfer_params" in body:
            return web.json_response({"error": {"message": "KV load failed"}}, status=500)
        if isinstance(body, dict) and body.get("stream") and self.answer is None:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(3):
                await response.write(f'data: {{"n": {i}}}\n\n'.encode())
                if i == 0 and self.hold_stream is not None:
                    await asyncio.wait_for(self.hold_stream.wait(), 5)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return web.json_response(self.answer if self.answer is not None else {"ok": True}, status=self.status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@dataclass
class Rig:
    client: aiohttp.ClientSession
    sidecar: Sidecar
    prefill: StandIn
    decode: StandIn
    prefill_addr: str

    def fallbacks(self, reason: str) -> float:
        return self.sidecar.metrics.fallbacks.labels(reason)._value.get()


async def build_rig(**options: Any) -> AsyncIterator[Rig]:
    prefill, decode = StandIn(answer={"id": "cmpl-p", "kv_transfer_params": KV_FROM_PREFILL}), StandIn()
    prefill_server = TestServer(prefill.app(), host="127.0.0.1")
    decode_server = TestServer(decode.app(), host="127.0.0.1")
    await prefill_server.start_server()
    await decode_server.start_server()
    sidecar = Sidecar(SidecarOptions(model_server_port=decode_server.port, **options))
    sidecar_server = TestServer(sidecar.app(), host="127.0.0.1")
    await sidecar_server.start_server()
    client = aiohttp.ClientSession(base_url=str(sidecar_server.make_url("/")))
    try:
        yield Rig(client, sidecar, prefill, decode, f"127.0.0.1:{prefill_server.port}")
    finally:
        await client.close()
        for server in (sidecar_server, decode_server, prefill_server):
            await server.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for r in build_rig(prefill_timeout_s=0.5):
        yield r


REQUEST = {
    "model": "tiny",
    "prompt": "the prompt",
    "max_tokens": 50,
    "temperature": 0.3,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def test_without_the_header_requests_pass_straight_through(rig):
    async with rig.client.post(
        "/v1/completions?x=1", json=REQUEST, headers={"authorization": "Bearer t"}
    ) as r:
        assert r.status == 200
        text = await r.text()
    assert text.count("data: ") == 4 and text.endswith("data: [DONE]\n\n")
    async with rig.client.get("/v1/models") as r:
        assert (await r.json()) == {"ok": True}
    assert rig.prefill.received == []
    first, second = rig.decode.received
    assert (first.method, first.path, first.body) == ("POST", "/v1/completions?x=1", REQUEST)
    assert first.headers["Authorization"] == "Bearer t"
    assert (second.method, second.path) == ("GET", "/v1/models")


async def test_the_two_phases(rig):
    headers = {"x-prefiller-host-port": rig.prefill_addr, "authorization": "Bearer t"}
    async with rig.client.post("/v1/completions", json=REQUEST, headers=headers) as r:
        assert r.status == 200
        text = await r.text()
    assert text.count("data: ") == 4  # the decode leg's stream reached the client

    [prefill] = rig.prefill.received
    assert prefill.path == "/v1/completions"
    assert prefill.body == {
        "model": "tiny",
        "prompt": "the prompt",
        "temperature": 0.3,
        "stream": False,
        "max_tokens": 1,
        "max_completion_tokens": 1,
        "kv_transfer_params": PREFILL_KV_REQUEST,
    }
    [decode] = rig.decode.received
    assert decode.body == {**REQUEST, "kv_transfer_params": KV_FROM_PREFILL}
    request_id = prefill.headers["X-Request-Id"]
    assert request_id and decode.headers["X-Request-Id"] == request_id
    for leg in (prefill, decode):
        assert "X-Prefiller-Host-Port" not in leg.headers
    # The client's credential goes to the local model server only (--forward-credentials-to-prefill).
    assert decode.headers["Authorization"] == "Bearer t" and "Authorization" not in prefill.headers
    assert rig.sidecar.metrics.requests.labels("disaggregated")._value.get() == 1


async def test_chat_and_a_client_request_id(rig):
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9}
    headers = {"x-prefiller-host-port": rig.prefill_addr, "x-request-id": "client-7"}
    async with rig.client.post("/v1/chat/completions", json=chat, headers=headers) as r:
        assert r.status == 200
    [prefill], [decode] = rig.prefill.received, rig.decode.received
    assert prefill.path == decode.path == "/v1/chat/completions"
    assert prefill.body["max_completion_tokens"] == 1 and "stream_options" not in prefill.body
    assert decode.body["max_completion_tokens"] == 9
    assert prefill.headers["X-Request-Id"] == decode.headers["X-Request-Id"] == "client-7"


async def fallback_case(rig: Rig) -> Received:
    headers = {"x-prefiller-host-port": rig.prefill_addr}
    async with rig.client.post("/v1/completions", json=REQUEST, headers=headers) as r:
        assert r.status == 200
        assert (await r.text()).endswith("data: [DONE]\n\n")
    [decode] = rig.decode.received
    return decode


async def test_prefill_error_status_falls_back_to_local_prefill(rig):
    rig.prefill.status, rig.prefill.answer = 500, {"error": "boom"}
    decode = await fallback_case(rig)
    assert decode.body == REQUEST  # the original request, no kv_transfer_params
    assert rig.fallbacks("status") == 1


async def test_prefill_timeout_falls_back(rig):
    rig.prefill.delay_s = 2.0  # the rig's prefill timeout is 0.5 s
    decode = await fallback_case(rig)
    assert decode.body == REQUEST
    assert rig.fallbacks("timeout") == 1


async def test_prefill_without_kv_params_falls_back(rig):
    rig.prefill.answer = {"id": "x", "kv_transfer_params": None}  # vLLM without a KV connector
    assert (await fallback_case(rig)).body == REQUEST
    assert rig.fallbacks("invalid_response") == 1


async def test_an_oversized_prefill_answer_falls_back(rig, monkeypatch):
    # read() took an answer of any size; only the prefill timeout bounded it.
    from sidecar import proxy

    monkeypatch.setattr(proxy, "MAX_PREFILL_ANSWER_BYTES", 4096, raising=False)
    rig.prefill.answer = {"id": "x", "kv_transfer_params": KV_FROM_PREFILL, "pad": "x" * 10_000}
    assert (await fallback_case(rig)).body == REQUEST
    assert rig.fallbacks("invalid_response") == 1
    rig.decode.received.clear()
    rig.prefill.answer = {"id": "x", "kv_transfer_params": KV_FROM_PREFILL, "pad": "x" * 1000}
    assert "kv_transfer_params" in (await fallback_case(rig)).body  # within the limit: split as usual


async def test_unreachable_prefill_falls_back(rig):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    rig.prefill_addr = f"127.0.0.1:{closed_port}"
    assert (await fallback_case(rig)).body == REQUEST
    assert rig.fallbacks("connect") == 1


async def test_malformed_prefiller_header_is_a_400(rig):
    async with rig.client.post(
        "/v1/completions", json=REQUEST, headers={"x-prefiller-host-port": "nope"}
    ) as r:
        assert r.status == 400
        assert "host:port" in (await r.json())["error"]["message"]
    assert rig.decode.received == [] and rig.prefill.received == []


async def test_a_body_the_sidecar_cannot_split_is_a_400(rig):
    headers = {"x-prefiller-host-port": rig.prefill_addr, "content-type": "application/json"}
    for body in (b"{oops", b"[1]"):
        async with rig.client.post("/v1/completions", data=body, headers=headers) as r:
            assert r.status == 400
    assert rig.prefill.received == [] and rig.decode.received == []


async def test_ssrf_guard_refuses_hosts_outside_the_allowlist():
    async for rig in build_rig(prefill_allowlist=parse_allowlist("10.0.0.0/8")):
        async with rig.client.post(
            "/v1/completions", json=REQUEST, headers={"x-prefiller-host-port": rig.prefill_addr}
        ) as r:
            assert r.status == 403
            assert "127.0.0.1 is not an allowed prefill host" in (await r.json())["error"]["message"]
        assert rig.prefill.received == [] and rig.decode.received == []
        assert rig.sidecar.metrics.ssrf_rejections._value.get() == 1


async def test_model_server_down_is_a_502():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    sidecar = Sidecar(SidecarOptions(model_server_port=closed_port))
    server = TestServer(sidecar.app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as client, client.get(server.make_url("/health")) as r:
            assert r.status == 502
            assert "model server unavailable" in (await r.json())["error"]["message"]
    finally:
        await server.close()


async def test_metrics_listener_exposes_the_fallback_counter(rig):
    rig.prefill.status = 503
    await fallback_case(rig)
    server = TestServer(rig.sidecar.metrics_app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as client, client.get(server.make_url("/metrics")) as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    finally:
        await server.close()
    samples = {
        s.labels["reason"]: s.value
        for s in families["llmd_sidecar_prefill_fallbacks"].samples
        if s.name.endswith("_total")
    }
    assert samples == {"timeout": 0, "connect": 0, "status": 1, "invalid_response": 0, "decode_kv_load": 0}


async def test_decode_that_cannot_load_the_kv_is_rerun_locally(rig):
    rig.decode.fail_kv_load = True
    async with rig.client.post(
        "/v1/completions", json=REQUEST, headers={"x-prefiller-host-port": rig.prefill_addr}
    ) as r:
        assert r.status == 200
        assert (await r.text()).endswith("data: [DONE]\n\n")
    with_kv, local = rig.decode.received
    assert with_kv.body == {**REQUEST, "kv_transfer_params": KV_FROM_PREFILL}
    assert local.body == REQUEST
    assert local.headers["X-Request-Id"] == with_kv.headers["X-Request-Id"]
    assert rig.fallbacks("decode_kv_load") == 1


async def test_model_server_errors_without_pd_are_passed_through(rig):
    rig.decode.status, rig.decode.answer = 503, {"error": "overloaded"}
    async with rig.client.post("/v1/completions", json={"model": "tiny", "prompt": "x"}) as r:
        assert r.status == 503
        assert await r.json() == {"error": "overloaded"}
    assert len(rig.decode.received) == 1


async def test_stream_chunks_reach_the_client_as_they_are_produced(rig):
    rig.decode.hold_stream = asyncio.Event()
    headers = {"x-prefiller-host-port": rig.prefill_addr}
    async with rig.client.post("/v1/completions", json=REQUEST, headers=headers) as r:
        # The model server is still holding the rest of its stream: the first event got through alone.
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        assert first == b'data: {"n": 0}\n\n'
        rig.decode.hold_stream.set()
        rest = await asyncio.wait_for(r.content.read(), 5)
    assert rest.endswith(b"data: [DONE]\n\n") and rest.count(b"data: ") == 3


async def test_tracing_spans_both_legs_under_the_callers_trace() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async for rig in build_rig(prefill_timeout_s=0.5):
        rig.sidecar.tracer = provider.get_tracer("test")
        caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        headers = {"x-prefiller-host-port": rig.prefill_addr, "traceparent": caller}
        async with rig.client.post("/v1/completions", json=REQUEST, headers=headers) as response:
            assert response.status == 200
            await response.read()
        spans = {span.name: span for span in exporter.get_finished_spans()}
        assert set(spans) == {"llm_d.sidecar.pd", "llm_d.sidecar.prefill", "llm_d.sidecar.decode"}
        root = spans["llm_d.sidecar.pd"]
        assert format(root.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
        for leg in ("llm_d.sidecar.prefill", "llm_d.sidecar.decode"):
            assert spans[leg].parent is not None and spans[leg].parent.span_id == root.context.span_id
        # Each leg hands its own span's context to the server it calls.
        (prefill,) = rig.prefill.received
        (decode,) = rig.decode.received
        assert (
            format(spans["llm_d.sidecar.prefill"].context.span_id, "016x") in prefill.headers["traceparent"]
        )
        assert format(spans["llm_d.sidecar.decode"].context.span_id, "016x") in decode.headers["traceparent"]


async def test_without_tracing_no_traceparent_is_added(rig):
    headers = {"x-prefiller-host-port": rig.prefill_addr}
    async with rig.client.post("/v1/completions", json=REQUEST, headers=headers) as response:
        assert response.status == 200
        await response.read()
    assert rig.sidecar.tracer is None
    assert all("traceparent" not in r.headers for r in rig.prefill.received + rig.decode.received)


@pytest.mark.parametrize("pd", [False, True])
async def test_the_model_server_sees_the_clients_host(rig, pd):
    """vLLM builds absolute URLs from Host: a trailing slash (POST /v1/completions/) is a 307 whose
    Location is ``http://<Host>/v1/completions``. The sidecar sent the model server's own address
    instead, so the client was redirected to 127.0.0.1:<vllm port> (its own loopback); the gateway
    alone (Envoy keeps Host) gives the client's host."""
    headers = {"host": "gw.example.com"}
    if pd:
        headers["x-prefiller-host-port"] = rig.prefill_addr
    async with rig.client.post("/v1/completions", json=REQUEST, headers=headers) as r:
        assert r.status == 200
    [local] = rig.decode.received
    assert local.headers.getall("Host") == ["gw.example.com"]
    if pd:
        [prefill] = rig.prefill.received  # a leg of the sidecar's own, to the pod it names
        assert prefill.headers["Host"] == rig.prefill_addr


class BrokenModelServer:
    """A model server over raw TCP that breaks its answer: ``modes`` maps a request body marker to
    how it answers (``cut-500``: a 500 whose body stops short; ``cut-200``: a 200 whose body stops
    short; ``garbage``: no HTTP at all); anything else gets a proper 200."""

    def __init__(self, modes: dict[bytes, str]) -> None:
        self.modes = modes
        self.bodies: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                self.bodies.append(body)
                mode = next((m for marker, m in self.modes.items() if marker in body), "ok")
                if mode == "ok":
                    answer = b'{"ok": true}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(answer), answer)
                    )
                    await writer.drain()
                    continue
                if mode == "garbage":
                    writer.write(b"this is not HTTP\r\n\r\n")
                else:
                    # The 500 stops before its first body byte: read(200) then has nothing to return.
                    status, part = (
                        (b"500 Internal Server Error", b"") if mode == "cut-500" else (b"200 OK", b"{")
                    )
                    writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 1000\r\n\r\n" + part)
                await writer.drain()
                writer.transport.abort()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def broken_rig() -> AsyncIterator[tuple[Rig, BrokenModelServer]]:
    prefill = StandIn(answer={"id": "cmpl-p", "kv_transfer_params": KV_FROM_PREFILL})
    prefill_server = TestServer(prefill.app(), host="127.0.0.1")
    await prefill_server.start_server()
    model = BrokenModelServer({})
    sidecar = Sidecar(SidecarOptions(model_server_port=await model.start(), prefill_timeout_s=2))
    sidecar_server = TestServer(sidecar.app(), host="127.0.0.1")
    await sidecar_server.start_server()
    client = aiohttp.ClientSession(base_url=str(sidecar_server.make_url("/")))
    try:
        yield Rig(client, sidecar, prefill, StandIn(), f"127.0.0.1:{prefill_server.port}"), model
    finally:
        await client.close()
        await sidecar_server.close()
        await prefill_server.close()
        await model.close()


async def test_a_decode_error_answer_cut_short_still_falls_back_to_local_prefill(broken_rig):
    """vLLM dying while it answers the KV-load failure: reading the 200 logged bytes raised
    ClientPayloadError, which escaped the handler (aiohttp's bare 500) instead of the local retry."""
    rig, model = broken_rig
    model.modes = {b"kv_transfer_params": "cut-500"}
    request = {**REQUEST, "stream": False}
    async with rig.client.post(
        "/v1/completions", json=request, headers={"x-prefiller-host-port": rig.prefill_addr}
    ) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"ok": True}
    with_kv, local = model.bodies
    assert b"kv_transfer_params" in with_kv and json.loads(local) == request
    assert rig.fallbacks("decode_kv_load") == 1


async def test_a_model_server_that_breaks_before_its_status_is_a_502(broken_rig):
    rig, model = broken_rig
    model.modes = {b"prompt": "garbage"}
    async with rig.client.post("/v1/completions", json={"model": "tiny", "prompt": "x"}) as r:
        assert r.status == 502
        assert "model server unavailable" in (await r.json())["error"]["message"]


async def test_a_model_server_answer_cut_mid_body_cuts_the_client(
    broken_rig, caplog: pytest.LogCaptureFixture
):
    """Headers are gone already: the client must see the answer cut (never wait on a short body)."""
    rig, model = broken_rig
    model.modes = {b"prompt": "cut-200"}

    async def call() -> None:
        async with rig.client.post("/v1/completions", json={"model": "tiny", "prompt": "x"}) as r:
            assert r.status == 200
            await r.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(call(), 5)
    assert any("model server stream broke" in record.getMessage() for record in caplog.records)


async def test_every_concurrent_request_reaches_the_local_model_server() -> None:
    """The local leg shared the prefill legs' per-host connection limit (100): the 101st concurrent
    request waited in the sidecar for a free connection with no timeout at all, a queue that vLLM
    (256 sequences by default) never saw, so neither its waiting-queue metric nor the EPP did."""
    held = asyncio.Event()
    release = asyncio.Event()
    in_progress = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_progress
        in_progress += 1
        if in_progress == 150:
            held.set()
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    model_server = TestServer(app, host="127.0.0.1")
    await model_server.start_server()
    sidecar_server = TestServer(
        Sidecar(SidecarOptions(model_server_port=model_server.port)).app(), host="127.0.0.1"
    )
    await sidecar_server.start_server()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

            async def one() -> int:
                async with client.post(sidecar_server.make_url("/v1/completions"), json={"prompt": "x"}) as r:
                    return r.status

            calls = [asyncio.create_task(one()) for _ in range(150)]
            try:
                await asyncio.wait_for(held.wait(), 5)
            finally:
                release.set()
            assert await asyncio.gather(*calls) == [200] * 150
    finally:
        await sidecar_server.close()
        await model_server.close()
