"""One server-side HTTP/2 connection carrying gRPC calls, as an asyncio protocol.

Everything runs on the event loop thread: ``data_received`` parses frames and feeds streams, and
each call's handler runs as a task whose ``send`` queues its DATA frame. The frames one read produces
(PING and SETTINGS ACKs, WINDOW_UPDATEs, RST_STREAMs, early answers) leave together at the end of that
read; what handlers and timers queue leaves in one write at the start of the next event-loop
iteration (see ``write``). No extra threads and no second frame layer: that is where this transport
saves over grpc.aio (issue 16).

Protocol rules enforced here (RFC 9113): the client preface and a first SETTINGS frame; frame size
limits; the stream state machine (idle / open / half-closed / closed, client stream ids odd and
increasing); header blocks with CONTINUATION and nothing interleaved; padding; PRIORITY parsed and
ignored; SETTINGS validation and ACK; PING ACK; flow control both ways; GOAWAY both ways. A connection
error sends GOAWAY with its code and closes; a stream error sends RST_STREAM and goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any, Protocol, cast

import hpack

from epp.transport import frames
from epp.transport.calls import GRPC_CONTENT_TYPE, Call, Rejection, plan_call
from epp.transport.frames import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PREFACE,
    ConnectionError_,
    ErrorCode,
    Flag,
    FrameType,
    Setting,
    StreamError,
)
from epp.transport.grpc import StatusCode, percent_encode
from epp.transport.headers import (
    DecodedBlock,
    HeaderDecoder,
    MalformedRequest,
    check_trailers,
    encode_headers,
)
from epp.transport.methods import Method
from epp.transport.options import TransportOptions
from epp.transport.stream import ServerStream, flushing_steps

log = logging.getLogger(__name__)

_KEEPALIVE_PING = b"\x00keepal\x01"
_DRAIN_PING = b"\x00drain\x00\x01"
# How long a draining connection waits for the ACK of its first GOAWAY's PING before it fixes the
# last stream id anyway.
_DRAIN_PING_TIMEOUT = 1.0
_RECENTLY_RESET = 1024
_MAX_ANSWERED = 1024
_MAX_STATUS_MESSAGE = 1024
# The most bytes queued for one write: past this, coalescing saves nothing worth the wait.
_COALESCE_MAX = 64 * 1024

# Plain ints and members for the per-frame and per-call paths: on Python 3.11 reading an enum
# member off its class (FrameType.HEADERS) runs a Python-level descriptor, ~0.2 µs each time.
_HEADERS = int(FrameType.HEADERS)
_SETTINGS = int(FrameType.SETTINGS)
_CONTINUATION = int(FrameType.CONTINUATION)
_END_HEADERS = int(Flag.END_HEADERS)
_END_HEADERS_AND_STREAM = int(Flag.END_HEADERS | Flag.END_STREAM)
_OK = StatusCode.OK

_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", GRPC_CONTENT_TYPE)]
_RESPONSE_HEADERS_BLOCK = encode_headers(_RESPONSE_HEADERS)
_OK_TRAILERS_BLOCK = encode_headers([(b"grpc-status", b"0")])


class ConnectionOwner(Protocol):
    """The server a connection reports to (admission and the list of open connections)."""

    def connection_opened(self, connection: H2Connection) -> bool:
        """Register ``connection``; False refuses it (too many connections, shutting down)."""
        ...

    def connection_closed(self, connection: H2Connection) -> None: ...


class H2Connection(asyncio.Protocol):
    """Serves the methods in ``methods`` on one connection."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        options: TransportOptions,
        owner: ConnectionOwner | None = None,
    ) -> None:
        self.options = options
        self._methods = {path.encode(): method for path, method in methods.items()}
        self._owner = owner
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        # Inbound parsing
        self._preface_left = PREFACE
        self._got_settings = False
        self._chunks: list[bytes] = []
        self._chunk_bytes = 0
        self._need = FRAME_HEADER_SIZE
        # A header block awaiting CONTINUATION: stream id, first flags, self-dependent, parts, size.
        self._header_block: tuple[int, int, bool, list[bytes], int] | None = None
        self._decoder = HeaderDecoder(max_header_list_size=4 * options.max_header_list_size)
        self._handlers = (
            self._on_data,
            self._on_headers,
            self._on_priority,
            self._on_rst_stream,
            self._on_settings,
            self._on_push_promise,
            self._on_ping,
            self._on_goaway,
            self._on_window_update,
            self._on_continuation,
        )
        self._control_frames = 0
        # Streams
        self.streams: dict[int, ServerStream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._last_stream_id = 0
        self._recently_reset: OrderedDict[int, None] = OrderedDict()
        # Streams answered Trailers-Only while the client had not half-closed (see _start_call).
        self._answered: OrderedDict[int, None] = OrderedDict()
        self._stalled = False  # parsing waits for handler tasks to finish (see _parse)
        # Flow control: what the peer lets us send, and what we let the peer send.
        self.peer_initial_window = frames.DEFAULT_WINDOW
        self.peer_max_frame_size = frames.DEFAULT_MAX_FRAME_SIZE
        self.send_window = frames.DEFAULT_WINDOW
        self._window_waiters: deque[ServerStream] = deque()
        self._recv_window = options.connection_window_size
        self._recv_unacked = 0
        self._recv_update_threshold = options.connection_window_size // 2
        self.stream_update_threshold = options.initial_window_size // 2
        self.max_send_message_bytes = options.max_send_message_bytes
        self.buffered = 0  # inbound bytes held (incomplete + unread messages), all streams
        # HPACK: a smaller SETTINGS_HEADER_TABLE_SIZE from the peer must be acknowledged.
        self._encoder_table_size = frames.DEFAULT_HEADER_TABLE_SIZE
        self._table_size_update: int | None = None
        # Outbound
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        # Queued bytes past which the queue is written at once (see write and _flush).
        self._flush_at = min(_COALESCE_MAX, options.write_buffer_limit)
        self._corked = False
        self._flush_handle: asyncio.Handle | None = None  # the deferred flush (see write)
        # A stream's task is running one step: its writes leave when the step ends (flushing_steps).
        self.in_step = False
        self.write_paused = False
        # Lifecycle
        self.closed = False
        self.closed_event = asyncio.Event()
        self._goaway_last: int | None = None  # set once the final GOAWAY is sent
        self._draining = False
        self._aborting = False
        self._peer_goaway = False
        self._read_since_tick = False
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_timeout: asyncio.TimerHandle | None = None
        self._handshake: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._settings_acked = False

    # ================================================================== asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's, or another loop's such as uvloop's, which does not subclass it).
        stream_transport = self.transport = cast(asyncio.Transport, transport)
        self.peer = stream_transport.get_extra_info("peername")
        stream_transport.set_write_buffer_limits(high=self.options.write_buffer_limit)
        ssl_object = stream_transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() not in (None, "h2"):
            log.debug("closing %s: ALPN %s is not h2", self.peer, ssl_object.selected_alpn_protocol())
            stream_transport.abort()
            return
        options = self.options
        self._corked = True
        settings = {
            Setting.MAX_CONCURRENT_STREAMS: options.max_concurrent_streams,
            Setting.INITIAL_WINDOW_SIZE: options.initial_window_size,
            Setting.MAX_FRAME_SIZE: options.max_frame_size,
            Setting.MAX_HEADER_LIST_SIZE: options.max_header_list_size,
        }
        self.write(frames.settings_frame(settings))
        if options.connection_window_size > frames.DEFAULT_WINDOW:
            self.write(frames.window_update(0, options.connection_window_size - frames.DEFAULT_WINDOW))
        if self._owner is not None and not self._owner.connection_opened(self):
            self._owner = None
            self._goaway_last = 0
            self.write(frames.goaway(0, ErrorCode.ENHANCE_YOUR_CALM, b"too many connections"))
            self._close()
            return
        self._flush()
        self._handshake = self.loop.call_later(options.handshake_timeout, self._handshake_expired)
        self._keepalive = self.loop.call_later(options.keepalive_time, self._keepalive_tick)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._read_since_tick = True
        if self._stalled:
            # Frames wait behind the ones held back for the handler backlog; keep their order.
            self._chunks.append(data)
            self._chunk_bytes += len(data)
            return
        self._corked = True
        try:
            if self._preface_left:
                data = self._check_preface(data)
                if not data:
                    return
            if self._chunks or len(data) < self._need:
                self._chunks.append(data)
                self._chunk_bytes += len(data)
                if self._chunk_bytes < self._need:
                    return
                data = b"".join(self._chunks)
                self._chunks = []
                self._chunk_bytes = 0
            self._parse(data)
        except ConnectionError_ as error:
            self._connection_error(error.code, error.message)
        except Exception:
            # A bug here, not the peer's fault: say so and close rather than go on in a bad state.
            log.exception("HTTP/2 connection from %s failed", self.peer)
            self._connection_error(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            self._flush()

    def _parse(self, data: bytes) -> None:
        size = len(data)
        pos = 0
        max_frame = self.options.max_frame_size
        handlers = self._handlers
        while size - pos >= FRAME_HEADER_SIZE:
            high, low, frame_type, flags, stream_id = FRAME_HEADER.unpack_from(data, pos)
            length = (high << 16) | low
            if length > max_frame:
                raise ConnectionError_(
                    ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {max_frame}"
                )
            end = pos + FRAME_HEADER_SIZE + length
            if end > size:
                break
            if frame_type == _HEADERS and self._handler_backlog():
                # Handlers of closed streams are still winding down: read no further until one has
                # finished (a peer that opens and resets streams in a loop cannot pile them up).
                self._stall(data[pos:])
                return
            payload = data[pos + FRAME_HEADER_SIZE : end]
            pos = end
            stream_id &= MAX_STREAM_ID
            if not self._got_settings:
                if frame_type != _SETTINGS or flags & Flag.ACK:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "the preface must end with SETTINGS")
                self._got_settings = True
            if self._header_block is not None and frame_type != _CONTINUATION:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "frame interleaved in a header block")
            try:
                if frame_type < 10:
                    handlers[frame_type](flags, stream_id, payload)
                # Unknown frame types are ignored (RFC 9113 4.1, 5.5).
            except StreamError as error:
                self._stream_error(error.stream_id, error.code)
            if self.closed:
                return
        if pos < size:
            rest = data[pos:]
            self._chunks = [rest]
            self._chunk_bytes = len(rest)
            if len(rest) >= FRAME_HEADER_SIZE:
                high, low = FRAME_HEADER.unpack_from(rest)[:2]
                self._need = FRAME_HEADER_SIZE + ((high << 16) | low)
            else:
                self._need = FRAME_HEADER_SIZE
        else:
            self._need = FRAME_HEADER_SIZE

    def _handler_backlog(self) -> bool:
        limit = self.options.max_concurrent_streams
        # With the streams themselves at the limit the new one is refused instead (_headers_complete).
        return len(self.tasks) >= limit and len(self.streams) < limit

    def _stall(self, rest: bytes) -> None:
        self._stalled = True
        self._chunks = [rest]
        self._chunk_bytes = len(rest)
        self._need = FRAME_HEADER_SIZE
        self._update_reading()

    def _unstall(self) -> None:
        if not self._stalled or self.closed or self._handler_backlog():
            return
        self._stalled = False
        self._update_reading()
        self.data_received(b"")

    def _update_reading(self) -> None:
        """Read only while neither the peer's reading (write_paused) nor our handlers lag."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.write_paused or self._stalled:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _check_preface(self, data: bytes) -> bytes:
        expected = self._preface_left
        head = data[: len(expected)]
        if not expected.startswith(head):
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
        self._preface_left = expected[len(head) :]
        return data[len(head) :]

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        timers = (self._keepalive, self._ping_timeout, self._handshake, self._drain_timer, self._close_timer)
        for timer in timers:
            if timer is not None:
                timer.cancel()
        self._out.clear()
        self._out_bytes = 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for stream in list(self.streams.values()):
            self._drop_stream(stream)
        self._window_waiters.clear()
        self._chunks = []
        self._header_block = None
        self.closed_event.set()
        if self._owner is not None:
            owner, self._owner = self._owner, None
            owner.connection_closed(self)

    def pause_writing(self) -> None:
        # The peer reads slower than we write: stop reading too, so that nothing it sends can make
        # us queue more (PING ACKs, RST_STREAMs), and let handlers' send() wait.
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()
        for stream in list(self.streams.values()):
            stream.wake_writer()

    # ================================================================== output

    def write(self, data: bytes) -> None:
        """Queue ``data``; it leaves in one ``transport.write`` with everything queued alongside.

        One system call per ``send()`` made the socket write the largest single cost of a
        message that this process controls (a loopback TCP send costs ~6 µs of CPU here, and each
        one wakes the peer's thread). Handlers often send several messages in one step (the routed
        headers and the body chunks, answers to several messages that arrived in one read), so
        frames are queued and written when that is done:

        * while ``data_received`` parses (corked): at the end of the read;
        * while a stream's task runs a step (``in_step``, see ``flushing_steps``): when the step
          ends, i.e. the handler waits for the next message, for window, for anything else, or
          returns. No callback and no extra event-loop iteration, which would cost most of what
          the saved system call does;
        * otherwise (timers, another task ending a call): by a callback scheduled with the first
          queued frame, which runs before the loop next waits for I/O.

        Frames leave in the order they were queued, and flow control is applied when a frame is
        queued (``ServerStream.send``/``flush``), so coalescing changes neither. The queue is also
        written at once when it would fill what is left of ``write_buffer_limit`` in the socket
        transport (``_flush_at``), so that the transport's back-pressure (``pause_writing``) still
        stops a handler that sends a lot in one step, no later than it did without the queue."""
        if self.closed:
            return
        self._out.append(data)
        self._queued(len(data))

    def write_parts(self, first: bytes, second: bytes | memoryview) -> None:
        """A frame header and its payload (joined once, when they leave)."""
        if self.closed:
            return
        out = self._out
        out.append(first)
        out.append(second)
        self._queued(len(first) + len(second))

    def _queued(self, size: int) -> None:
        self._out_bytes += size
        if self._corked:
            return  # data_received flushes when it is done
        if self._out_bytes >= self._flush_at:
            self._flush()
        elif not self.in_step and self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is queued, in one ``transport.write``."""
        self._corked = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_bytes = 0
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)
                # Room left below the transport's high-water mark (stale once the socket drains,
                # which only makes the next flush come earlier).
                room = self.options.write_buffer_limit - transport.get_write_buffer_size()
                self._flush_at = max(1, min(_COALESCE_MAX, room))

    def end_step(self) -> None:
        """A stream's task step ended (``flushing_steps``): write what it queued."""
        self.in_step = False
        if self._out:
            self._flush()

    def response_headers_frame(self, stream_id: int) -> bytes:
        block = _RESPONSE_HEADERS_BLOCK
        if self._table_size_update is not None:
            block = encode_headers(_RESPONSE_HEADERS, self._table_size_update)
            self._table_size_update = None
        return frames.frame(_HEADERS, _END_HEADERS, stream_id, block)

    def trailers_frame(
        self,
        stream_id: int,
        code: StatusCode,
        message: str,
        trailers_only: bool,
        http_status: bytes = b"200",
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> bytes:
        if code is _OK and not trailers_only and not message and self._table_size_update is None:
            block = _OK_TRAILERS_BLOCK
        else:
            headers: list[tuple[bytes, bytes]] = []
            if trailers_only:
                headers += [(b":status", http_status), (b"content-type", GRPC_CONTENT_TYPE)]
            headers.append((b"grpc-status", b"%d" % code))
            if message:
                headers.append((b"grpc-message", percent_encode(message[:_MAX_STATUS_MESSAGE])))
            headers.extend(extra)
            block = encode_headers(headers, self._table_size_update)
            self._table_size_update = None
        return frames.frame(_HEADERS, _END_HEADERS_AND_STREAM, stream_id, block)

    # ================================================================== flow control

    def wait_for_connection_window(self, stream: ServerStream) -> None:
        # A flag, not a membership test on the deque: a peer that keeps the connection window shut
        # and sends stream WINDOW_UPDATEs would otherwise make each frame scan every waiting stream
        # (RFC 9113 10.5: per-frame work must stay bounded).
        if not stream.waits_for_window:
            stream.waits_for_window = True
            waiters = self._window_waiters
            waiters.append(stream)
            if len(waiters) > 2 * len(self.streams) + 16:
                # Streams that ended while waiting stay queued until the window opens; a peer that
                # keeps it shut and resets blocked streams in a loop would grow the queue without
                # bound. Dropping the dead ones when they are over half of it costs O(1) amortized.
                streams = self.streams
                self._window_waiters = deque(s for s in waiters if streams.get(s.id) is s)

    def _connection_window_opened(self) -> None:
        waiters = self._window_waiters
        while waiters and self.send_window > 0:
            stream = waiters.popleft()
            stream.waits_for_window = False
            if not stream.reset:
                stream.flush()

    def hold_buffered(self, stream: ServerStream, size: int) -> bool:
        """Count ``size`` more inbound bytes held for ``stream``; False (and the call ended with
        RESOURCE_EXHAUSTED) when the connection's budget would overflow."""
        if self.buffered + size > self.options.max_buffered_bytes:
            stream.abort(
                StatusCode.RESOURCE_EXHAUSTED,
                f"the server holds {self.buffered} bytes of unread requests on this connection "
                f"(limit {self.options.max_buffered_bytes})",
            )
            return False
        self.buffered += size
        stream.buffered += size
        return True

    def release_buffered(self, stream: ServerStream, size: int) -> None:
        self.buffered -= size
        stream.buffered -= size

    def _release_connection_window(self, size: int) -> None:
        self._recv_unacked += size
        if self._recv_unacked >= self._recv_update_threshold:
            self._recv_window += self._recv_unacked
            self.write(frames.window_update(0, self._recv_unacked))
            self._recv_unacked = 0

    # ================================================================== frames

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        if length > self._recv_window:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._recv_window -= length
        # Memory is bounded by max_buffered_bytes, not by this window: return it at once.
        self._recv_unacked += length
        if self._recv_unacked >= self._recv_update_threshold:
            self._release_connection_window(0)
        if flags & Flag.PADDED:
            if not length or payload[0] >= length:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA padding exceeds the payload")
            data = payload[1 : length - payload[0]]
        else:
            data = payload
        stream = self.streams.get(stream_id)
        if stream is None:
            # Ignored (a stream we reset) or answered with RST_STREAM: no progress, whatever it
            # carries, so it counts toward the flood guard (CVE-2019-9518 class).
            self._count_control_frame()
            self._frame_on_closed_stream(stream_id, "DATA", bool(flags & Flag.END_STREAM))
            return
        if stream.remote_closed:
            raise StreamError(stream_id, ErrorCode.STREAM_CLOSED, "DATA after END_STREAM")
        if data:
            self._control_frames = 0
        else:
            self._count_control_frame()
        stream.receive_data(data, length, bool(flags & Flag.END_STREAM))

    def _frame_on_closed_stream(self, stream_id: int, kind: str, end_stream: bool = False) -> None:
        if stream_id in self._answered:
            if end_stream:
                del self._answered[stream_id]  # the client half-closed too: closed cleanly
            return
        if stream_id > self._last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"{kind} on idle stream {stream_id}")
        if stream_id in self._recently_reset:
            return  # we reset it; frames in flight are expected (RFC 9113 5.1 "closed")
        raise StreamError(stream_id, ErrorCode.STREAM_CLOSED, f"{kind} on closed stream {stream_id}")

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if stream_id % 2 == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"client stream id {stream_id} is even")
        length = len(payload)
        start = pad = 0
        if flags & Flag.PADDED:
            if not length:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "HEADERS padding length missing")
            pad, start = payload[0], 1
        self_dependent = False
        if flags & Flag.PRIORITY:
            if length - start < 5:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority fields truncated")
            self_dependent = frames.read_u32(payload, start) & MAX_STREAM_ID == stream_id
            start += 5
        if pad > length - start:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS padding exceeds the payload")
        fragment = payload[start : length - pad]
        if not flags & Flag.END_HEADERS:
            self._check_block_size(len(fragment))
            self._header_block = (stream_id, flags, self_dependent, [fragment], len(fragment))
            return
        self._headers_complete(stream_id, flags, fragment, self_dependent)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._header_block
        if block is None or block[0] != stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block")
        _, first_flags, self_dependent, parts, size = block
        size += len(payload)
        self._check_block_size(size)
        parts.append(payload)
        if not flags & Flag.END_HEADERS:
            self._header_block = (stream_id, first_flags, self_dependent, parts, size)
            self._count_control_frame()
            return
        self._header_block = None
        self._headers_complete(stream_id, first_flags, b"".join(parts), self_dependent)

    def _check_block_size(self, size: int) -> None:
        if size > 4 * self.options.max_header_list_size:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")

    def _headers_complete(self, stream_id: int, flags: int, block: bytes, self_dependent: bool) -> None:
        # Decode first, whatever happens to the stream: the HPACK table is connection state.
        try:
            decoded = self._decoder.decode(block)
        except hpack.OversizedHeaderListError:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header list too large") from None
        except Exception as error:  # hpack's decoding errors, or anything malformed input provokes
            raise ConnectionError_(ErrorCode.COMPRESSION_ERROR, f"HPACK: {error}") from None
        # A header block counts as a frame without progress until it opens a call or ends one with
        # trailers: blocks that are ignored (a stream we reset), refused or malformed cost a decode
        # and often a RST_STREAM each, and must not reset the flood guard (CVE-2019-9518 class).
        self._count_control_frame()
        end_stream = bool(flags & Flag.END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:
            # A second header block on an open stream: request trailers.
            if stream.remote_closed:
                raise StreamError(stream_id, ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM")
            if not end_stream:
                raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
            try:
                check_trailers(decoded.headers)
            except MalformedRequest as error:
                raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, str(error)) from None
            self._control_frames = 0
            stream.receive_data(b"", 0, True)
            return
        if stream_id <= self._last_stream_id:
            if stream_id in self._answered:
                self._frame_on_closed_stream(stream_id, "HEADERS", end_stream)
                return
            if stream_id in self._recently_reset:
                return
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"stream id {stream_id} is not increasing")
        self._last_stream_id = stream_id
        if self_dependent:
            raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        if self._goaway_last is not None:
            self._refuse_stream(stream_id)  # after GOAWAY: not processed, the client may retry
            return
        if len(self.streams) + len(self._answered) >= self.options.max_concurrent_streams:
            self._refuse_stream(stream_id)  # more open streams than SETTINGS allowed
            return
        self._start_call(stream_id, decoded, end_stream)

    def _await_client_end(self, stream_id: int) -> None:
        """Half-closed (local) after an early answer: let the client finish sending instead of
        resetting the stream. A unary client's request is often still on its way, and grpcio
        reports a send that a RST_STREAM cut short as INTERNAL, hiding the status it already has.
        Bounded: past _MAX_ANSWERED such streams the oldest is reset with NO_ERROR after all."""
        self._answered[stream_id] = None
        if len(self._answered) > _MAX_ANSWERED:
            oldest, _ = self._answered.popitem(last=False)
            self.write(frames.rst_stream(oldest, ErrorCode.NO_ERROR))
            self._remember_reset(oldest)

    def _refuse_stream(self, stream_id: int) -> None:
        self.write(frames.rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
        self._remember_reset(stream_id)

    def _start_call(self, stream_id: int, decoded: DecodedBlock, end_stream: bool) -> None:
        plan = decoded.derived
        if plan is None:
            plan = decoded.derived = plan_call(
                decoded.headers, self._methods, self.options.max_header_list_size
            )
        if isinstance(plan, MalformedRequest):
            raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, str(plan))
        self._control_frames = 0  # a gRPC call, served or answered with a status: progress
        if isinstance(plan, Rejection):
            self.write(
                self.trailers_frame(stream_id, plan.code, plan.message, True, plan.http_status, plan.extra)
            )
            if not end_stream:
                self.write(frames.rst_stream(stream_id, ErrorCode.NO_ERROR))
                self._remember_reset(stream_id)
            return
        assert isinstance(plan, Call)
        stream = ServerStream(self, stream_id, plan.method, self.peer_initial_window)
        self.streams[stream_id] = stream
        stream.remote_closed = end_stream
        if plan.timeout is not None:
            stream.deadline = self.loop.call_later(plan.timeout, stream.on_deadline)
        task = self.loop.create_task(flushing_steps(stream))
        stream.task = task
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._stalled:
            self._unstall()
        if not task.cancelled() and task.exception() is not None:
            log.error("stream task failed", exc_info=task.exception())
        self._maybe_finish_drain()

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise StreamError(stream_id, ErrorCode.FRAME_SIZE_ERROR, "PRIORITY must be 5 bytes")
        if frames.read_u32(payload) & MAX_STREAM_ID == stream_id:
            raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        self._count_control_frame()  # priorities are advisory (RFC 9113 5.3.2); this server ignores them

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM must be 4 bytes")
        if stream_id > self._last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        self._count_control_frame()
        self._answered.pop(stream_id, None)
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._drop_stream(stream)
            self._remember_reset(stream_id)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        self._count_control_frame()
        if flags & Flag.ACK:
            if payload:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._settings_acked = True
            self._handshake_progress()
            return
        if len(payload) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        # RFC 9113 6.5.3 processes settings in order, but one frame can hold 2,730 of them: applied
        # one by one, alternating INITIAL_WINDOW_SIZE values would walk every open stream for each
        # (RFC 9113 10.5, the CVE-2019-9515 settings-flood class). No DATA leaves between two
        # values of one frame, so only the last one is applied, once.
        initial_window = -1
        for key, value in frames.parse_settings(payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(
                        ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large"
                    )
                initial_window = value
            else:
                self._apply_setting(key, value)
        if initial_window >= 0:
            self._apply_initial_window(initial_window)
        self.write(frames.SETTINGS_ACK)
        self._handshake_progress()

    def _apply_setting(self, key: int, value: int) -> None:
        if key == Setting.HEADER_TABLE_SIZE:
            if value < self._encoder_table_size:
                self._encoder_table_size = value
                self._table_size_update = value
        elif key == Setting.ENABLE_PUSH:
            if value > 1:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
        elif key == Setting.MAX_FRAME_SIZE:
            if not frames.DEFAULT_MAX_FRAME_SIZE <= value <= frames.MAX_MAX_FRAME_SIZE:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            self.peer_max_frame_size = value
        # MAX_CONCURRENT_STREAMS limits streams we would open (we open none); MAX_HEADER_LIST_SIZE is
        # advisory and our header blocks are a few dozen bytes; unknown settings are ignored.

    def _apply_initial_window(self, value: int) -> None:
        """A new SETTINGS_INITIAL_WINDOW_SIZE shifts every open stream's window (RFC 9113 6.9.2)."""
        delta = value - self.peer_initial_window
        self.peer_initial_window = value
        if delta:
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "a stream window overflowed")
            if delta > 0:
                for stream in list(self.streams.values()):
                    stream.flush()

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a client cannot send PUSH_PROMISE")

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PING must be 8 bytes")
        self._count_control_frame()
        if not flags & Flag.ACK:
            self.write(frames.ping(payload, ack=True))
        elif payload == _KEEPALIVE_PING:
            if self._ping_timeout is not None:
                self._ping_timeout.cancel()
                self._ping_timeout = None
        elif payload == _DRAIN_PING:
            self._send_final_goaway()

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        self._count_control_frame()
        # The client opens no more streams; finish the open ones, then close.
        self._peer_goaway = True
        self._maybe_finish_drain()

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE must be 4 bytes")
        increment = frames.read_u32(payload) & MAX_WINDOW
        self._count_control_frame()
        if stream_id == 0:
            if not increment:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflowed")
            self._connection_window_opened()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # closed: ignore (RFC 9113 6.9)
        if not increment:
            raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise StreamError(stream_id, ErrorCode.FLOW_CONTROL_ERROR, "stream window overflowed")
        stream.flush()

    def _count_control_frame(self) -> None:
        self._control_frames += 1
        if self._control_frames > self.options.max_control_frames:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "too many control frames without progress")

    # ================================================================== streams and errors

    def close_stream(self, stream: ServerStream, rst: ErrorCode | None, last: bytes = b"") -> None:
        """Both sides ended (``rst`` None), or we end it with RST_STREAM ``rst``; ``last`` (the
        trailers) goes out first, in the same write."""
        if self.streams.pop(stream.id, None) is None:
            return  # already gone: nothing more may be sent on it
        if rst is not None:
            self.write(last + frames.rst_stream(stream.id, rst))
            self._remember_reset(stream.id)
        elif last:
            self.write(last)
        self._forget(stream)
        self._maybe_finish_drain()

    def _drop_stream(self, stream: ServerStream) -> None:
        """Reset by the peer, or the connection is gone: cancel the handler, say nothing."""
        self.streams.pop(stream.id, None)
        stream.reset = True
        self._forget(stream)
        self._maybe_finish_drain()

    def _forget(self, stream: ServerStream) -> None:
        if stream.buffered:
            self.buffered -= stream.buffered
            stream.buffered = 0
        stream.closed()

    def _stream_error(self, stream_id: int, code: ErrorCode) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset = True
            self.close_stream(stream, code)
        else:
            self.write(frames.rst_stream(stream_id, code))
            self._remember_reset(stream_id)

    def _remember_reset(self, stream_id: int) -> None:
        recent = self._recently_reset
        recent[stream_id] = None
        if len(recent) > _RECENTLY_RESET:
            recent.popitem(last=False)

    def _connection_error(self, code: ErrorCode, message: str) -> None:
        log.info("HTTP/2 connection error with %s: %s %s", self.peer, code.name, message)
        if self.closed:
            return
        self.write(frames.goaway(self._last_stream_id, code, message.encode()[:256]))
        self._goaway_last = self._last_stream_id
        for stream in list(self.streams.values()):
            self._drop_stream(stream)
        self._close()

    def _close(self) -> None:
        """Flush what is queued, close, and abort if the peer does not take it in time."""
        self.closed = True
        self._header_block = None
        self._chunks = []
        self._flush()
        transport = self.transport
        if transport is not None:
            transport.close()
            if self._close_timer is None:
                self._close_timer = self.loop.call_later(self.options.close_timeout, transport.abort)

    # ================================================================== timers, keepalive, drain

    def _handshake_progress(self) -> None:
        if self._settings_acked and self._got_settings and self._handshake is not None:
            self._handshake.cancel()
            self._handshake = None

    def _handshake_expired(self) -> None:
        self._handshake = None
        if not self._got_settings:
            self._connection_error(ErrorCode.PROTOCOL_ERROR, "no client preface in time")
        else:
            self._connection_error(ErrorCode.SETTINGS_TIMEOUT, "SETTINGS not acknowledged in time")

    def _keepalive_tick(self) -> None:
        self._keepalive = self.loop.call_later(self.options.keepalive_time, self._keepalive_tick)
        self._control_frames = 0  # the flood guard counts per keepalive period
        if self._read_since_tick or self._ping_timeout is not None:
            self._read_since_tick = False
            return
        self.write(frames.ping(_KEEPALIVE_PING))
        self._ping_timeout = self.loop.call_later(self.options.keepalive_timeout, self._keepalive_expired)

    def _keepalive_expired(self) -> None:
        self._ping_timeout = None
        log.info("closing the connection from %s: no PING answer in time", self.peer)
        self._connection_error(ErrorCode.NO_ERROR, "keepalive timeout")
        if self.transport is not None:
            self.transport.abort()

    def start_drain(self) -> None:
        """Graceful shutdown: GOAWAY(2^31-1) and a PING first, so requests the client already sent
        are not lost; on the PING's ACK the final GOAWAY names the last stream that will be served.
        Open streams then finish, and the connection closes when none is left."""
        if self._draining or self.closed:
            return
        self._draining = True
        self.write(frames.goaway(MAX_STREAM_ID, ErrorCode.NO_ERROR))
        self.write(frames.ping(_DRAIN_PING))
        self._drain_timer = self.loop.call_later(_DRAIN_PING_TIMEOUT, self._send_final_goaway)

    def _send_final_goaway(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._goaway_last is not None or self.closed:
            return
        self._goaway_last = self._last_stream_id
        self.write(frames.goaway(self._last_stream_id, ErrorCode.NO_ERROR))
        self._maybe_finish_drain()

    def _maybe_finish_drain(self) -> None:
        if self.closed or self.streams or self._aborting:
            return
        if self._goaway_last is not None or self._peer_goaway:
            self._close()

    def abort_calls(self, message: str = "the server is shutting down") -> None:
        """End every open call with UNAVAILABLE (the drain deadline passed), then close."""
        self._aborting = True
        for stream in list(self.streams.values()):
            stream.abort(StatusCode.UNAVAILABLE, message)
        self._aborting = False
        if self._goaway_last is None and not self.closed:
            self._goaway_last = self._last_stream_id
            self.write(frames.goaway(self._last_stream_id, ErrorCode.NO_ERROR))
        if not self.closed:
            self._close()

    @property
    def open_streams(self) -> int:
        return len(self.streams)
