"""Write coalescing in the h2 transport (epp.transport.connection.H2Connection.write): the frames a
handler's step queues leave in one socket write when the step ends, in order, within the windows,
and no frame waits for a later step or for more input.

The connection is driven in process over a recording transport, so each socket write is visible.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import hpack

from epp.transport.connection import H2Connection
from epp.transport.frames import PREFACE, Flag, FrameType, Setting
from epp.transport.methods import Method, bidi_method
from epp.transport.options import TransportOptions

from .rawh2 import Frame, frame, grpc_message, request_headers, settings

_PATH = "/test.Raw/Call"
_HEADER = struct.Struct(">BHBBL")


class Raw:
    """Messages as raw bytes: the handler sees and sends exactly what the test chooses."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @staticmethod
    def FromString(data: bytes) -> Raw:
        return Raw(data)

    def SerializeToString(self) -> bytes:
        return self.data


class RecordingTransport(asyncio.Transport):
    """Keeps every write; reports a settable write buffer size (the back-pressure input)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.buffer_size = 0

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def parse(data: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos < len(data):
        high, low, kind, flags, stream_id = _HEADER.unpack_from(data, pos)
        length = (high << 16) | low
        frames.append(Frame(kind, flags, stream_id & 0x7FFFFFFF, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data), "a write ended inside a frame"
    return frames


Handler = Callable[[AsyncIterator[Raw], Callable[[Raw], Awaitable[None]]], Awaitable[None]]


async def connect(
    handler: Handler, options: TransportOptions | None = None, window: int = 2**31 - 1
) -> tuple[H2Connection, RecordingTransport]:
    """A connection past the handshake (the client's windows are ``window``); the transport's
    writes so far (SETTINGS and its ACK) are cleared."""
    method: Method = bidi_method(_PATH, Raw, handler)
    connection = H2Connection({_PATH: method}, options or TransportOptions())
    transport = RecordingTransport()
    connection.connection_made(transport)
    hello = PREFACE + settings({Setting.INITIAL_WINDOW_SIZE: window}) + settings(ack=True)
    if window > 65_535:
        hello += frame(FrameType.WINDOW_UPDATE, 0, 0, struct.pack(">L", window - 65_535))
    connection.data_received(hello)
    await settle()
    transport.writes.clear()
    return connection, transport


def open_call(connection: H2Connection, stream_id: int = 1, first: bytes | None = None) -> None:
    """HEADERS for a call on ``stream_id`` (and its first message, in the same read)."""
    block = bytes(hpack.Encoder().encode(request_headers(_PATH)))
    data = frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, block)
    if first is not None:
        data += frame(FrameType.DATA, 0, stream_id, grpc_message(first))
    connection.data_received(data)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def data_payloads(frames: list[Frame]) -> list[bytes]:
    return [f.payload for f in frames if f.type == FrameType.DATA]


async def test_the_messages_one_step_sends_leave_in_one_write_in_order() -> None:
    async def three_answers(requests: AsyncIterator[Raw], send: Callable[[Raw], Awaitable[None]]) -> None:
        async for request in requests:
            for n in range(3):
                await send(Raw(request.data + b"%d" % n))

    connection, transport = await connect(three_answers)
    open_call(connection, first=b"a")
    await settle()
    assert len(transport.writes) == 1
    frames = parse(transport.writes[0])
    assert [f.type for f in frames] == [FrameType.HEADERS] + [FrameType.DATA] * 3
    assert data_payloads(frames) == [grpc_message(b"a0"), grpc_message(b"a1"), grpc_message(b"a2")]
    # The next step's answers follow in a write of their own, the trailers with the last step's.
    connection.data_received(frame(FrameType.DATA, Flag.END_STREAM, 1, grpc_message(b"b")))
    await settle()
    assert len(transport.writes) == 2
    frames = parse(transport.writes[1])
    assert [f.type for f in frames] == [FrameType.DATA] * 3 + [FrameType.HEADERS]
    assert frames[-1].flags & Flag.END_STREAM
    assert hpack.Decoder().decode(frames[-1].payload) == [("grpc-status", "0")]


async def test_a_message_leaves_before_the_handler_waits_for_anything_else() -> None:
    """Sent, then the handler awaits something that is not the next message (the Director, an
    event): the message must not wait for the handler's next step."""
    release = asyncio.Event()

    async def send_then_wait(requests: AsyncIterator[Raw], send: Callable[[Raw], Awaitable[None]]) -> None:
        await send(Raw(b"early"))
        await release.wait()
        await send(Raw(b"late"))

    connection, transport = await connect(send_then_wait)
    open_call(connection)
    await settle()
    assert len(transport.writes) == 1  # while the handler waits on the event
    assert data_payloads(parse(transport.writes[0])) == [grpc_message(b"early")]
    release.set()
    await settle()
    assert len(transport.writes) == 2
    frames = parse(transport.writes[1])
    # The message, the trailers, and (the client never half-closed) RST_STREAM(NO_ERROR).
    assert [f.type for f in frames] == [FrameType.DATA, FrameType.HEADERS, FrameType.RST_STREAM]
    assert data_payloads(frames) == [grpc_message(b"late")] and frames[1].flags & Flag.END_STREAM


async def test_frames_written_outside_a_step_leave_on_the_next_loop_iteration() -> None:
    """A timer or another task writes (here: the drain's GOAWAY and PING): no handler step ends to
    flush them, so a scheduled callback does, in one write."""

    async def idle(requests: AsyncIterator[Raw], send: Callable[[Raw], Awaitable[None]]) -> None:
        async for _ in requests:
            pass

    connection, transport = await connect(idle)
    connection.start_drain()
    assert transport.writes == []
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    assert [f.type for f in parse(transport.writes[0])] == [FrameType.GOAWAY, FrameType.PING]


async def test_coalesced_data_stays_within_the_windows_and_in_order() -> None:
    """A 20-byte stream window: the step's three messages leave as far as the window allows, the
    rest after WINDOW_UPDATEs, the bytes in order, the trailers last."""

    async def answers(requests: AsyncIterator[Raw], send: Callable[[Raw], Awaitable[None]]) -> None:
        async for request in requests:
            for n in range(3):
                await send(Raw(request.data * 4 + b"%d" % n))

    connection, transport = await connect(answers, window=20)
    open_call(connection, first=b"xy")
    connection.data_received(frame(FrameType.DATA, Flag.END_STREAM, 1, b""))
    await settle()
    sent = parse(b"".join(transport.writes))
    assert sum(len(p) for p in data_payloads(sent)) == 20
    for _ in range(5):
        connection.data_received(frame(FrameType.WINDOW_UPDATE, 0, 1, struct.pack(">L", 7)))
        await settle()
    frames = parse(b"".join(transport.writes))
    assert b"".join(data_payloads(frames)) == b"".join(grpc_message(b"xyxyxyxy%d" % n) for n in range(3))
    assert frames[-1].type == FrameType.HEADERS and frames[-1].flags & Flag.END_STREAM
    assert all(len(p) <= 20 for p in data_payloads(frames))


async def test_a_step_that_fills_the_socket_buffer_is_written_early_and_then_waits() -> None:
    """Back-pressure still works with the queue: once the socket transport holds all but a little
    of write_buffer_limit, the next message is written at once (not at the end of the step), the
    transport pauses, and the handler's send() waits instead of queueing more."""
    sent: list[int] = []

    async def flood(requests: AsyncIterator[Raw], send: Callable[[Raw], Awaitable[None]]) -> None:
        for n in range(50):
            await send(Raw(b"z" * 1000))
            sent.append(n)

    options = TransportOptions(write_buffer_limit=64 * 1024)
    connection, transport = await connect(flood, options)
    transport.buffer_size = 60 * 1024  # what the socket has not taken yet
    real_write = transport.write

    def write_and_pause(data: Any) -> None:
        real_write(data)
        if transport.buffer_size + len(data) > options.write_buffer_limit:
            connection.pause_writing()

    transport.write = write_and_pause  # type: ignore[method-assign]
    connection._flush_at = 1  # as after a write that left the buffer at 60 KiB
    open_call(connection)
    await settle()
    assert connection.write_paused and connection.streams[1].send_blocked
    assert len(sent) < 50
    held = sum(len(p) for p in data_payloads(parse(b"".join(transport.writes))))
    # Queued no further than the room the socket buffer had left (4 KiB), plus the message that
    # crossed the mark and the one written before the room was known.
    assert held <= 4 * 1024 + 2 * (1000 + 5)
    transport.buffer_size = 0
    connection.resume_writing()
    await settle()
    assert len(sent) == 50
