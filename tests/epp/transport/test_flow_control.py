"""Flow control both ways, slow and vanishing peers, resets, half-closed streams, keepalive.

A raw client controls the windows exactly, so each test can check that a transport never sends
more than the peer allowed and that what it holds back is bounded.
"""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import wrappers_pb2

from epp.transport import TransportOptions
from epp.transport.connection import H2Connection

from .rawh2 import ErrorCode, Flag, Frame, FrameType, RawClient, Setting, frame, grpc_message, request_headers
from .support import ECHO, HANG_GUARD, Probe, ServedMethod, ServerUnderTest, echo_handler, wait_until


def _bytes_value(data: bytes) -> bytes:
    return wrappers_pb2.BytesValue(value=data).SerializeToString()


def _connection(server: ServerUnderTest) -> H2Connection:
    assert server.h2 is not None and len(server.h2.connections) == 1
    return next(iter(server.h2.connections))


class DataCounter:
    """Reads a stream's frames and checks every DATA byte against the windows granted so far."""

    def __init__(self, client: RawClient, stream_window: int, connection_window: int = 65_535) -> None:
        self.client = client
        self.stream_allowed = stream_window
        self.connection_allowed = connection_window
        self.received = 0
        self.trailers: dict[str, str] | None = None

    def grant(self, stream: int = 0, connection: int = 0) -> None:
        if stream:
            self.client.window_update(1, stream)
            self.stream_allowed += stream
        if connection:
            self.client.window_update(0, connection)
            self.connection_allowed += connection

    async def read_until_received(self, total: int) -> None:
        while self.received < total and self.trailers is None:
            await self._next()

    async def read_until_ping_ack(self) -> None:
        """Read everything the server sent before answering a PING sent now."""
        self.client.ping(b"sync-pt!")
        await self.client.drain()
        while True:
            received = await self._next()
            if (
                received.type == FrameType.PING
                and received.flags & Flag.ACK
                and received.payload == b"sync-pt!"
            ):
                return

    async def read_to_trailers(self) -> dict[str, str]:
        while self.trailers is None:
            await self._next()
        return self.trailers

    async def _next(self) -> Frame:
        received = await self.client.read_frame()
        assert received is not None, "the server closed the connection"
        if received.type == FrameType.DATA and received.stream_id == 1:
            self.received += len(received.payload)
            assert self.received <= self.stream_allowed, (self.received, self.stream_allowed)
            assert self.received <= self.connection_allowed, (self.received, self.connection_allowed)
        elif (
            received.type == FrameType.HEADERS
            and received.stream_id == 1
            and received.flags & Flag.END_STREAM
        ):
            self.trailers = self.client.decode_headers(received)
        elif received.type == FrameType.HEADERS and received.stream_id == 1:
            self.client.decode_headers(received)
        elif received.type == FrameType.PING and not received.flags & Flag.ACK:
            self.client.ping(received.payload, ack=True)
        return received


async def _stream_request(client: RawClient, count: int, size: int) -> None:
    client.send_headers(1, request_headers(ECHO))
    client.send_message(1, _bytes_value(b"stream:%d:%d" % (count, size)), end_stream=True)
    await client.drain()


def _expected_bytes(count: int, size: int) -> int:
    return count * len(grpc_message(_bytes_value(b"s" * size)))


async def test_the_server_never_exceeds_a_small_stream_window(server: ServerUnderTest, probe: Probe) -> None:
    client = await RawClient.connect(server.port, client_settings={Setting.INITIAL_WINDOW_SIZE: 1_000})
    counter = DataCounter(client, stream_window=1_000)
    await _stream_request(client, 20, 500)
    await counter.read_until_received(1_000)
    await counter.read_until_ping_ack()  # nothing beyond the window arrived before this
    assert counter.received == 1_000
    if server.transport == "h2":
        stream = _connection(server).streams[1]
        await wait_until(lambda: stream.send_blocked, "the handler waits in send()")
        assert probe.sent < 20
    for _ in range(3):  # small grants: each one lets exactly that much through
        counter.grant(stream=700)
        await counter.read_until_received(counter.stream_allowed)
    counter.grant(stream=1_000_000)
    trailers = await counter.read_to_trailers()
    assert trailers["grpc-status"] == "0"
    assert counter.received == _expected_bytes(20, 500)
    client.abort()


async def test_a_window_change_in_settings_applies_to_open_streams(server: ServerUnderTest) -> None:
    client = await RawClient.connect(server.port, client_settings={Setting.INITIAL_WINDOW_SIZE: 1_000})
    counter = DataCounter(client, stream_window=1_000)
    await _stream_request(client, 10, 500)
    await counter.read_until_received(1_000)
    # Shrink: the stream's window goes to 1000 - 1000 - 500 = -500 (RFC 9113 6.9.2).
    client.send(frame(FrameType.SETTINGS, 0, 0, b"\x00\x04\x00\x00\x01\xf4"))  # INITIAL_WINDOW_SIZE 500
    counter.stream_allowed -= 500
    await counter.read_until_ping_ack()
    counter.grant(stream=500)  # back to 0: still nothing may flow
    await counter.read_until_ping_ack()
    assert counter.received == 1_000
    # Grow: +99_500 on the open stream, enough for the rest.
    client.send(frame(FrameType.SETTINGS, 0, 0, b"\x00\x04\x00\x01\x86\xa0"))  # 100_000
    counter.stream_allowed += 99_500
    trailers = await counter.read_to_trailers()
    assert trailers["grpc-status"] == "0" and counter.received == _expected_bytes(10, 500)
    client.abort()


