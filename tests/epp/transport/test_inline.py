"""The h2 transport's inline path (epp.transport.stream: ``set_inline``/``send_nowait``): a message
that arrives while the handler's task waits for the next one is handed to the handler's synchronous
entry point from ``data_received``; anything else, and everything behind it, takes the task's path.

Driven in process over the recording transport of test_coalescing, so each socket write, and
whether the task ran, is visible. The handler here answers ``now:<x>`` with ``<x>`` on either path
(the same function), ``wait`` only on the task's path (it waits for an event), and raises on
``boom``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import hpack

from epp.transport.connection import H2Connection
from epp.transport.frames import Flag, FrameType
from epp.transport.methods import SendNowait
from epp.transport.stream import ServerStream

from .rawh2 import frame, grpc_message
from .test_coalescing import Raw, RecordingTransport, connect, data_payloads, open_call, parse, settle


class InlineHandler:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.task_messages: list[bytes] = []  # what reached the task (the async path)
        self.finished = asyncio.Event()

    def answer(self, message: Raw) -> Raw | None:
        """The shared handling: the answer to a message that cannot wait, else None."""
        if message.data == b"boom":
            raise RuntimeError("boom")
        if message.data.startswith(b"now:"):
            return Raw(message.data[4:])
        return None

    def dispatch_nowait(self, message: Raw, send_nowait: SendNowait) -> bool:
        answer = self.answer(message)
        if answer is None:
            return False
        send_nowait(answer)
        return True

    async def __call__(self, requests: AsyncIterator[Raw], send: Callable[[Raw], Awaitable[None]]) -> None:
        requests.set_inline(self.dispatch_nowait)  # type: ignore[attr-defined]
        try:
            async for message in requests:
                self.task_messages.append(message.data)
                answer = self.answer(message)
                if answer is None:  # "wait"
                    await self.release.wait()
                    answer = Raw(b"waited")
                await send(answer)
        finally:
            self.finished.set()


def data(stream_id: int, *messages: bytes, end: bool = False) -> bytes:
    return frame(
        FrameType.DATA, Flag.END_STREAM if end else 0, stream_id, b"".join(grpc_message(m) for m in messages)
    )


def stream_of(connection: H2Connection, stream_id: int = 1) -> ServerStream:
    return connection.streams[stream_id]


def trailers(transport: RecordingTransport) -> list[tuple[str, str]]:
    """The decoded header blocks the connection sent, in order (one HPACK decoder, as a client)."""
    decoder, blocks = hpack.Decoder(), []
    for write in transport.writes:
        for f in parse(write):
            if f.type == FrameType.HEADERS:
                blocks.append(decoder.decode(f.payload))
    return blocks[-1]


async def test_a_message_that_cannot_wait_is_answered_inside_the_read() -> None:
    handler = InlineHandler()
    connection, transport = await connect(handler)
    open_call(connection, first=b"now:a")  # the task has not started: queued for it
    await settle()
    assert handler.task_messages == [b"now:a"]
    transport.writes.clear()
    stream = stream_of(connection)

    connection.data_received(data(1, b"now:b", b"now:c"))
    # No settle(): answered in the read itself, in one write, without the task.
    assert stream.inline_messages == 2
    assert len(transport.writes) == 1
    assert data_payloads(parse(transport.writes[0])) == [grpc_message(b"b"), grpc_message(b"c")]
    await settle()
    assert handler.task_messages == [b"now:a"]

    connection.data_received(data(1, end=True))
    await settle()
    assert handler.finished.is_set()
    assert trailers(transport) == [("grpc-status", "0")]


async def test_messages_behind_one_the_task_is_handling_wait_for_it_in_order() -> None:
    handler = InlineHandler()
    connection, transport = await connect(handler)
    open_call(connection)
    await settle()
    stream = stream_of(connection)

    # "wait" needs the task; the messages behind it in the same read must not overtake it.
    connection.data_received(data(1, b"wait", b"now:b"))
    await settle()
    # While the task is busy with "wait", another message arrives: it queues too.
    connection.data_received(data(1, b"now:c"))
    await settle()
    assert stream.inline_messages == 0
    assert data_payloads([f for w in transport.writes for f in parse(w)]) == []

    handler.release.set()
    await settle()
    assert handler.task_messages == [b"wait", b"now:b", b"now:c"]
    assert data_payloads([f for w in transport.writes for f in parse(w)]) == [
        grpc_message(b"waited"),
        grpc_message(b"b"),
        grpc_message(b"c"),
    ]
    # The task is parked again: the inline path is open again.
    connection.data_received(data(1, b"now:d"))
    assert stream.inline_messages == 1
    assert data_payloads(parse(transport.writes[-1])) == [grpc_message(b"d")]


async def test_an_inline_failure_ends_the_call_as_the_task_path_would() -> None:
    """The exception is raised inside the handler, at its next read: its cleanup runs and the call
    ends UNKNOWN, as a handler raising on the task's path does; later messages never reach it."""
    statuses = []
    for inline in (True, False):
        handler = InlineHandler()
        connection, transport = await connect(handler)
        open_call(connection, first=None if inline else b"boom")
        await settle()
        if inline:
            connection.data_received(data(1, b"boom", b"now:never"))
            assert stream_of(connection).inline_messages == 1
        await settle()
        assert handler.finished.is_set()
        assert handler.task_messages == ([] if inline else [b"boom"])
        assert data_payloads([f for w in transport.writes for f in parse(w)]) == []
        statuses.append(dict(trailers(transport))["grpc-status"])
    assert statuses == ["2", "2"]  # UNKNOWN


