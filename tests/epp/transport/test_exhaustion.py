"""Resource exhaustion by a hostile HTTP/2 peer (RFC 9113 section 10.5, the 2019 and 2023 HTTP/2 CVE
families): cases count frames, bytes or entries; none asserts on timing."""

from __future__ import annotations

import asyncio
import struct

import pytest
from google.protobuf import wrappers_pb2

from epp.transport import TransportOptions
from epp.transport.headers import HeaderDecoder, encode_headers, header_list_size
from epp.transport.stream import ServerStream

from .rawh2 import ErrorCode, Flag, FrameType, RawClient, Setting, frame, request_headers
from .support import ECHO, HANG_GUARD, Probe, ServedMethod, ServerUnderTest, echo_handler, wait_until


async def _calmed(client: RawClient) -> bool:
    """What the server answered to what was sent, then a PING: GOAWAY(ENHANCE_YOUR_CALM), or False
    once the PING's ACK shows it took everything and carried on."""
    client.ping(b"probe!!!")
    await client.drain()
    answer = await client.read_until(
        lambda f: f.type == FrameType.GOAWAY or (f.type == FrameType.PING and f.flags & Flag.ACK)
    )
    client.abort()
    assert answer is not None, "closed without GOAWAY"
    return answer.type == FrameType.GOAWAY and answer.error_code == ErrorCode.ENHANCE_YOUR_CALM


def _server(options: TransportOptions) -> ServerUnderTest:
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    return ServerUnderTest("h2", [method], options)


async def test_header_blocks_on_a_reset_stream_count_as_frames_without_progress() -> None:
    """RFC 9113 5.1 lets a server ignore frames on a stream it reset, but ignoring must not make
    them free: a HEADERS frame that opens nothing is a frame without progress (CVE-2019-9518 class)."""
    async with _server(TransportOptions(max_control_frames=100)) as server:
        client = await RawClient.connect(server.port)
        block = client.headers_block(request_headers(ECHO))
        client.send(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, block))
        client.rst_stream(1)
        client.send(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, block) * 150)
        assert await _calmed(client)


async def test_data_on_a_reset_stream_counts_as_frames_without_progress() -> None:
    """DATA that no stream takes (we reset it, RFC 9113 5.1 says ignore) is not progress, however
    many bytes it carries: it must not reset the flood guard (CVE-2019-9518 class)."""
    async with _server(TransportOptions(max_control_frames=100)) as server:
        client = await RawClient.connect(server.port)
        client.send_headers(1, request_headers(ECHO))
        client.rst_stream(1)
        client.send(frame(FrameType.DATA, 0, 1, b"x") * 150)
        assert await _calmed(client)


async def test_malformed_header_blocks_count_as_frames_without_progress() -> None:
    """Each malformed request costs a decode and a RST_STREAM and opens no call."""
    async with _server(TransportOptions(max_control_frames=100)) as server:
        client = await RawClient.connect(server.port)
        data = b"".join(
            frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, client.headers_block([("x-bad", "1")]))
            for stream_id in range(1, 302, 2)
        )
        client.send(data)
        assert await _calmed(client)


def test_the_header_block_cache_holds_a_bounded_number_of_bytes() -> None:
    """The decoder caches blocks that leave the HPACK table alone; a peer repeating nothing but
    sending 64 distinct ~40 KB blocks (under the 64 KiB decode cap) must not leave megabytes behind
    for the life of the connection."""
    decoder = HeaderDecoder(max_header_list_size=4 * TransportOptions().max_header_list_size)
    for i in range(64):
        headers = [(b"x-pad", b"%05d" % i + b"v" * 40_000)]
        assert decoder.decode(encode_headers(headers)).headers == headers
    held = sum(len(block) + header_list_size(d.headers) for block, d in decoder._cache.items())
    assert held <= HeaderDecoder.CACHE_BYTES