async def test_the_server_never_exceeds_the_connection_window(server: ServerUnderTest) -> None:
    client = await RawClient.connect(server.port, client_settings={Setting.INITIAL_WINDOW_SIZE: 1 << 20})
    counter = DataCounter(client, stream_window=1 << 20, connection_window=65_535)
    await _stream_request(client, 10, 20_000)
    await counter.read_until_received(65_535)
    await counter.read_until_ping_ack()
    assert counter.received == 65_535
    counter.grant(connection=1 << 20)
    trailers = await counter.read_to_trailers()
    assert trailers["grpc-status"] == "0" and counter.received == _expected_bytes(10, 20_000)
    client.abort()


async def test_a_peer_that_does_not_read_cannot_make_the_server_buffer() -> None:
    """Windows wide open, but the client stops reading its socket: the server's socket buffer fills,
    the handler's send() waits, and what the server holds stays bounded (h2 only: grpc.aio's
    buffers are not observable from Python)."""
    probe = Probe()
    options = TransportOptions(write_buffer_limit=256 * 1024)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest("h2", [method], options) as server:
        client = await RawClient.connect(
            server.port, client_settings={Setting.INITIAL_WINDOW_SIZE: 2**31 - 1}, read_buffer=64 * 1024
        )
        client.window_update(0, 2**31 - 1 - 65_535)
        await _stream_request(client, 400, 32 * 1024)
        connection = _connection(server)
        await wait_until(lambda: 1 in connection.streams, "the call started")
        stream = connection.streams[1]
        await wait_until(
            lambda: stream.send_blocked and connection.write_paused, "the server stopped sending"
        )
        assert connection.transport is not None
        assert connection.transport.get_write_buffer_size() <= options.write_buffer_limit + 64 * 1024
        assert stream.pending_bytes == 0  # held back by the socket, not by windows
        assert probe.sent < 400
        # The client reads again: everything arrives.
        counter = DataCounter(client, stream_window=2**31 - 1, connection_window=2**31 - 1)
        trailers = await counter.read_to_trailers()
        assert trailers["grpc-status"] == "0" and counter.received == _expected_bytes(400, 32 * 1024)
        client.abort()


async def test_a_peer_that_stops_granting_window_holds_at_most_one_message_per_stream() -> None:
    probe = Probe()
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest("h2", [method]) as server:
        client = await RawClient.connect(server.port)  # default windows: 65535
        await _stream_request(client, 100, 10_000)
        connection = _connection(server)
        await wait_until(
            lambda: 1 in connection.streams and connection.streams[1].send_blocked, "send() waits"
        )
        stream = connection.streams[1]
        assert stream.pending_bytes <= 10_000 + 64
        assert probe.sent <= 65_535 // 10_000 + 1
        client.abort()
        await wait_until(lambda: probe.cancelled.is_set(), "the handler was cancelled when the peer left")


async def test_reset_in_the_middle_of_a_message(server: ServerUnderTest, probe: Probe) -> None:
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers(ECHO))
    client.send_message(1, _bytes_value(b"hang"))
    await client.drain()
    async with asyncio.timeout(HANG_GUARD):
        await probe.started.wait()
    message = grpc_message(_bytes_value(b"m" * 5_000))
    client.send_data(1, message[:1_000])  # a third of a message, then give up on the stream
    client.rst_stream(1, ErrorCode.CANCEL)
    await client.drain()
    async with asyncio.timeout(HANG_GUARD):
        await probe.cancelled.wait()
    if server.transport == "h2":
        connection = _connection(server)
        await wait_until(lambda: not connection.tasks, "the handler task ended")
        assert not connection.streams and connection.buffered == 0
    # The connection is fine.
    client.send_headers(3, request_headers(ECHO))
    client.send_message(3, _bytes_value(b"next"), end_stream=True)
    await client.drain()
    blocks, data, rst = await client.response(3)
    assert rst is None and blocks[-1]["grpc-status"] == "0" and data == [grpc_message(_bytes_value(b"next"))]
    client.abort()


async def test_connection_dropped_in_the_middle_of_a_message(server: ServerUnderTest, probe: Probe) -> None:
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers(ECHO))
    client.send_message(1, _bytes_value(b"hang"))
    await client.drain()
    async with asyncio.timeout(HANG_GUARD):
        await probe.started.wait()
    connection = _connection(server) if server.transport == "h2" else None
    client.send_data(1, grpc_message(_bytes_value(b"m" * 5_000))[:2_000])
    await client.drain()
    client.abort()
    async with asyncio.timeout(HANG_GUARD):
        await probe.cancelled.wait()
    if connection is not None:
        await wait_until(lambda: connection.closed_event.is_set() and not connection.tasks, "all cleaned up")
        assert not connection.streams and connection.buffered == 0
        assert server.h2 is not None and not server.h2.connections


