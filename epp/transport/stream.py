"""One HTTP/2 stream carrying one gRPC call, server side.

The stream is the handler's view of the call: it is the async iterator of request messages and it
provides ``send``. It keeps the stream half of flow control in both directions:

* inbound, a message queue with back-pressure: while the handler has unread messages, the
  stream's receive window is not replenished, so a peer can have at most one window of unread
  data (plus the message in progress) per stream;
* outbound, ``send`` writes what the peer's stream and connection windows allow and waits for the
  rest, so a peer that stops reading holds at most one message per stream in the server.

Inline messages: a handler may also register a synchronous entry point (``set_inline``). While its
task is parked waiting for the next message (nothing queued, nothing in progress, nothing held back
by the windows), a message is offered to that entry point from ``data_received`` itself, with
``send_nowait`` to answer: no Future, no task wake-up, no loop iteration per message (issue 16: that
wake-up was most of the Python work left per message). The entry point returns False for a message
it cannot finish without waiting; that message, and every later one until the task parks again,
takes the task's path, so order is kept. An exception it raises is raised by the task's next read,
where the handler would have seen it on the task's path.

The connection (``epp.transport.connection``) owns the socket, the frame parser and the streams.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

from epp.transport import frames
from epp.transport.frames import ErrorCode, Flag, FrameType
from epp.transport.grpc import MESSAGE_PREFIX_SIZE, MessageReader, RpcError, StatusCode, message_prefix
from epp.transport.methods import InlineHandler, Method

if TYPE_CHECKING:
    from epp.transport.connection import H2Connection

log = logging.getLogger(__name__)

_DATA = int(FrameType.DATA)
# On Python 3.11 reading an enum member off its class runs a Python-level descriptor (~0.2 µs):
# the per-call path uses this name instead.
_OK = StatusCode.OK
# A DATA frame header followed by the 5-byte gRPC message prefix (uncompressed, length).
_DATA_AND_PREFIX = struct.Struct(">BHBBLBL")
# A queued message not parsed yet (the task parses it when it reads it).
_UNPARSED: Any = object()


class StreamClosedError(ConnectionError):
    """``send`` on a call that has ended (reset by the peer, deadline, connection lost)."""


class ServerStream:
    __slots__ = (
        "_held",
        "_inline",
        "_inline_error",
        "_messages",
        "_pending",
        "_pending_bytes",
        "_unacked",
        "_waiter",
        "_write_waiter",
        "buffered",
        "conn",
        "deadline",
        "headers_sent",
        "id",
        "inline_messages",
        "input_error",
        "local_closed",
        "method",
        "reader",
        "recv_window",
        "remote_closed",
        "reset",
        "send_window",
        "task",
        "waits_for_window",
    )

    def __init__(self, conn: H2Connection, stream_id: int, method: Method, send_window: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.method = method
        self.recv_window = conn.options.initial_window_size
        self.send_window = send_window
        self.reader = MessageReader(conn.options.max_receive_message_bytes)
        self.remote_closed = False
        self.local_closed = False
        self.reset = False
        self.headers_sent = False
        self.task: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.input_error: RpcError | None = None
        # Inbound: complete messages the handler has not read (the payload, its flow-controlled
        # size, and the parsed message or _UNPARSED).
        self._messages: deque[tuple[bytes, int, Any]] = deque()
        # The handler's synchronous entry point (set_inline), what it raised, and how many
        # messages it took.
        self._inline: InlineHandler | None = None
        self._inline_error: BaseException | None = None
        self.inline_messages = 0
        self.buffered = 0  # bytes held for this stream (queued messages + incomplete message)
        self._held = 0  # stream window credit withheld while the handler lags
        self._unacked = 0  # credit released but not yet sent as WINDOW_UPDATE
        self._waiter: asyncio.Future[None] | None = None
        # Outbound: DATA not yet allowed out by the peer's windows.
        self._pending: deque[memoryview] = deque()
        self._pending_bytes = 0
        self._write_waiter: asyncio.Future[None] | None = None
        self.waits_for_window = False  # queued in the connection's _window_waiters

    # ------------------------------------------------------------------ inbound (connection side)

    def receive_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        """A DATA frame for this stream (``flow_length`` includes padding). May raise StreamError."""
        if flow_length > self.recv_window:
            raise frames.StreamError(self.id, ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded")
        self.recv_window -= flow_length
        reader = self.reader
        before = reader.buffered
        try:
            messages = reader.feed(data) if data else ()
        except RpcError as error:
            # Oversized or compressed: end the call now, as grpcio does, whatever the handler does.
            self.abort(error.code, error.message)
            return
        grown = reader.buffered - before
        queue = self._messages
        for message in messages:
            size = len(message) + MESSAGE_PREFIX_SIZE
            parsed = _UNPARSED
            if self._waiter is not None and self._inline is not None and not queue and self._can_inline():
                parsed = self._offer_inline(message)
                if parsed is None:
                    continue  # answered: nothing held, the window is released below
            queue.append((message, size, parsed))
            grown += size
        if grown and not self.conn.hold_buffered(self, grown):
            return  # over the connection's buffer budget: the call has been ended
        if self._messages:
            self._held += flow_length  # the handler lags: no new window until it catches up
        else:
            self.release(flow_length)
        if end_stream:
            self.end_remote()
        elif self._messages and self._waiter is not None:
            self._wake_reader()

    def _can_inline(self) -> bool:
        """Nothing stands between a message and the handler but the parked task: no error to
        report first, the call is open, and no answer is waiting for window or a slow socket
        (that message would then be the second one held per stream: it takes the task's path,
        whose ``send`` waits)."""
        return not (
            self._pending
            or self.conn.write_paused
            or self.input_error is not None
            or self._inline_error is not None
            or self.local_closed
            or self.reset
        )

    def _offer_inline(self, payload: bytes) -> Any:
        """Offer one message to the handler's synchronous entry point. Returns None if it was
        handled, else the parsed message (or _UNPARSED) for the task's queue."""
        inline = self._inline
        assert inline is not None
        try:
            message = self.method.request_type.FromString(payload)
        except Exception:
            return _UNPARSED  # the task parses it again and ends the call as it always does
        try:
            handled = inline(message, self.send_nowait)
        except Exception as error:  # handed to the task, which raises it at its next read
            self._inline_error = error
            self.inline_messages += 1
            self._wake_reader()
            return None
        if not handled:
            return message
        self.inline_messages += 1
        return None

    def set_inline(self, handler: InlineHandler | None) -> None:
        """Register the handler's synchronous entry point (see the module docstring), or remove it."""
        self._inline = handler

    def end_remote(self) -> None:
        self.remote_closed = True
        if self.reader.buffered and self.input_error is None:
            self.input_error = RpcError(StatusCode.INTERNAL, "the request stream ended inside a message")
        self._wake_reader()
        if self.local_closed:
            self.conn.close_stream(self, None)

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def release(self, size: int) -> None:
        """Give ``size`` bytes of stream window back to the peer (batched into WINDOW_UPDATEs)."""
        self._unacked += size
        if self._unacked >= self.conn.stream_update_threshold and not self.remote_closed:
            self.recv_window += self._unacked
            self.conn.write(frames.window_update(self.id, self._unacked))
            self._unacked = 0

    # ------------------------------------------------------------------ the handler's request iterator

    def __aiter__(self) -> ServerStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._inline_error is not None:
                # What the inline entry point raised comes before every later message.
                error, self._inline_error = self._inline_error, None
                raise error
            if self._messages:
                if self._pending:
                    # An answer sent inline still waits for window: read on once it is out, as
                    # the task would have, had it sent that answer itself.
                    await self._wait_pending()
                    continue
                payload, size, parsed = self._messages.popleft()
                self.buffered -= size
                self.conn.buffered -= size
                if not self._messages and self._held:
                    held, self._held = self._held, 0
                    self.release(held)
                if parsed is not _UNPARSED:
                    return parsed
                try:
                    return self.method.request_type.FromString(payload)
                except Exception as error:  # protobuf's DecodeError, or anything a custom type raises
                    raise RpcError(
                        StatusCode.INTERNAL, f"could not parse a request message: {error}"
                    ) from None
            if self.input_error is not None:
                raise self.input_error
            if self.remote_closed or self.reset:
                raise StopAsyncIteration
            waiter = self.conn.loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    # ------------------------------------------------------------------ outbound

    async def _wait_pending(self) -> None:
        while self._pending and not (self.reset or self.local_closed):
            waiter = self.conn.loop.create_future()
            self._write_waiter = waiter
            try:
                await waiter
            finally:
                self._write_waiter = None

    async def send(self, message: Any) -> None:
        """Send one response message; returns once the peer's windows let it out in full."""
        self.send_nowait(message)
        if self._pending or self.conn.write_paused:
            await self._wait_writable()

    def send_nowait(self, message: Any) -> None:
        """Queue one response message: what the windows allow leaves with the next write, the rest
        when the peer opens them (``flush``). ``send`` is this, then the wait for the rest."""
        if self.local_closed or self.reset:
            raise StreamClosedError(f"stream {self.id} has ended")
        payload = message.SerializeToString()
        length = len(payload)
        conn = self.conn
        if length > conn.max_send_message_bytes:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"sent message larger than max ({length} vs. {conn.max_send_message_bytes})",
            )
        headers = b""
        if not self.headers_sent:
            self.headers_sent = True
            headers = conn.response_headers_frame(self.id)
        size = length + MESSAGE_PREFIX_SIZE
        if (
            not self._pending
            and size <= self.send_window
            and size <= conn.send_window
            and size <= conn.peer_max_frame_size
        ):
            # The common case: one DATA frame (frame header and message prefix packed together,
            # after the response headers on the first message), one write.
            self.send_window -= size
            conn.send_window -= size
            head = _DATA_AND_PREFIX.pack(size >> 16, size & 0xFFFF, _DATA, 0, self.id, 0, length)
            conn.write_parts(headers + head if headers else head, payload)
        else:
            if headers:
                conn.write(headers)
            self._pending.append(memoryview(message_prefix(length) + payload))
            self._pending_bytes += size
            self.flush()

    def flush(self) -> None:
        """Write as much pending DATA as the windows allow (called again on WINDOW_UPDATE)."""
        conn = self.conn
        while self._pending:
            allowed = min(self.send_window, conn.send_window, conn.peer_max_frame_size)
            if allowed <= 0:
                if self.send_window > 0:
                    conn.wait_for_connection_window(self)
                return
            chunk = self._pending[0]
            n = min(allowed, len(chunk))
            conn.write_parts(frames.frame_header(n, _DATA, 0, self.id), chunk[:n])
            self.send_window -= n
            conn.send_window -= n
            self._pending_bytes -= n
            if n == len(chunk):
                self._pending.popleft()
            else:
                self._pending[0] = chunk[n:]
        self.wake_writer()

    def wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not (self._pending or self.conn.write_paused):
            self._write_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_writable(self) -> None:
        while (self._pending or self.conn.write_paused) and not (self.reset or self.local_closed):
            waiter = self.conn.loop.create_future()
            self._write_waiter = waiter
            try:
                await waiter
            finally:
                self._write_waiter = None
        if self.reset:
            raise StreamClosedError(f"stream {self.id} was reset")

    @property
    def send_blocked(self) -> bool:
        """A ``send`` is waiting for the peer (windows or a full socket buffer)."""
        return self._write_waiter is not None

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    # ------------------------------------------------------------------ ending the call

    async def run(self) -> None:
        """The handler task: run the method, then report its status in trailers."""
        code, message = _OK, ""
        try:
            await self.method.handler(self, self.send)
        except RpcError as error:
            code, message = error.code, error.message
        except (asyncio.CancelledError, StreamClosedError):
            # Reset by the peer, connection gone, or the transport already sent the status (abort).
            return
        except Exception as error:
            log.exception("handler of %s failed", self.method.path)
            code, message = StatusCode.UNKNOWN, f"unexpected {type(error).__name__} in the method handler"
        if self.local_closed or self.reset:
            return
        if code is _OK and self._pending:
            try:
                await self._wait_writable()  # trailers go after every DATA frame
            except (StreamClosedError, asyncio.CancelledError):
                return
            if self.local_closed or self.reset:
                return
        self.finish(code, message)

    def finish(self, code: StatusCode, message: str, rst: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """Send the status (trailers, or Trailers-Only before any message) and end our side. Data
        the windows held back is dropped: the status says what happened."""
        if self.local_closed or self.reset:
            return
        conn = self.conn
        self._pending.clear()
        self._pending_bytes = 0
        self.local_closed = True
        trailers = conn.trailers_frame(self.id, code, message, trailers_only=not self.headers_sent)
        self.headers_sent = True
        # While the peer may still be sending, tell it to stop (RFC 9113 8.1, as grpc-go does):
        # RST_STREAM right behind the trailers, in the same write.
        conn.close_stream(self, None if self.remote_closed else rst, trailers)

    def abort(self, code: StatusCode, message: str) -> None:
        """End the call from the transport side (input error, deadline): status to the peer now,
        and the handler is cancelled."""
        self.finish(code, message)
        self.cancel_task()

    def cancel_task(self) -> None:
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def on_deadline(self) -> None:
        self.deadline = None
        self.abort(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    def closed(self) -> None:
        """The connection dropped the stream (reset either way, or both sides ended)."""
        self.reset = self.reset or not (self.local_closed and self.remote_closed)
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self._messages.clear()
        self._inline = None
        self._pending.clear()
        self._pending_bytes = 0
        self._wake_reader()
        waiter = self._write_waiter
        if waiter is not None:
            self._write_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self.reset:
            self.cancel_task()


def data_frame(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
    return frames.frame(_DATA, Flag.END_STREAM if end_stream else 0, stream_id, payload)


class _Steps:
    """Runs a coroutine as one task would, telling the connection when each step of it starts and
    ends: frames written during a step are queued and leave in one write when the step ends
    (``H2Connection.write``). A step ends at every suspension (awaiting the next message, window,
    the Director, a timer: whatever the handler awaits) and when the coroutine returns or raises,
    so nothing stays queued while the handler waits."""

    __slots__ = ("_conn", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, None], conn: H2Connection) -> None:
        self._coro = coro
        self._conn = conn

    def __await__(self) -> Generator[Any, Any, None]:
        coro, conn = self._coro, self._conn
        value: Any = None
        error: BaseException | None = None
        while True:
            conn.in_step = True
            try:
                if error is None:
                    suspended_on = coro.send(value)
                else:
                    thrown, error = error, None
                    suspended_on = coro.throw(thrown)
            except StopIteration:
                return
            finally:
                conn.end_step()
            try:
                # Hand the awaited future (or None, a bare yield) to the task unchanged, and what
                # the task sends or throws back (results, cancellation) to the coroutine.
                value = yield suspended_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as caught:  # CancelledError and the like, passed on
                error, value = caught, None


async def flushing_steps(stream: ServerStream) -> None:
    """The stream task's coroutine: ``stream.run()`` with its writes coalesced per step. (The run
    coroutine is made here, on the first step: a task cancelled before it starts leaves none behind
    that was never awaited.)"""
    await _Steps(stream.run(), stream.conn)
