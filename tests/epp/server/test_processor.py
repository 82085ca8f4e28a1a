"""EppServer over real gRPC on loopback, on each transport: ext_proc stream, health semantics,
/metrics, cancellation, drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from epp.server import EppServer, ExtProcStream, ServerMetrics, ServerOptions, Transport
from epp.types import EppError
from localrun import free_port
from tests.support.epp import wait_until
from tests.support.extproc import ScriptedDirector, body_msg, request_headers, response_headers

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BODY = json.dumps({"model": "m", "prompt": "p"}).encode()


@pytest.fixture(params=list(Transport), ids=[t.value for t in Transport])
def transport(request: pytest.FixtureRequest) -> Transport:
    return Transport(request.param)


@pytest.fixture
async def server(director: ScriptedDirector, transport: Transport) -> AsyncIterator[EppServer]:
    options = ServerOptions(
        host="127.0.0.1",
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        drain_timeout=0.2,
        transport=transport,
    )
    running = EppServer(director, options, ServerMetrics(CollectorRegistry()))
    await running.start()
    yield running
    await running.stop(grace=0)


async def health(server: EppServer, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
        return int(reply.status)


async def test_ext_proc_stream_over_grpc(server: EppServer, director: ScriptedDirector) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await call.write(request_headers())
        await call.write(body_msg(BODY))
        first, second = await call.read(), await call.read()
        assert first.request_headers.response.clear_route_cache
        assert second.request_body.response.body_mutation.streamed_response.body == BODY
        await call.write(response_headers(200, end_of_stream=True))
        third = await call.read()
        assert third.HasField("response_headers")
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    assert [failed for _, _, failed in director.completions] == [False]


async def test_health_follows_readiness_and_draining(server: EppServer, director: ScriptedDirector) -> None:
    director.is_ready = False
    assert await health(server, "liveness") == SERVING
    for service in ("readiness", "", "envoy.service.ext_proc.v3.ExternalProcessor", "inference-extension"):
        assert await health(server, service) == NOT_SERVING
    director.is_ready = True
    assert await health(server, "readiness") == SERVING
    drain = asyncio.create_task(server.drain())
    await asyncio.sleep(0.05)
    assert await health(server, "readiness") == NOT_SERVING
    assert await health(server, "liveness") == SERVING
    await drain


async def test_health_watch_streams_changes(server: EppServer, director: ScriptedDirector) -> None:
    director.is_ready = False
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_health_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="readiness"))
        assert (await watch.read()).status == NOT_SERVING
        director.is_ready = True
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        watch.cancel()


async def test_client_cancel_completes_the_request_once(
    server: EppServer, director: ScriptedDirector
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await call.write(request_headers())
        await call.write(body_msg(BODY))
        await call.read()
        await call.read()
        call.cancel()  # Envoy dropped the stream while waiting for the model server
    for _ in range(100):
        if director.completions:
            break
        await asyncio.sleep(0.02)
    assert [failed for _, _, failed in director.completions] == [True]
    assert server.processor.active_streams == 0


async def test_metrics_endpoint_serves_epp_metrics(server: EppServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await call.write(request_headers())
        await call.write(body_msg(b"{broken"))
        reply: ext_proc.ProcessingResponse = await call.read()
        assert reply.immediate_response.status.code == 400
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
        async with session.get(url) as response:
            text = await response.text()
    assert response.status == 200
    assert 'epp_requests_total{code="400"} 1.0' in text
    assert "epp_request_body_bytes_bucket" in text


async def test_drain_serves_through_the_notice_then_waits_for_open_streams(
    director: ScriptedDirector, transport: Transport
) -> None:
    """SIGTERM on one replica of several: readiness off at once, new streams still served during the
    notice, then the drain lasts exactly as long as the streams it accepted (issue 12, finding 6)."""
    options = ServerOptions(
        host="127.0.0.1",
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        drain_notice=0.3,
        drain_timeout=10.0,
        transport=transport,
    )
    server = EppServer(director, options, ServerMetrics(CollectorRegistry()))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{options.grpc_port}") as channel:
            stub = ext_proc_grpc.ExternalProcessorStub(channel)
            open_call = stub.Process()  # a request whose response is still streaming
            await open_call.write(request_headers())
            await open_call.write(body_msg(BODY))
            await open_call.read(), await open_call.read()
            drain = asyncio.create_task(server.drain())
            await asyncio.sleep(0.1)
            assert await health(server, "readiness") == NOT_SERVING
            late = stub.Process()  # the gateway has not noticed yet: still served
            await late.write(request_headers())
            await late.write(body_msg(BODY))
            assert (await late.read()).request_headers.response.clear_route_cache
            await late.read()
            await late.write(response_headers(200, end_of_stream=True))
            await late.read()
            await late.done_writing()
            assert await late.read() == grpc.aio.EOF
            await asyncio.sleep(0.5)
            assert not drain.done()  # past the notice, but a stream is open
            await open_call.write(response_headers(200, end_of_stream=True))
            await open_call.read()
            await open_call.done_writing()
            await asyncio.wait_for(drain, 2)  # ends with the last stream, long before the timeout
    finally:
        await server.stop(grace=0)
    assert [failed for _, _, failed in director.completions] == [False, False]


async def test_drain_gives_up_on_streams_at_the_timeout(
    server: EppServer, director: ScriptedDirector
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await call.write(request_headers())
        await call.write(body_msg(BODY))
        await call.read()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(server.drain(), 5)  # the fixture's drain timeout is 0.2 s
        assert asyncio.get_running_loop().time() - started < 2
        # The stream that outlived the drain was cut, and the Director heard it failed.
        assert server.processor.active_streams == 0
        assert [failed for _, _, failed in director.completions] == [True]
        call.cancel()


@pytest.fixture
def inline_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of the messages ExtProcStream.dispatch_nowait handled (the h2 inline path); one
    whose handling raised (a rejection ending the stream) is listed with " (raised)"."""
    handled: list[str] = []
    original = ExtProcStream.dispatch_nowait

    def counting(self: ExtProcStream, message: ext_proc.ProcessingRequest, send_nowait: Any) -> bool:
        try:
            done = original(self, message, send_nowait)
        except Exception:
            handled.append(f"{message.WhichOneof('request')} (raised)")
            raise
        if done:
            handled.append(str(message.WhichOneof("request")))
        return done

    monkeypatch.setattr(ExtProcStream, "dispatch_nowait", counting)
    return handled