async def test_a_reset_cancels_the_parked_handler_after_inline_messages() -> None:
    handler = InlineHandler()
    connection, _ = await connect(handler)
    open_call(connection)
    await settle()
    stream = stream_of(connection)
    connection.data_received(data(1, b"now:a"))
    assert stream.inline_messages == 1
    task = stream.task
    assert task is not None
    connection.data_received(frame(FrameType.RST_STREAM, 0, 1, struct.pack(">L", 8)))  # CANCEL
    await settle()
    assert handler.finished.is_set() and task.done()
    assert 1 not in connection.streams
    assert stream.inline_messages == 1


async def test_an_inline_answer_held_by_the_window_holds_the_next_message_for_the_task() -> None:
    """An answer the peer's window holds back: the next message goes to the task, which reads it
    only once that answer is out, so one answer per stream at most waits in the server."""
    handler = InlineHandler()
    connection, transport = await connect(handler, window=8)
    open_call(connection)
    await settle()
    stream = stream_of(connection)
    connection.data_received(data(1, b"now:0123456789"))  # 15 bytes framed, 8 allowed
    assert stream.inline_messages == 1
    assert stream.pending_bytes == 7
    connection.data_received(data(1, b"now:x"))
    await settle()
    assert stream.inline_messages == 1  # not inline: an answer is still pending
    assert handler.task_messages == []  # and the task waits for it before reading "now:x"
    assert stream.send_blocked

    connection.data_received(frame(FrameType.WINDOW_UPDATE, 0, 1, struct.pack(">L", 100)))
    await settle()
    assert handler.task_messages == [b"now:x"]
    sent = b"".join(f.payload for w in transport.writes for f in parse(w) if f.type == FrameType.DATA)
    assert sent == grpc_message(b"0123456789") + grpc_message(b"x")


async def test_without_an_entry_point_every_message_takes_the_task_path() -> None:
    received: list[bytes] = []

    async def plain(requests: AsyncIterator[Raw], send: Callable[[Raw], Awaitable[None]]) -> None:
        async for message in requests:
            received.append(message.data)
            await send(Raw(message.data))

    connection, transport = await connect(plain)
    open_call(connection)
    await settle()
    connection.data_received(data(1, b"now:a"))
    assert stream_of(connection).inline_messages == 0
    await settle()
    assert received == [b"now:a"]
    assert data_payloads(parse(transport.writes[-1])) == [grpc_message(b"now:a")]
