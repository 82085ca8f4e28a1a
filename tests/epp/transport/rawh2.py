"""A raw HTTP/2 client for the suite: writes any bytes or frames (valid or not) and reads the
server's frames one by one, so tests can check exactly what a transport answers.

Header blocks are encoded and decoded with the ``hpack`` library (independent of the transport's
own stateless encoder).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from dataclasses import dataclass

import hpack

from epp.transport.frames import PREFACE, ErrorCode, Flag, FrameType, Setting

from .support import HANG_GUARD

_HEADER = struct.Struct(">BHBBL")


@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> int:
        """RST_STREAM's code, or GOAWAY's."""
        if self.type == FrameType.RST_STREAM:
            return int(struct.unpack(">L", self.payload[:4])[0])
        if self.type == FrameType.GOAWAY:
            return int(struct.unpack(">L", self.payload[4:8])[0])
        raise ValueError(f"frame type {self.type} has no error code")

    @property
    def last_stream_id(self) -> int:
        assert self.type == FrameType.GOAWAY
        return int(struct.unpack(">L", self.payload[:4])[0]) & 0x7FFFFFFF

    def __repr__(self) -> str:
        try:
            kind = FrameType(self.type).name
        except ValueError:
            kind = f"type {self.type}"
        return f"<{kind} flags=0x{self.flags:x} stream={self.stream_id} {self.payload[:24]!r}>"


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 16, n & 0xFFFF, frame_type, flags, stream_id) + payload


def settings(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    payload = b"".join(struct.pack(">HL", k, v) for k, v in (values or {}).items())
    return frame(FrameType.SETTINGS, Flag.ACK if ack else 0, 0, payload)


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BL", 1 if compressed else 0, len(payload)) + payload


def request_headers(path: str, authority: str = "test", **extra: str) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return headers + [(k.replace("_", "-"), v) for k, v in extra.items()]


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []  # everything read so far

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        handshake: bool = True,
        client_settings: dict[int, int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        read_buffer: int | None = None,
    ) -> RawClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=ssl_context,
            server_hostname="localhost" if ssl_context else None,
            limit=2**24,
        )
        if read_buffer is not None:
            import socket

            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, read_buffer)
        client = cls(reader, writer)
        if handshake:
            client.send(PREFACE + settings(client_settings))
            await client.drain()
            # The server's SETTINGS first (RFC 9113 3.4); acknowledge it.
            first = await client.read_frame()
            assert first is not None and first.type == FrameType.SETTINGS and not first.flags & Flag.ACK, (
                first
            )
            client.send(settings(ack=True))
        return client

    # ------------------------------------------------------------------ writing

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def headers_block(self, headers: list[tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(headers))

    def send_headers(
        self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool = False, flags: int = 0
    ) -> None:
        flags |= Flag.END_HEADERS | (Flag.END_STREAM if end_stream else 0)
        self.send(frame(FrameType.HEADERS, flags, stream_id, self.headers_block(headers)))

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.send(frame(FrameType.DATA, Flag.END_STREAM if end_stream else 0, stream_id, data))

    def send_message(self, stream_id: int, payload: bytes, end_stream: bool = False) -> None:
        self.send_data(stream_id, grpc_message(payload), end_stream)

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send(frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment)))

    def rst_stream(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        self.send(frame(FrameType.RST_STREAM, 0, stream_id, struct.pack(">L", code)))

    def ping(self, payload: bytes = b"12345678", ack: bool = False) -> None:
        self.send(frame(FrameType.PING, Flag.ACK if ack else 0, 0, payload))

    def goaway(self, last_stream_id: int = 0, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        self.send(frame(FrameType.GOAWAY, 0, 0, struct.pack(">LL", last_stream_id, code)))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()

    # ------------------------------------------------------------------ reading

    async def read_frame(self) -> Frame | None:
        """The next frame, or None at end of stream (or a reset connection). Answers PINGs as a
        well-behaved client would, but records them."""
        try:
            async with asyncio.timeout(HANG_GUARD):
                head = await self.reader.readexactly(9)
                high, low, frame_type, flags, stream_id = _HEADER.unpack(head)
                payload = await self.reader.readexactly((high << 16) | low)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        received = Frame(frame_type, flags, stream_id & 0x7FFFFFFF, payload)
        self.frames.append(received)
        return received

    async def read_until(self, predicate: object, answer_pings: bool = True) -> Frame | None:
        """Read frames until one matches ``predicate`` (a callable on Frame); None on close."""
        assert callable(predicate)
        while True:
            received = await self.read_frame()
            if received is None:
                return None
            if answer_pings and received.type == FrameType.PING and not received.flags & Flag.ACK:
                self.ping(received.payload, ack=True)
            if predicate(received):
                return received

    async def read_to_end(self) -> list[Frame]:
        """Everything until the server closes the connection."""
        out = []
        while (received := await self.read_frame()) is not None:
            out.append(received)
        return out

    def decode_headers(self, received: Frame) -> dict[str, str]:
        """Decode a HEADERS frame's block (no padding/priority: the servers under test send none)."""
        assert received.type == FrameType.HEADERS and received.flags & Flag.END_HEADERS, received
        return {str(k): str(v) for k, v in self.decoder.decode(received.payload)}

    async def response(self, stream_id: int) -> tuple[list[dict[str, str]], list[bytes], Frame | None]:
        """(header blocks, DATA payloads, RST_STREAM if any) of one stream, until it ends."""
        blocks: list[dict[str, str]] = []
        data: list[bytes] = []
        while True:
            received = await self.read_until(lambda f: f.stream_id in (stream_id, 0))
            if received is None:
                return blocks, data, None
            if received.stream_id == 0:
                if received.type == FrameType.GOAWAY:
                    return blocks, data, received
                continue
            if received.type == FrameType.HEADERS:
                blocks.append(self.decode_headers(received))
            elif received.type == FrameType.DATA:
                data.append(received.payload)
            elif received.type == FrameType.RST_STREAM:
                return blocks, data, received
            if received.flags & Flag.END_STREAM:
                return blocks, data, None


__all__ = [
    "ErrorCode",
    "Flag",
    "Frame",
    "FrameType",
    "RawClient",
    "Setting",
    "frame",
    "grpc_message",
    "settings",
]