async def test_resetting_streams_in_a_loop_leaves_no_backlog(server: ServerUnderTest, probe: Probe) -> None:
    """HEADERS then RST_STREAM, a thousand times in one write ("rapid reset", CVE-2023-44487)."""
    client = await RawClient.connect(server.port)
    block = client.headers_block(request_headers(ECHO))
    burst = b"".join(
        frame(FrameType.HEADERS, Flag.END_HEADERS, sid, block)
        + frame(FrameType.RST_STREAM, 0, sid, b"\x00\x00\x00\x08")
        for sid in range(1, 2_001, 2)
    )
    client.send(burst)
    await client.drain()
    client.ping(b"after!!!")
    await client.drain()
    assert (
        await client.read_until(lambda f: f.type == FrameType.PING and f.payload == b"after!!!") is not None
    )
    if server.transport == "h2":
        connection = _connection(server)
        await wait_until(lambda: not connection.tasks, "no handler left running")
        assert not connection.streams
    client.send_headers(2_001, request_headers(ECHO))
    client.send_message(2_001, _bytes_value(b"ok"), end_stream=True)
    await client.drain()
    blocks, _, rst = await client.response(2_001)
    assert rst is None and blocks[-1]["grpc-status"] == "0"
    client.abort()


async def test_the_server_finishing_first_stops_the_client_politely(server: ServerUnderTest) -> None:
    """The handler returns while the client still streams: trailers, then the client's further
    DATA is ignored (no connection error)."""
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers(ECHO))
    client.send_message(1, _bytes_value(b"quit"))
    await client.drain()
    blocks, _, _ = await client.response(1)
    assert blocks[-1]["grpc-status"] == "0"
    client.send_message(1, _bytes_value(b"too late"))
    client.ping(b"still ok")
    await client.drain()
    answer = await client.read_until(
        lambda f: f.type in (FrameType.GOAWAY, FrameType.PING) and f.stream_id == 0
    )
    assert answer is not None and answer.type == FrameType.PING
    client.abort()


async def test_request_trailers_end_the_request_stream(server: ServerUnderTest) -> None:
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers(ECHO))
    client.send_message(1, _bytes_value(b"one"))
    client.send_headers(1, [("x-trailer", "yes")], end_stream=True)
    await client.drain()
    blocks, data, rst = await client.response(1)
    assert rst is None and blocks[-1]["grpc-status"] == "0" and data == [grpc_message(_bytes_value(b"one"))]
    client.abort()


async def test_grpc_timeout_header_ends_the_call_with_deadline_exceeded(
    server: ServerUnderTest, probe: Probe
) -> None:
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers(ECHO, grpc_timeout="50m"))
    client.send_message(1, _bytes_value(b"hang"))
    await client.drain()
    blocks, _, rst = await client.response(1)
    if server.transport == "h2":
        assert blocks and blocks[-1]["grpc-status"] == "4", (blocks, rst)
    else:  # C-core may answer with trailers or reset the stream
        assert (blocks and blocks[-1].get("grpc-status") == "4") or rst is not None
    async with asyncio.timeout(HANG_GUARD):
        await probe.cancelled.wait()
    client.abort()


@pytest.mark.parametrize("answer_pings", [True, False])
async def test_keepalive_closes_a_silent_peer_and_keeps_a_live_one(answer_pings: bool) -> None:
    options = TransportOptions(keepalive_time=0.05, keepalive_timeout=0.05)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest("h2", [method], options) as server:
        client = await RawClient.connect(server.port)
        pings = 0
        while pings < 3:
            received = await client.read_frame()
            if received is None:
                break
            if received.type == FrameType.PING and not received.flags & Flag.ACK:
                pings += 1
                if answer_pings:
                    client.ping(received.payload, ack=True)
                    await client.drain()
        if answer_pings:
            assert pings == 3
            client.ping(b"you ok?!")
            await client.drain()
            assert (
                await client.read_until(lambda f: f.type == FrameType.PING and f.flags & Flag.ACK) is not None
            )
        else:
            assert pings == 1  # one PING unanswered, then the server gave up on the connection
            assert await client.read_frame() is None or client.frames[-1].type == FrameType.GOAWAY
        client.abort()


async def test_a_client_that_never_sends_the_preface_is_dropped() -> None:
    options = TransportOptions(handshake_timeout=0.05)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest("h2", [method], options) as server:
        client = await RawClient.connect(server.port, handshake=False)
        frames = await client.read_to_end()
        assert frames[0].type == FrameType.SETTINGS
        assert frames[-1].type == FrameType.GOAWAY and frames[-1].error_code == ErrorCode.PROTOCOL_ERROR
        assert server.h2 is not None
        await wait_until(lambda: not server.h2.connections, "the connection is gone")  # type: ignore[union-attr]
