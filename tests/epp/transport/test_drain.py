"""Graceful drain: GOAWAY, the open streams complete, then the connection closes; past the grace
period what is left ends with a status instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from google.protobuf import wrappers_pb2

from .rawh2 import ErrorCode, FrameType, RawClient, grpc_message, request_headers
from .support import (
    ECHO,
    HANG_GUARD,
    Probe,
    ServedMethod,
    ServerUnderTest,
    channel,
    echo_handler,
    echo_stub,
    value,
    wait_until,
)


async def _stopped_listening(server: ServerUnderTest) -> None:
    """Wait until the listener is closed: the one sign of a started shutdown both transports give."""

    async def refused() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        except OSError:
            return True
        writer.close()
        return False

    async with asyncio.timeout(HANG_GUARD):
        while not await refused():  # noqa: ASYNC110 - no event for "the listener closed"
            await asyncio.sleep(0.01)


async def test_open_calls_complete_during_a_graceful_drain(server: ServerUnderTest, probe: Probe) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"before"))
        assert (await call.read()).value == b"before"
        shutdown = asyncio.create_task(server.shutdown(grace=HANG_GUARD))
        await _stopped_listening(server)
        # The open call goes on as if nothing happened ...
        await call.write(value(b"during"))
        assert (await call.read()).value == b"during"
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        # ... and the server stops once it is done, well before the grace period ends.
        async with asyncio.timeout(HANG_GUARD):
            await shutdown
    assert probe.active == 0


async def test_new_calls_are_turned_away_during_a_drain(server: ServerUnderTest, probe: Probe) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"hang"))
        async with asyncio.timeout(HANG_GUARD):
            await probe.started.wait()
        shutdown = asyncio.create_task(server.shutdown(grace=HANG_GUARD))
        await _stopped_listening(server)
        if server.h2 is not None:
            connection = next(iter(server.h2.connections))
            await wait_until(lambda: connection._goaway_last is not None, "the final GOAWAY went out")
        late = echo_stub(ch)(iter([value(b"late")]), wait_for_ready=False)
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in late:
                pass
        assert await late.code() == grpc.StatusCode.UNAVAILABLE
        probe.release.set()
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        async with asyncio.timeout(HANG_GUARD):
            await shutdown
    assert probe.calls == 1


async def test_the_drain_sequence_on_the_wire() -> None:
    """GOAWAY(2^31-1) and a PING; after the PING's ACK, GOAWAY(last stream); streams opened after
    it are refused; the open one completes; then the connection closes. (h2 only: C-core's sequence
    is its own; the tests above cover what a client sees of it.)"""
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest("h2", [method]) as server:
        await _drain_sequence(server)


async def _drain_sequence(server: ServerUnderTest) -> None:
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers("/test.Echo/Bidi"))
    client.send_message(1, wrappers_pb2.BytesValue(value=b"first").SerializeToString())
    await client.drain()
    assert (await client.read_until(lambda f: f.type == FrameType.DATA)) is not None
    shutdown = asyncio.create_task(server.shutdown(grace=HANG_GUARD))
    first = await client.read_until(lambda f: f.type == FrameType.GOAWAY)
    assert first is not None and first.last_stream_id == 2**31 - 1 and first.error_code == ErrorCode.NO_ERROR
    final = await client.read_until(lambda f: f.type == FrameType.GOAWAY)  # read_until ACKs the PING
    assert final is not None and final.last_stream_id == 1 and final.error_code == ErrorCode.NO_ERROR
    client.send_headers(3, request_headers("/test.Echo/Bidi"))
    client.send_message(1, wrappers_pb2.BytesValue(value=b"second").SerializeToString(), end_stream=True)
    await client.drain()
    refused = await client.read_until(lambda f: f.stream_id == 3)
    assert refused is not None and refused.type == FrameType.RST_STREAM
    assert refused.error_code == ErrorCode.REFUSED_STREAM
    blocks, data, rst = await client.response(1)
    assert rst is None and blocks[-1]["grpc-status"] == "0"
    assert data == [grpc_message(wrappers_pb2.BytesValue(value=b"second").SerializeToString())]
    assert await client.read_to_end() == [] or client.frames[-1].type != FrameType.DATA
    async with asyncio.timeout(HANG_GUARD):
        await shutdown
    client.abort()


async def test_calls_still_open_after_the_grace_period_end_unavailable(
    server: ServerUnderTest, probe: Probe
) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)()
        await call.write(value(b"hang"))
        async with asyncio.timeout(HANG_GUARD):
            await probe.started.wait()
        async with asyncio.timeout(HANG_GUARD):
            await server.shutdown(grace=0.1)
        code = await call.code()
        # h2 sends UNAVAILABLE; C-core cancels the call (the client sees UNAVAILABLE or CANCELLED).
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        if server.transport == "h2":
            assert code == grpc.StatusCode.UNAVAILABLE
        async with asyncio.timeout(HANG_GUARD):
            await probe.cancelled.wait()


async def test_a_client_goaway_lets_its_open_streams_finish(transport: str, server: ServerUnderTest) -> None:
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers("/test.Echo/Bidi"))
    client.send_message(1, wrappers_pb2.BytesValue(value=b"one").SerializeToString())
    client.goaway(0)
    client.send_message(1, wrappers_pb2.BytesValue(value=b"two").SerializeToString(), end_stream=True)
    await client.drain()
    blocks, data, rst = await client.response(1)
    assert rst is None and blocks[-1]["grpc-status"] == "0" and len(data) == 2
    if transport == "h2":
        # Nothing is left on the connection: the server closes it.
        assert all(f.type != FrameType.DATA for f in await client.read_to_end())
    client.abort()
