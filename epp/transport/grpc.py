"""gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md): status codes, the length-prefixed message
framing, ``grpc-timeout`` and the percent-encoding of ``grpc-message``.

Message compression: this transport implements the ``identity`` encoding only. A request that names
another ``grpc-encoding``, or a message with the compressed flag set, ends with UNIMPLEMENTED and a
``grpc-accept-encoding: identity`` header, as the protocol document prescribes. Envoy's gRPC client
and grpcio never compress unless told to.
"""

from __future__ import annotations

import re
import struct
from enum import IntEnum


class StatusCode(IntEnum):
    """Canonical gRPC status codes (grpc/grpc doc/statuscodes.md); same names as ``grpc.StatusCode``."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """Raised by a handler (or by the transport on its behalf) to end the call with ``code``."""

    def __init__(self, code: StatusCode, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


MESSAGE_PREFIX = struct.Struct(">BL")
MESSAGE_PREFIX_SIZE = 5
_COMPRESSED = 0x1


def message_prefix(length: int) -> bytes:
    return MESSAGE_PREFIX.pack(0, length)


class MessageReader:
    """Reassembles length-prefixed messages from DATA payloads of any size and alignment.

    Refuses a message as soon as its prefix shows it is too large or compressed, before buffering
    it. Chunks are kept in a list and joined once per message, so a large message split over many
    frames costs linear time.
    """

    __slots__ = ("_chunks", "_expect", "_have", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._chunks: list[bytes] = []
        self._have = 0
        self._expect = 0  # 0: prefix not read yet; else 5 + length of the message in progress

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held here."""
        return self._have

    def feed(self, data: bytes) -> list[bytes]:
        if not self._have and len(data) >= MESSAGE_PREFIX_SIZE:
            flags, length = MESSAGE_PREFIX.unpack_from(data)
            if flags == 0 and length + MESSAGE_PREFIX_SIZE == len(data) and length <= self.max_size:
                return [data[MESSAGE_PREFIX_SIZE:]]  # the common case: one DATA frame, one message
        if data:
            self._chunks.append(data)
            self._have += len(data)
        out: list[bytes] = []
        while True:
            if not self._expect:
                if self._have < MESSAGE_PREFIX_SIZE:
                    return out
                if len(self._chunks[0]) < MESSAGE_PREFIX_SIZE:
                    self._chunks = [b"".join(self._chunks)]
                flags, length = MESSAGE_PREFIX.unpack_from(self._chunks[0])
                self._check(flags, length)
                self._expect = MESSAGE_PREFIX_SIZE + length
            if self._have < self._expect:
                return out
            joined = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            out.append(joined[MESSAGE_PREFIX_SIZE : self._expect])
            rest = joined[self._expect :]
            self._chunks = [rest] if rest else []
            self._have = len(rest)
            self._expect = 0

    def _check(self, flags: int, length: int) -> None:
        if flags & _COMPRESSED:
            raise RpcError(
                StatusCode.UNIMPLEMENTED, "compressed messages are not supported (identity encoding only)"
            )
        if flags:
            raise RpcError(StatusCode.INTERNAL, f"invalid message flags 0x{flags:02x}")
        if length > self.max_size:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"received message larger than max ({length} vs. {self.max_size})",
            )


_TIMEOUT = re.compile(rb"^([0-9]{1,8})([HMSmun])\Z")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float:
    """``grpc-timeout`` in seconds; ValueError when malformed."""
    match = _TIMEOUT.match(value)
    if match is None:
        raise ValueError(f"malformed grpc-timeout {value[:32]!r}")
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def encode_timeout(seconds: float) -> bytes:
    """The shortest exact-or-rounded-up ``grpc-timeout`` for ``seconds`` (used by tests and clients)."""
    for unit, scale in ((b"n", 1e-9), (b"u", 1e-6), (b"m", 1e-3), (b"S", 1.0), (b"M", 60.0), (b"H", 3600.0)):
        count = -(-seconds // scale)
        if count < 100_000_000:
            return b"%d%s" % (max(0, int(count)), unit)
    return b"99999999H"


def percent_encode(message: str) -> bytes:
    """``grpc-message``: UTF-8, with bytes outside 0x20-0x7E and '%' written as %XX."""
    raw = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def percent_decode(value: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(value):
        b = value[i]
        if b == 0x25 and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)
