"""A hypothesis fuzzer of raw frame sequences against the transports.

Each example opens a connection, sends a generated sequence (usually after a valid preface, as one
write or split at arbitrary points) and then a PING. The server must answer the PING, send GOAWAY,
or close; it must never crash (a fresh connection is then served normally) and, for the h2
transport, leave nothing behind once the connection is gone: no stream, no running handler task,
no buffered bytes. Derandomized and bounded, so every run checks the same examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Callable

import hpack
from google.protobuf import wrappers_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.transport.frames import PREFACE

from .rawh2 import ErrorCode, Flag, FrameType, RawClient, frame, grpc_message, request_headers
from .support import ECHO, HANG_GUARD, Probe, ServedMethod, ServerUnderTest, echo_handler, wait_until

_U32 = st.one_of(
    st.sampled_from([0, 1, 8, 65_535, 2**14, 2**24, 2**31 - 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1)
)
_STREAM_IDS = st.one_of(st.sampled_from([0, 1, 1, 1, 1, 3, 3, 5, 2, 2**31 - 1]), st.integers(0, 2**31 - 1))
_FLAGS = st.one_of(
    st.sampled_from(
        [0, Flag.END_STREAM, Flag.END_HEADERS, Flag.END_STREAM | Flag.END_HEADERS, Flag.PADDED, Flag.PRIORITY]
    ),
    st.integers(0, 255),
)
_MESSAGES = st.sampled_from(
    [
        wrappers_pb2.BytesValue(value=v).SerializeToString()
        for v in (b"", b"echo", b"hang", b"boom", b"quit", b"stream:3:10", b"status:NOT_FOUND:x", b"x" * 300)
    ]
)


def _blocks() -> st.SearchStrategy[bytes]:
    """Header blocks: valid requests (encoded fresh, so the server's table sees insertions),
    other header lists, and junk."""
    lists = [
        request_headers(ECHO),
        request_headers(ECHO, grpc_timeout="1m"),
        request_headers("/test.Echo/Nope"),
        [("x-trailer", "1")],
        [(":method", "GET"), (":path", "/"), (":scheme", "http")],
        request_headers(ECHO, content_type="text/plain"),
    ]
    encoded = st.sampled_from(lists).map(lambda headers: bytes(hpack.Encoder().encode(headers)))
    return st.one_of(encoded, encoded.map(lambda b: b[: len(b) // 2]), st.binary(max_size=40))


def _payload(frame_type: int) -> st.SearchStrategy[bytes]:
    if frame_type == FrameType.DATA:
        return st.one_of(
            _MESSAGES.map(grpc_message),
            _MESSAGES.map(lambda m: grpc_message(m)[: max(1, len(m) // 2)]),
            st.binary(max_size=40),
        )
    if frame_type in (FrameType.HEADERS, FrameType.CONTINUATION):
        return _blocks()
    if frame_type == FrameType.SETTINGS:
        pairs = st.lists(st.tuples(st.integers(0, 9), _U32), max_size=4)
        return st.one_of(
            pairs.map(lambda p: b"".join(struct.pack(">HL", k, v) for k, v in p)), st.binary(max_size=13)
        )
    if frame_type in (FrameType.WINDOW_UPDATE, FrameType.RST_STREAM):
        return st.one_of(_U32.map(lambda v: struct.pack(">L", v)), st.binary(max_size=6))
    if frame_type == FrameType.PING:
        return st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=12))
    if frame_type == FrameType.GOAWAY:
        return st.one_of(st.tuples(_U32, _U32).map(lambda p: struct.pack(">LL", *p)), st.binary(max_size=12))
    if frame_type == FrameType.PRIORITY:
        return st.one_of(
            st.tuples(_U32, st.integers(0, 255)).map(lambda p: struct.pack(">LB", *p)), st.binary(max_size=7)
        )
    return st.binary(max_size=30)


_FRAMES = st.tuples(
    st.one_of(st.integers(0, 9), st.integers(0, 9), st.integers(10, 255)), _FLAGS, _STREAM_IDS
).flatmap(lambda t: _payload(t[0]).map(lambda payload: frame(t[0], t[1], t[2], payload)))
# Plausible frames on the streams the openers made: what exercises stream state, buffering and
# flow control rather than the frame parser.
_STREAM_FRAMES = st.tuples(
    st.sampled_from(
        [FrameType.DATA, FrameType.DATA, FrameType.DATA, FrameType.WINDOW_UPDATE, FrameType.RST_STREAM]
    ),
    st.sampled_from([0, 0, 0, Flag.END_STREAM]),
    st.sampled_from([1, 1, 3]),
).flatmap(lambda t: _stream_payload(t[0]).map(lambda payload: frame(t[0], t[1], t[2], payload)))


def _stream_payload(frame_type: int) -> st.SearchStrategy[bytes]:
    """Mostly whole messages: what fills the server's per-stream buffers."""
    if frame_type == FrameType.DATA:
        return st.one_of(_MESSAGES.map(grpc_message), _MESSAGES.map(grpc_message), _payload(frame_type))
    return _payload(frame_type)


def _opener(kind: str) -> bytes:
    """Valid frames that put streams into interesting states before the random ones arrive."""
    encoder = hpack.Encoder()

    def open_stream(stream_id: int, path: str = ECHO, end_stream: bool = False) -> bytes:
        flags = Flag.END_HEADERS | (Flag.END_STREAM if end_stream else 0)
        return frame(FrameType.HEADERS, flags, stream_id, bytes(encoder.encode(request_headers(path))))

    def message(stream_id: int, text: bytes, end_stream: bool = False) -> bytes:
        payload = grpc_message(wrappers_pb2.BytesValue(value=text).SerializeToString())
        return frame(FrameType.DATA, Flag.END_STREAM if end_stream else 0, stream_id, payload)

    # Built on demand: every opener must start from a fresh encoder, as the server's decoder does.
    openers: dict[str, Callable[[], bytes]] = {
        "none": lambda: b"",
        "open": lambda: open_stream(1),
        "open, half-closed": lambda: open_stream(1, end_stream=True),
        "rejected": lambda: open_stream(1, "/test.Echo/Nope"),
        "finished early": lambda: open_stream(1) + message(1, b"quit"),
        "hanging": lambda: open_stream(1) + message(1, b"hang"),
        "echoing": lambda: open_stream(1) + message(1, b"echo"),
        "two streams": lambda: open_stream(1) + open_stream(3) + message(3, b"stream:5:100", end_stream=True),
        "reset": lambda: open_stream(1) + frame(FrameType.RST_STREAM, 0, 1, struct.pack(">L", 8)),
    }
    return openers[kind]()


_OPENERS = st.sampled_from(
    [
        "none",
        "open",
        "open, half-closed",
        "rejected",
        "finished early",
        "hanging",
        "echoing",
        "two streams",
        "reset",
        # Twice as likely: a handler that stops reading is where buffers and windows are tested.
        "hanging",
        "open",
    ]
).map(_opener)
_TAILS = st.lists(
    st.one_of(_FRAMES, _FRAMES, _FRAMES, st.binary(min_size=1, max_size=20)), min_size=1, max_size=10
)
_SEQUENCES = st.tuples(
    st.sampled_from(["handshake", "handshake", "handshake", "handshake", "preface only", "raw"]),
    st.tuples(_OPENERS, _TAILS).map(lambda t: [t[0], *t[1]]),
    st.lists(st.integers(0, 400), max_size=3),
)


class _Errors(logging.Handler):
    """Errors the transport logs about itself (a handler's own exception is logged elsewhere)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


async def _example(transport: str, start: str, parts: list[bytes], splits: list[int]) -> None:
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
    errors = _Errors()
    logging.getLogger("epp.transport.connection").addHandler(errors)
    try:
        await _exchange(transport, start, parts, splits)
    finally:
        logging.getLogger("epp.transport.connection").removeHandler(errors)
    assert not loop_errors, loop_errors
    assert not errors.records, errors.records


async def _exchange(transport: str, start: str, parts: list[bytes], splits: list[int]) -> None:
    probe = Probe()
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest(transport, [method]) as server:
        client = await RawClient.connect(server.port, handshake=start == "handshake")
        connection = next(iter(server.h2.connections), None) if server.h2 is not None else None
        if start == "preface only":
            client.send(PREFACE)
        # The opener first, and time for the server's handlers to act on it.
        client.send(parts[0])
        await client.drain()
        for _ in range(4):
            await asyncio.sleep(0)
        data = b"".join(parts[1:])
        cuts = sorted({0, len(data), *(min(s, len(data)) for s in splits)})
        for begin, end in itertools.pairwise(cuts):
            client.send(data[begin:end])
            await client.drain()
            await asyncio.sleep(0)
        # A PING, then end of input: whatever state the bytes left the connection in (even inside an
        # unfinished frame) the server must now answer and close, not hang.
        client.ping(b"fuzzping")
        with contextlib.suppress(OSError):  # the server may have closed already
            client.writer.write_eof()
        await client.drain()
        frames = await client.read_to_end()
        codes = {f.error_code for f in frames if f.type in (FrameType.GOAWAY, FrameType.RST_STREAM)}
        assert codes <= {int(code) for code in ErrorCode}, codes
        client.abort()
        if connection is not None:
            assert server.h2 is not None
            await wait_until(lambda: connection.closed_event.is_set(), "the server saw the connection go")
            await wait_until(lambda: not connection.tasks, "every handler task finished")
            assert not connection.streams
            assert connection.buffered == 0
            assert not connection._out and not connection._chunks
            assert probe.active == 0
        await _serves_a_good_call(server)


async def _serves_a_good_call(server: ServerUnderTest) -> None:
    client = await RawClient.connect(server.port)
    client.send_headers(1, request_headers(ECHO))
    client.send_message(1, wrappers_pb2.BytesValue(value=b"after").SerializeToString(), end_stream=True)
    await client.drain()
    blocks, data, rst = await client.response(1)
    client.abort()
    assert rst is None and blocks[-1].get("grpc-status") == "0", (blocks, rst)
    assert data == [grpc_message(wrappers_pb2.BytesValue(value=b"after").SerializeToString())]


_FUZZ_SETTINGS = {
    "derandomize": True,
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=500, **_FUZZ_SETTINGS)  # type: ignore[arg-type]
@given(_SEQUENCES)
def test_fuzz_h2(sequence: tuple[str, list[bytes], list[int]]) -> None:
    start, parts, splits = sequence
    asyncio.run(asyncio.wait_for(_example("h2", start, parts, splits), HANG_GUARD * 2))


@settings(max_examples=25, **_FUZZ_SETTINGS)  # type: ignore[arg-type]
@given(_SEQUENCES)
def test_fuzz_grpc_aio(sequence: tuple[str, list[bytes], list[int]]) -> None:
    start, parts, splits = sequence
    asyncio.run(asyncio.wait_for(_example("grpc", start, parts, splits), HANG_GUARD * 2))
