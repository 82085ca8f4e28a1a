"""grpcio's own client against both transports: bidi streams, status codes, limits, cancellation,
deadlines, many concurrent streams, health and TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .support import (
    ECHO,
    HANG_GUARD,
    MAX_MESSAGE,
    Probe,
    ServedMethod,
    ServerUnderTest,
    channel,
    echo_handler,
    echo_stub,
    value,
    wait_until,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_bidi_stream_echoes_in_order_and_ends_ok(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        for i in range(20):
            await call.write(value(b"m%d" % i))
            assert (await call.read()).value == b"m%d" % i
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_client_may_write_everything_before_reading(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)(iter([value(b"a"), value(b"b"), value(b"c")]))
        assert [reply.value async for reply in call] == [b"a", b"b", b"c"]
        assert await call.code() == grpc.StatusCode.OK


async def test_empty_request_stream_ends_ok(server: ServerUnderTest, probe: Probe) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)(iter([]))
        assert [reply async for reply in call] == []
        assert await call.code() == grpc.StatusCode.OK
    assert probe.calls == 1


async def test_server_may_send_many_messages_after_the_client_half_closed(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"stream:200:1000"))
        await call.done_writing()
        replies = [reply async for reply in call]
        assert len(replies) == 200 and all(len(r.value) == 1000 for r in replies)
        assert await call.code() == grpc.StatusCode.OK


async def test_handler_returning_early_ends_the_call_ok(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"first"))
        assert (await call.read()).value == b"first"
        await call.write(value(b"quit"))
        assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("NOT_FOUND", "no such thing"),
        ("INVALID_ARGUMENT", "100% wrong: naïve ünïcode ✓ and\ttabs"),
        ("RESOURCE_EXHAUSTED", "try later"),
        ("UNAVAILABLE", ""),
        ("PERMISSION_DENIED", "%41 is not decoded twice"),
    ],
)
async def test_status_codes_and_messages_reach_the_client(
    server: ServerUnderTest, code: str, message: str
) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(f"status:{code}:{message}".encode()))
        assert await call.code() == grpc.StatusCode[code]
        assert await call.details() == message


async def test_status_after_messages(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"one"))
        assert (await call.read()).value == b"one"
        await call.write(value(b"status:ABORTED:after a message"))
        assert await call.code() == grpc.StatusCode.ABORTED
        assert await call.details() == "after a message"


async def test_handler_exception_is_unknown(server: ServerUnderTest, probe: Probe) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"boom"))
        assert await call.code() == grpc.StatusCode.UNKNOWN
    assert probe.active == 0


async def test_unknown_method_is_unimplemented(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ch.unary_unary("/test.Nothing/Here")(b"")
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # No write: the status can arrive before a write is issued, and grpcio then reports that
        # write's failure (INTERNAL) as the call's status, whichever server answered.
        bidi = ch.stream_stream("/test.Echo/Missing")()
        assert await bidi.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_large_messages_both_ways(server: ServerUnderTest) -> None:
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    async with channel(server) as ch:
        call = echo_stub(ch)()
        for _ in range(2):
            await call.write(value(big))
            assert (await call.read()).value == big
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_message_over_the_limit_is_resource_exhausted(server: ServerUnderTest, probe: Probe) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"x" * (MAX_MESSAGE + 1)))
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The connection is fine afterwards.
        again = echo_stub(ch)(iter([value(b"ok")]))
        assert [r.value async for r in again] == [b"ok"]
    assert probe.received == [b"ok"]


async def test_reply_over_the_send_limit_is_resource_exhausted(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"stream:1:%d" % (MAX_MESSAGE + 16)))
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_client_cancel_cancels_the_handler(server: ServerUnderTest, probe: Probe) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"hang"))
        async with asyncio.timeout(HANG_GUARD):
            await probe.started.wait()
        call.cancel()
        async with asyncio.timeout(HANG_GUARD):
            await probe.cancelled.wait()
    assert probe.active == 0


async def test_deadline_cancels_the_handler_and_the_client_sees_deadline_exceeded(
    server: ServerUnderTest, probe: Probe
) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)(timeout=0.3)
        await call.write(value(b"hang"))
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        async with asyncio.timeout(HANG_GUARD):
            await probe.cancelled.wait()
    assert probe.active == 0


async def test_hundreds_of_concurrent_streams(server: ServerUnderTest, probe: Probe) -> None:
    streams = 300
    async with channel(server) as ch:
        calls = [echo_stub(ch)() for _ in range(streams)]
        for i, call in enumerate(calls):  # all open at once before any finishes
            await call.write(value(b"open-%d" % i))
        await wait_until(lambda: probe.calls == streams, "every stream reached the handler")
        assert probe.active == streams

        async def finish(i: int, call: grpc.aio.StreamStreamCall) -> list[bytes]:
            await call.write(value(b"more-%d" % i))
            await call.done_writing()
            return [reply.value async for reply in call]

        results = await asyncio.gather(*(finish(i, call) for i, call in enumerate(calls)))
        assert results == [[b"open-%d" % i, b"more-%d" % i] for i in range(streams)]
        assert all([await call.code() == grpc.StatusCode.OK for call in calls])
    assert probe.active == 0


async def test_the_advertised_stream_limit_queues_calls_in_the_client() -> None:
    """The client learns max_concurrent_streams from SETTINGS and queues calls beyond it; every
    call completes. h2 only: the EPP's grpc.aio sets no stream limit, and with one set C-core
    refuses streams its own client already counts as closed (the calls fail with INTERNAL)."""
    from epp.transport import TransportOptions

    transport = "h2"
    probe = Probe()
    options = TransportOptions(max_concurrent_streams=8)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest(transport, [method], options) as server, channel(server) as ch:
        # One call first, so the client has the server's SETTINGS before the burst.
        assert [r.value async for r in echo_stub(ch)(iter([value(b"warm")]))] == [b"warm"]

        async def one(i: int) -> list[bytes]:
            return [reply.value async for reply in echo_stub(ch)(iter([value(b"%d" % i)]))]

        results = await asyncio.gather(*(one(i) for i in range(40)))
        assert results == [[b"%d" % i] for i in range(40)]
    assert probe.calls == 41


async def test_health_check_follows_readiness(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
            assert (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status == SERVING
        server.health.ready = False
        assert (await stub.Check(health_pb2.HealthCheckRequest(service="readiness"))).status == NOT_SERVING
        assert (await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))).status == SERVING


async def test_health_watch_streams_changes(server: ServerUnderTest) -> None:
    server.health.ready = False
    async with channel(server) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="readiness"))
        assert (await watch.read()).status == NOT_SERVING
        server.health.ready = True
        async with asyncio.timeout(HANG_GUARD):
            assert (await watch.read()).status == SERVING
        watch.cancel()


async def test_unary_deadline_on_health_check(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == SERVING


async def test_tls_with_alpn(transport: str, certificate: tuple[Path, Path]) -> None:
    probe = Probe()
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest(transport, [method], tls=certificate) as server, channel(server) as ch:
        call = echo_stub(ch)(iter([value(b"over tls"), value(b"x" * 100_000)]))
        assert [r.value async for r in call] == [b"over tls", b"x" * 100_000]
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == SERVING


async def test_the_ext_proc_stream_over_grpcio(transport: str) -> None:
    """The EPP's ExtProcStream behind each transport, driven by grpcio's ext_proc stub."""
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

    from .envoy_support import ExtProcUnderTest, RecordingDirector

    def headers(
        pairs: dict[str, str], end: bool = False, response: bool = False
    ) -> ext_proc.ProcessingRequest:
        http = ext_proc.HttpHeaders(end_of_stream=end)
        for key, data in pairs.items():
            http.headers.headers.add(key=key, raw_value=data.encode())
        return ext_proc.ProcessingRequest(**{"response_headers" if response else "request_headers": http})

    director = RecordingDirector("10.0.0.7:8000")
    async with (
        ExtProcUnderTest(transport, director, None) as epp,
        grpc.aio.insecure_channel(f"127.0.0.1:{epp.port}") as ch,
    ):
        call = ext_proc_grpc.ExternalProcessorStub(ch).Process()
        await call.write(
            headers({":method": "POST", ":path": "/v1/completions", "content-type": "application/json"})
        )
        body = b'{"model": "m", "prompt": "hello"}'
        await call.write(
            ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True))
        )
        routed, streamed = await call.read(), await call.read()
        mutation = {
            h.header.key: h.header.raw_value
            for h in routed.request_headers.response.header_mutation.set_headers
        }
        assert mutation["x-gateway-destination-endpoint"] == b"10.0.0.7:8000"
        assert streamed.request_body.response.body_mutation.streamed_response.body == body
        await call.write(headers({":status": "200"}, end=True, response=True))
        assert (await call.read()).HasField("response_headers")
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert [failed for _, _, failed in director.completions] == [False]
