"""Malformed and hostile frames, one case each (the fuzzer in test_fuzz.py covers the space between).

For the h2 transport every case has an exact expected answer from RFC 9113 (GOAWAY or RST_STREAM
with its error code, or a gRPC status). grpc.aio (C-core) answers some of them differently or
ignores what the RFC allows it to ignore, so for it the suite checks what matters to the EPP: it
answers or closes, never hangs, and keeps serving new connections.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from google.protobuf import wrappers_pb2

from epp.transport import TransportOptions
from epp.transport.frames import PREFACE

from .rawh2 import (
    ErrorCode,
    Flag,
    Frame,
    FrameType,
    RawClient,
    Setting,
    frame,
    grpc_message,
    request_headers,
    settings,
)
from .support import (
    ECHO,
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

Builder = Callable[[RawClient], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    build: Builder
    # What the h2 transport must answer: ("goaway", code), ("rst", code), ("status", grpc-status,
    # :status) or ("ignored",) (the connection answers a PING afterwards and stays usable).
    expect: tuple[object, ...]
    handshake: bool = True


def _open(client: RawClient, stream_id: int = 1, end_stream: bool = False, **extra: str) -> bytes:
    flags = Flag.END_HEADERS | (Flag.END_STREAM if end_stream else 0)
    return frame(FrameType.HEADERS, flags, stream_id, client.headers_block(request_headers(ECHO, **extra)))


def _headers(client: RawClient, headers: list[tuple[str, str]], stream_id: int = 1) -> bytes:
    return frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, client.headers_block(headers))


def _u32(value: int) -> bytes:
    return struct.pack(">L", value)


def _split_headers(block: bytes, at: int = 5) -> bytes:
    """One header block over HEADERS + two CONTINUATION frames (an empty one included)."""
    return (
        frame(FrameType.HEADERS, Flag.END_STREAM, 1, block[:at])
        + frame(FrameType.CONTINUATION, 0, 1, b"")
        + frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block[at:])
    )


_GOOD = request_headers(ECHO)
CASES = [
    # --- connection errors: GOAWAY with the code, then close
    Case(
        "not http2",
        lambda c: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ("goaway", ErrorCode.PROTOCOL_ERROR),
        False,
    ),
    Case(
        "preface without settings",
        lambda c: PREFACE + frame(FrameType.PING, 0, 0, b"8 bytes!"),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
        False,
    ),
    Case(
        "frame over max size",
        lambda c: _open(c) + frame(FrameType.DATA, 0, 1, b"x" * 16_385),
        ("goaway", ErrorCode.FRAME_SIZE_ERROR),
    ),
    Case(
        "settings length",
        lambda c: frame(FrameType.SETTINGS, 0, 0, b"\x00\x01\x00\x00\x10"),
        ("goaway", ErrorCode.FRAME_SIZE_ERROR),
    ),
    Case(
        "settings ack with payload",
        lambda c: frame(FrameType.SETTINGS, Flag.ACK, 0, b"\x00" * 6),
        ("goaway", ErrorCode.FRAME_SIZE_ERROR),
    ),
    Case(
        "settings on a stream",
        lambda c: frame(FrameType.SETTINGS, 0, 1, b""),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case("enable_push 2", lambda c: settings({Setting.ENABLE_PUSH: 2}), ("goaway", ErrorCode.PROTOCOL_ERROR)),
    Case(
        "initial window 2^31",
        lambda c: settings({Setting.INITIAL_WINDOW_SIZE: 2**31}),
        ("goaway", ErrorCode.FLOW_CONTROL_ERROR),
    ),
    Case(
        "max frame size 100",
        lambda c: settings({Setting.MAX_FRAME_SIZE: 100}),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "ping length", lambda c: frame(FrameType.PING, 0, 0, b"short"), ("goaway", ErrorCode.FRAME_SIZE_ERROR)
    ),
    Case(
        "ping on a stream",
        lambda c: frame(FrameType.PING, 0, 1, b"8 bytes!"),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "connection window update of 0",
        lambda c: frame(FrameType.WINDOW_UPDATE, 0, 0, _u32(0)),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "connection window overflow",
        lambda c: frame(FrameType.WINDOW_UPDATE, 0, 0, _u32(2**31 - 1)) * 2,
        ("goaway", ErrorCode.FLOW_CONTROL_ERROR),
    ),
    Case(
        "window update length",
        lambda c: frame(FrameType.WINDOW_UPDATE, 0, 0, b"\x00\x01"),
        ("goaway", ErrorCode.FRAME_SIZE_ERROR),
    ),
    Case(
        "data on stream 0", lambda c: frame(FrameType.DATA, 0, 0, b"x"), ("goaway", ErrorCode.PROTOCOL_ERROR)
    ),
    Case(
        "data on an idle stream",
        lambda c: frame(FrameType.DATA, 0, 5, b"x"),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case("even stream id", lambda c: _open(c, 2), ("goaway", ErrorCode.PROTOCOL_ERROR)),
    Case("decreasing stream id", lambda c: _open(c, 5) + _open(c, 3), ("goaway", ErrorCode.PROTOCOL_ERROR)),
    Case(
        "continuation without headers",
        lambda c: frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, b"\x82"),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "frame inside a header block",
        lambda c: (
            frame(FrameType.HEADERS, 0, 1, c.headers_block(_GOOD)) + frame(FrameType.PING, 0, 0, b"8 bytes!")
        ),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "continuation on another stream",
        lambda c: (
            frame(FrameType.HEADERS, 0, 1, c.headers_block(_GOOD)[:3])
            + frame(FrameType.CONTINUATION, Flag.END_HEADERS, 3, b"\x82")
        ),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "invalid hpack index",
        lambda c: frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\xff\xff\x7f"),
        ("goaway", ErrorCode.COMPRESSION_ERROR),
    ),
    Case(
        "truncated hpack literal",
        lambda c: frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\x00\x0aabc"),
        ("goaway", ErrorCode.COMPRESSION_ERROR),
    ),
    Case(
        "data padding too long",
        lambda c: _open(c) + frame(FrameType.DATA, Flag.PADDED, 1, b"\x09abc"),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "headers padding too long",
        lambda c: frame(
            FrameType.HEADERS, Flag.END_HEADERS | Flag.PADDED, 1, b"\xff" + c.headers_block(_GOOD)
        ),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "rst on an idle stream",
        lambda c: frame(FrameType.RST_STREAM, 0, 7, _u32(8)),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "rst length",
        lambda c: _open(c) + frame(FrameType.RST_STREAM, 0, 1, b"\x00"),
        ("goaway", ErrorCode.FRAME_SIZE_ERROR),
    ),
    Case(
        "push promise from a client",
        lambda c: _open(c) + frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, 1, _u32(2)),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "goaway on a stream",
        lambda c: frame(FrameType.GOAWAY, 0, 1, _u32(0) + _u32(0)),
        ("goaway", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "huge header block",
        lambda c: (
            frame(FrameType.HEADERS, 0, 1, c.headers_block(_GOOD))
            + frame(FrameType.CONTINUATION, 0, 1, b"\x00" * 16_000) * 5
        ),
        ("goaway", ErrorCode.ENHANCE_YOUR_CALM),
    ),
    Case(
        # CVE-2024-27316 class: a header block that never ends. Empty frames add no bytes to the
        # block-size cap, so the control-frame guard must stop them.
        "endless empty continuations",
        lambda c: (
            frame(FrameType.HEADERS, 0, 1, c.headers_block(_GOOD)[:3])
            + frame(FrameType.CONTINUATION, 0, 1, b"") * 10_001
        ),
        ("goaway", ErrorCode.ENHANCE_YOUR_CALM),
    ),
    Case(
        "header block of one-byte continuations past the cap",
        lambda c: (
            frame(FrameType.HEADERS, 0, 1, c.headers_block(_GOOD)[:1])
            + frame(FrameType.CONTINUATION, 0, 1, b"\x00") * 9_999
            + frame(FrameType.CONTINUATION, 0, 1, b"\x00" * 16_000) * 4
        ),
        ("goaway", ErrorCode.ENHANCE_YOUR_CALM),
    ),
    Case(
        # RFC 7541 6.3 / 4.2: 4097, above SETTINGS_HEADER_TABLE_SIZE (4096, we advertise no other).
        "hpack table size update over the setting",
        lambda c: frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\x3f\xe2\x1f" + c.headers_block(_GOOD)),
        ("goaway", ErrorCode.COMPRESSION_ERROR),
    ),
    Case(
        "hpack dynamic index one past an empty table",
        lambda c: frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\xbe"),
        ("goaway", ErrorCode.COMPRESSION_ERROR),
    ),
    Case(
        "hpack huffman string with bad padding",
        lambda c: frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\x00\x81\x00\x81\x00"),
        ("goaway", ErrorCode.COMPRESSION_ERROR),
    ),
    Case(
        # RFC 9113 6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes an open stream's window
        # past 2^31-1 is a connection error.
        "initial window change overflows an open stream",
        lambda c: (
            _open(c)
            + frame(FrameType.WINDOW_UPDATE, 0, 1, _u32(2**31 - 1 - 65_535))
            + settings({Setting.INITIAL_WINDOW_SIZE: 65_536})
        ),
        ("goaway", ErrorCode.FLOW_CONTROL_ERROR),
    ),
    # --- stream errors: RST_STREAM with the code; the connection stays usable
    Case(
        "stream window overflow",
        lambda c: _open(c) + frame(FrameType.WINDOW_UPDATE, 0, 1, _u32(2**31 - 1)),
        ("rst", ErrorCode.FLOW_CONTROL_ERROR),
    ),
    Case(
        "priority on itself",
        lambda c: frame(FrameType.PRIORITY, 0, 1, _u32(1) + b"\x10"),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "priority length",
        lambda c: frame(FrameType.PRIORITY, 0, 1, b"\x00\x00"),
        ("rst", ErrorCode.FRAME_SIZE_ERROR),
    ),
    Case(
        "headers depending on themselves",
        lambda c: frame(
            FrameType.HEADERS, Flag.END_HEADERS | Flag.PRIORITY, 1, _u32(1) + b"\x10" + c.headers_block(_GOOD)
        ),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "upper-case header name",
        lambda c: _headers(c, [*_GOOD, ("X-Upper", "1")]),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "connection header",
        lambda c: _headers(c, [*_GOOD, ("connection", "keep-alive")]),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "te other than trailers",
        lambda c: _headers(c, [*_GOOD[:5], ("te", "gzip")]),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "missing :path",
        lambda c: _headers(c, [h for h in _GOOD if h[0] != ":path"]),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "pseudo-header after a field",
        lambda c: _headers(c, [*_GOOD[:1], ("x-a", "b"), *_GOOD[1:]]),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "unknown pseudo-header",
        lambda c: _headers(c, [*_GOOD[:4], (":status", "200"), *_GOOD[4:]]),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "newline in a value",
        lambda c: _headers(c, [*_GOOD, ("x-a", "b\nc")]),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "stream window update of 0",
        lambda c: _open(c) + frame(FrameType.WINDOW_UPDATE, 0, 1, _u32(0)),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    Case(
        "data after end of stream",
        lambda c: _open(c, end_stream=True) + frame(FrameType.DATA, 0, 1, b"x"),
        ("rst", ErrorCode.STREAM_CLOSED),
    ),
    Case(
        "trailers without end of stream",
        lambda c: _open(c) + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, c.headers_block([("x-t", "1")])),
        ("rst", ErrorCode.PROTOCOL_ERROR),
    ),
    # --- well-formed HTTP/2 that is not a call here: a gRPC answer
    Case(
        "not grpc content-type",
        lambda c: _headers(c, [*_GOOD[:4], ("content-type", "text/plain")]),
        ("status", 13, "415"),
    ),
    Case("GET", lambda c: _headers(c, [(":method", "GET"), *_GOOD[1:]]), ("status", 13, "405")),
    Case("unknown method", lambda c: _headers(c, request_headers("/test.Echo/Nope")), ("status", 12, "200")),
    Case("gzip encoding", lambda c: _open(c, grpc_encoding="gzip"), ("status", 12, "200")),
    Case(
        "compressed message",
        lambda c: _open(c) + frame(FrameType.DATA, 0, 1, grpc_message(b"\x0a\x01x", compressed=True)),
        ("status", 12, "200"),
    ),
    Case("malformed grpc-timeout", lambda c: _open(c, grpc_timeout="soon"), ("status", 13, "200")),
    Case(
        "oversized message prefix",
        lambda c: _open(c) + frame(FrameType.DATA, 0, 1, struct.pack(">BL", 0, MAX_MESSAGE + 1)),
        ("status", 8, "200"),
    ),
    Case(
        "header list over the limit",
        lambda c: _split_headers(
            c.headers_block([*_GOOD, ("x-big", "v" * 9_000), ("x-big2", "w" * 9_000)]), 10_000
        ),
        ("status", 8, "200"),
    ),
    Case(
        "truncated message at end of stream",
        lambda c: _open(c) + frame(FrameType.DATA, Flag.END_STREAM, 1, b"\x00\x00\x00\x00\x09ab"),
        ("status", 13, "200"),
    ),
    # --- tolerated: ignored, the connection goes on
    Case("unknown frame type", lambda c: frame(0xFA, 0xFF, 0, b"whatever"), ("ignored",)),
    Case(
        "priority on an idle stream",
        lambda c: frame(FrameType.PRIORITY, 0, 9, _u32(3) + b"\x10"),
        ("ignored",),
    ),
    Case("unknown setting", lambda c: settings({0x99: 7}), ("ignored",)),
    Case(
        "window update for a closed stream",
        lambda c: _open(c, end_stream=True) + frame(FrameType.WINDOW_UPDATE, 0, 1, _u32(9)),
        ("ignored",),
    ),
    Case(
        "padded headers and data",
        lambda c: (
            frame(
                FrameType.HEADERS,
                Flag.END_HEADERS | Flag.PADDED,
                1,
                b"\x03" + c.headers_block(_GOOD) + b"\x00" * 3,
            )
            + frame(
                FrameType.DATA,
                Flag.PADDED | Flag.END_STREAM,
                1,
                b"\x02" + grpc_message(b"\x0a\x02hi") + b"\x00\x00",
            )
        ),
        ("status", 0, "200"),
    ),
    Case(
        "headers split over continuations",
        lambda c: _split_headers(c.headers_block(_GOOD)),
        ("status", 0, "200"),
    ),
]


async def _answer(client: RawClient, settle: bool) -> Frame | None:
    """The server's answer to what was sent: GOAWAY, a frame on stream 1, or our PING's ACK (the
    server took it and carried on), or None when it closed without a word. With ``settle`` a
    PING ACK is not enough: the answer on stream 1 comes from a handler task, after the ACK."""
    client.ping(b"probe!!!")
    await client.drain()
    while True:
        answer = await client.read_until(
            lambda f: (
                f.type == FrameType.GOAWAY
                or f.stream_id == 1
                or (f.type == FrameType.PING and f.flags & Flag.ACK and f.payload == b"probe!!!")
            )
        )
        if not settle or answer is None or answer.type != FrameType.PING:
            return answer


async def _still_serving(server: ServerUnderTest) -> None:
    async with channel(server) as ch:
        call = echo_stub(ch)(iter([value(b"still here")]))
        assert [r.value async for r in call] == [b"still here"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_frames(server: ServerUnderTest, case: Case) -> None:
    client = await RawClient.connect(server.port, handshake=case.handshake)
    try:
        client.send(case.build(client))
        await client.drain()
        exact = server.transport == "h2"
        answer = await _answer(client, settle=exact and case.expect[0] == "status")
        if exact:
            await _check_exact(client, case, answer)
    finally:
        client.abort()
    await _still_serving(server)


async def _check_exact(client: RawClient, case: Case, answer: Frame | None) -> None:
    kind = case.expect[0]
    assert answer is not None, f"{case.name}: the connection closed without GOAWAY"
    if kind == "goaway":
        assert answer.type == FrameType.GOAWAY, (case.name, answer, client.frames)
        assert answer.error_code == case.expect[1], (
            case.name,
            ErrorCode(answer.error_code).name,
            answer.payload,
        )
    elif kind == "rst":
        assert answer.type == FrameType.RST_STREAM and answer.stream_id == 1, (
            case.name,
            answer,
            client.frames,
        )
        assert answer.error_code == case.expect[1], (case.name, ErrorCode(answer.error_code).name)
    elif kind == "status":
        assert answer.type == FrameType.HEADERS, (case.name, answer)
        headers = client.decode_headers(answer)
        if not answer.flags & Flag.END_STREAM:  # not Trailers-Only: read on to the trailers
            blocks, _, rst = await client.response(1)
            assert rst is None and blocks, (case.name, client.frames)
            headers |= blocks[-1]
        assert headers["grpc-status"] == str(case.expect[1]), (case.name, headers)
        assert headers[":status"] == case.expect[2], (case.name, headers)
        if case.name == "gzip encoding":
            assert headers["grpc-accept-encoding"] == "identity"
    else:
        assert answer.type in (FrameType.PING, FrameType.HEADERS, FrameType.DATA), (
            case.name,
            answer,
            client.frames,
        )
        assert not any(f.type in (FrameType.GOAWAY, FrameType.RST_STREAM) for f in client.frames), (
            client.frames
        )


async def test_streams_past_the_advertised_limit_are_refused() -> None:
    probe = Probe()
    options = TransportOptions(max_concurrent_streams=2)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest("h2", [method], options) as server:
        client = await RawClient.connect(server.port)
        for stream_id in (1, 3, 5):
            client.send_headers(stream_id, request_headers(ECHO))
        await client.drain()
        refused = await client.read_until(lambda f: f.type == FrameType.RST_STREAM)
        assert (
            refused is not None and refused.stream_id == 5 and refused.error_code == ErrorCode.REFUSED_STREAM
        )
        # The two admitted streams work.
        client.send_message(1, b"\x0a\x01a", end_stream=True)
        _, data, rst = await client.response(1)
        assert rst is None and data == [grpc_message(b"\x0a\x01a")]
        client.abort()


async def test_flooding_pings_gets_enhance_your_calm() -> None:
    probe = Probe()
    options = TransportOptions(max_control_frames=100)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest("h2", [method], options) as server:
        client = await RawClient.connect(server.port)
        client.send(frame(FrameType.PING, 0, 0, b"floodfld") * 150)
        await client.drain()
        goaway = await client.read_until(lambda f: f.type == FrameType.GOAWAY, answer_pings=False)
        assert goaway is not None and goaway.error_code == ErrorCode.ENHANCE_YOUR_CALM
        client.abort()


async def test_a_stream_over_its_window_is_reset_with_flow_control_error() -> None:
    """The peer ignores the stream window we advertised (the handler is not reading)."""
    probe = Probe()
    options = TransportOptions(initial_window_size=65_535)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(probe))
    async with ServerUnderTest("h2", [method], options) as server:
        client = await RawClient.connect(server.port)
        client.send_headers(1, request_headers(ECHO))
        client.send_message(1, wrappers_pb2.BytesValue(value=b"hang").SerializeToString())
        await client.drain()
        await wait_until(lambda: probe.received == [b"hang"], "the handler holds its first message")
        chunk = grpc_message(wrappers_pb2.BytesValue(value=b"z" * 16_000).SerializeToString())
        for _ in range(6):  # 6 x ~16 KB > 64 KiB while the handler holds the first message
            client.send_data(1, chunk)
        await client.drain()
        rst = await client.read_until(lambda f: f.type == FrameType.RST_STREAM)
        assert rst is not None and rst.stream_id == 1 and rst.error_code == ErrorCode.FLOW_CONTROL_ERROR
        client.ping(b"alive!!!")
        await client.drain()
        assert await client.read_until(lambda f: f.type == FrameType.PING and f.flags & Flag.ACK) is not None
        client.abort()
    assert probe.cancelled.is_set()


async def test_too_many_connections_get_goaway(transport: str) -> None:
    if transport != "h2":
        pytest.skip("grpc.aio has no connection limit option")

    options = TransportOptions(max_connections=1)
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest("h2", [method], options) as server:
        first = await RawClient.connect(server.port)
        second = await RawClient.connect(server.port)
        goaway = await second.read_until(lambda f: f.type == FrameType.GOAWAY)
        assert (
            goaway is not None
            and goaway.error_code == ErrorCode.ENHANCE_YOUR_CALM
            and goaway.last_stream_id == 0
        )
        assert await second.read_frame() is None  # then closed
        first.ping(b"first ok")
        await first.drain()
        assert await first.read_until(lambda f: f.type == FrameType.PING) is not None
        first.abort()
        second.abort()


def test_cases_cover_every_frame_type() -> None:
    sent_types = set()
    for case in CASES:
        data = case.build(RawClient(None, None))  # type: ignore[arg-type]
        if data.startswith(PREFACE):
            data = data[len(PREFACE) :]
        pos = 0
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos : pos + 3], "big")
            sent_types.add(data[pos + 3])
            pos += 9 + length
    assert set(FrameType) <= sent_types