async def test_the_deadline_ends_a_call_whose_peer_never_opens_its_window(
    server: ServerUnderTest, probe: Probe
) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0 and no WINDOW_UPDATE ever: the answer waits for window, but
    the call's grpc-timeout still ends it (trailers are not flow-controlled, RFC 9113 6.9) and the
    handler is cancelled; no DATA ever exceeds the zero window."""
    client = await RawClient.connect(server.port, client_settings={Setting.INITIAL_WINDOW_SIZE: 0})
    client.send_headers(1, request_headers(ECHO, grpc_timeout="100m"))
    client.send_message(1, wrappers_pb2.BytesValue(value=b"blocked").SerializeToString())
    await client.drain()
    blocks, data, rst = await client.response(1)
    assert data == []
    if server.transport == "h2":
        assert rst is None and blocks and blocks[-1]["grpc-status"] == "4", (blocks, rst)
        async with asyncio.timeout(HANG_GUARD):
            await probe.cancelled.wait()
    else:
        # C-core may reset the stream instead of sending trailers. Its servicer's blocked write is
        # not cancelled (the probe never sees CancelledError within HANG_GUARD): left unchecked.
        assert (blocks and blocks[-1].get("grpc-status") == "4") or rst is not None
    client.abort()


async def test_a_settings_frame_adjusts_open_stream_windows_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One 16 KB SETTINGS frame holds 2,730 settings; applied one by one, alternating
    INITIAL_WINDOW_SIZE values walk every open stream 2,730 times (with 10,000 streams, 27 million
    steps for one frame). Only the last value counts (RFC 9113 6.5.3 processes them in order, and
    no DATA is sent between them), so open streams are adjusted once per frame."""
    flushes = 0
    original = ServerStream.flush

    def counting_flush(stream: ServerStream) -> None:
        nonlocal flushes
        flushes += 1
        original(stream)

    monkeypatch.setattr(ServerStream, "flush", counting_flush)
    async with _server(TransportOptions()) as server:
        client = await RawClient.connect(server.port)
        streams = range(1, 41, 2)
        for stream_id in streams:
            client.send_headers(stream_id, request_headers(ECHO))
        client.ping(b"opened!!")
        await client.drain()
        assert await client.read_until(lambda f: f.type == FrameType.PING and f.flags & Flag.ACK)
        connection = next(iter(server.h2.connections))  # type: ignore[union-attr]
        assert len(connection.streams) == len(streams)
        flushes = 0
        values = [65_536, 65_535] * 1_000 + [70_000]
        client.send(_settings_frame(values))
        client.ping(b"applied!")
        await client.drain()
        assert await client.read_until(lambda f: f.type == FrameType.PING and f.payload == b"applied!")
        assert flushes <= len(streams)
        assert all(stream.send_window == 70_000 for stream in connection.streams.values())
        client.abort()


def _settings_frame(initial_windows: list[int]) -> bytes:
    payload = b"".join(struct.pack(">HL", Setting.INITIAL_WINDOW_SIZE, value) for value in initial_windows)
    return frame(FrameType.SETTINGS, 0, 0, payload)


async def test_window_updates_cost_no_scan_of_the_streams_waiting_for_connection_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streams whose own window is open but the connection's is not wait in a queue. A peer that
    keeps the connection window shut and sends stream WINDOW_UPDATEs must not make each one scan
    that queue (with 10,000 waiting streams, 10,000 comparisons per 13-byte frame)."""
    async with _server(TransportOptions()) as server:
        client = await RawClient.connect(server.port)
        streams = range(1, 41, 2)
        for stream_id in streams:  # 20 x 10 KB of answers against a 64 KiB connection window
            client.send_headers(stream_id, request_headers(ECHO))
            client.send_message(
                stream_id, wrappers_pb2.BytesValue(value=b"stream:1:10000").SerializeToString()
            )
        await client.drain()
        connection = next(iter(server.h2.connections))  # type: ignore[union-attr]
        await wait_until(lambda: connection.send_window < 10_000, "the connection window is used up")
        await wait_until(
            lambda: sum(s.send_blocked for s in connection.streams.values()) >= 10, "answers wait for window"
        )
        compares = 0

        def counting_eq(stream: ServerStream, other: object) -> bool:
            nonlocal compares
            compares += 1
            return stream is other

        monkeypatch.setattr(ServerStream, "__eq__", counting_eq, raising=False)
        updates = b"".join(frame(FrameType.WINDOW_UPDATE, 0, s, struct.pack(">L", 1)) for s in streams) * 5
        client.send(updates)
        client.ping(b"updated!")
        await client.drain()
        assert await client.read_until(lambda f: f.type == FrameType.PING and f.payload == b"updated!")
        assert compares <= 5 * len(streams)
        client.abort()


async def test_reset_streams_do_not_pile_up_waiting_for_connection_window() -> None:
    """The peer keeps the connection window shut and, in a loop, opens a call, lets its answer
    block on the window, and resets it: each call is progress, so no flood guard trips, and the
    queue of streams waiting for connection window must not keep the dead ones."""
    async with _server(TransportOptions()) as server:
        client = await RawClient.connect(server.port)
        request = wrappers_pb2.BytesValue(value=b"stream:1:70000").SerializeToString()
        client.send_headers(1, request_headers(ECHO))
        client.send_message(1, request)  # 64 KiB of it leaves: the connection window is used up
        await client.drain()
        connection = next(iter(server.h2.connections))  # type: ignore[union-attr]
        await wait_until(lambda: connection.send_window == 0, "the connection window is used up")
        small = wrappers_pb2.BytesValue(value=b"stream:1:100").SerializeToString()
        for stream_id in range(3, 403, 2):
            client.send_headers(stream_id, request_headers(ECHO))
            client.send_message(stream_id, small)
            await client.drain()
            await wait_until(
                lambda s=stream_id: s in connection.streams and connection.streams[s].send_blocked, "blocked"
            )
            client.rst_stream(stream_id)
        client.ping(b"resets!!")
        await client.drain()
        assert await client.read_until(lambda f: f.type == FrameType.PING and f.payload == b"resets!!")
        # 200 calls went through it; at most two streams were ever open at once.
        assert len(connection._window_waiters) <= 2 * 2 + 16
        client.abort()