async def routed_call(server: EppServer) -> Any:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_port}")
    call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
    await call.write(request_headers())
    await call.write(body_msg(BODY))
    await call.read()
    await call.read()
    return channel, call


async def test_response_messages_are_handled_inline_on_h2_only(
    server: EppServer, director: ScriptedDirector, transport: Transport, inline_calls: list[str]
) -> None:
    channel, call = await routed_call(server)
    async with channel:
        await call.write(response_headers(200))
        assert (await call.read()).HasField("response_headers")
        await call.write(body_msg(b'{"usage":', end_of_stream=False, response=True))
        first = await call.read()
        await call.write(body_msg(b"null}", end_of_stream=True, response=True))
        second = await call.read()
        bodies = [m.response_body.response.body_mutation.streamed_response for m in (first, second)]
        assert [(b.body, b.end_of_stream) for b in bodies] == [(b'{"usage":', False), (b"null}", True)]
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    assert [failed for _, _, failed in director.completions] == [False]
    # With a Director that may wait, the request phase takes the task's path; on grpc.aio everything does.
    expected = ["response_headers", "response_body", "response_body"] if transport is Transport.H2 else []
    assert inline_calls == expected


async def test_a_failing_response_handler_ends_the_stream_alike_on_both_transports(
    server: EppServer, director: ScriptedDirector, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ExtProcStream, body: ext_proc.HttpBody) -> Any:
        raise RuntimeError("a bug in the response path")

    monkeypatch.setattr(ExtProcStream, "_on_response_body", broken)
    channel, call = await routed_call(server)
    async with channel:
        await call.write(response_headers(200))
        await call.read()
        await call.write(body_msg(b"{}", end_of_stream=True, response=True))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call.read()
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details() == "endpoint picker stream failed"
    for _ in range(100):
        if director.completions:
            break
        await asyncio.sleep(0.02)
    assert [failed for _, _, failed in director.completions] == [False]  # headers said 200, no body seen
    assert server.metrics.registry.get_sample_value("epp_stream_errors_total") == 1
    assert server.metrics.in_flight.value == 0
    assert server.processor.active_streams == 0


async def test_a_cancel_after_inline_messages_completes_the_request_once(
    server: EppServer, director: ScriptedDirector, inline_calls: list[str]
) -> None:
    channel, call = await routed_call(server)
    async with channel:
        await call.write(response_headers(200))
        await call.read()
        await call.write(body_msg(b'{"partial', end_of_stream=False, response=True))
        await call.read()
        call.cancel()  # Envoy dropped the stream mid-response
    for _ in range(100):
        if director.completions and not server.processor.active_streams:
            break
        await asyncio.sleep(0.02)
    assert [failed for _, _, failed in director.completions] == [True]  # cut short
    assert server.metrics.in_flight.value == 0
    assert server.processor.active_streams == 0


async def headers_handled(server: EppServer, channel: grpc.aio.Channel) -> Any:
    """A call whose request headers the EPP has handled: once they are counted in flight, the
    stream's task waits for the body, so the transport can hand the body to dispatch_nowait."""
    call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
    await call.write(request_headers())
    await wait_until(lambda: server.metrics.in_flight.value == 1)
    return call


async def test_the_request_phase_is_routed_inline_when_the_director_decides_nowait(
    server: EppServer, director: ScriptedDirector, transport: Transport, inline_calls: list[str]
) -> None:
    director.nowait = True
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_port}") as channel:
        call = await headers_handled(server, channel)
        await call.write(body_msg(BODY))
        routed, body = await call.read(), await call.read()
        assert routed.request_headers.response.header_mutation.set_headers
        assert body.request_body.response.body_mutation.streamed_response.end_of_stream
        await call.write(response_headers(200))
        await call.read()
        await call.write(body_msg(b"{}", end_of_stream=True, response=True))
        await call.read()
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    assert len(director.requests) == 1
    assert [failed for _, _, failed in director.completions] == [False]
    # On h2 the body (the routing decision) and the response phase take the inline path; so do the
    # headers when the stream's task was already waiting for them (the call's HEADERS frame came in
    # an earlier read than its first message).
    if transport is Transport.H2:
        assert inline_calls[-3:] == ["request_body", "response_headers", "response_body"]
        assert inline_calls[:-3] in ([], ["request_headers"])
    else:
        assert inline_calls == []


@pytest.mark.parametrize(
    ("body", "error", "status"),
    [(b"{broken", None, 400), (BODY, "refused", 503)],
    ids=["malformed-body", "director-refuses"],
)
async def test_a_request_rejected_inline_ends_the_call_as_on_the_task_path(
    server: EppServer,
    director: ScriptedDirector,
    transport: Transport,
    inline_calls: list[str],
    body: bytes,
    error: str | None,
    status: int,
) -> None:
    # The rejection raises out of dispatch_nowait; the transport hands that to the stream's task,
    # which ends the call: the client sees the immediate response, then a clean end (status OK).
    director.nowait = True
    director.error = EppError(status, error) if error else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.options.grpc_port}") as channel:
        call = await headers_handled(server, channel)
        await call.write(body_msg(body))
        reply: ext_proc.ProcessingResponse = await call.read()
        assert reply.immediate_response.status.code == status
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    await wait_until(lambda: not server.processor.active_streams, within=2.0)
    assert server.processor.active_streams == 0 and server.metrics.in_flight.value == 0
    assert ("request_body (raised)" in inline_calls) == (transport is Transport.H2)
