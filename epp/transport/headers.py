"""Header blocks: a stateless HPACK encoder for what the server sends, and the checks every request
header block must pass (RFC 9113 8.2-8.3) before gRPC looks at it.

Decoding uses the ``hpack`` library (python-hyper; it keeps the dynamic table and Huffman tables).
Encoding does not need it: the server sends a handful of short headers, so it writes them as
literals that never touch the dynamic table (RFC 7541 6.2.2). Stateless encoding means a header
block can never be written out of order with respect to an encoder table, and costs a few bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import hpack

# Static-table entries the server uses (RFC 7541 appendix A).
_STATIC_FULL = {(b":status", b"200"): 8, (b":status", b"204"): 9, (b":status", b"400"): 12}
_STATIC_NAME = {b":status": 8, b"content-type": 31}

# RFC 9113 8.2.1: lower-case token characters; pseudo-headers start with ':'.
_FIELD_NAME = re.compile(rb"^:?[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]\Z")
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})


def encode_integer(value: int, prefix_bits: int, first_byte_flags: int) -> bytes:
    """HPACK integer (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte_flags | value,))
    out = bytearray((first_byte_flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return encode_integer(len(data), 7, 0) + data  # no Huffman


def encode_header(name: bytes, value: bytes) -> bytes:
    index = _STATIC_FULL.get((name, value))
    if index is not None:
        return bytes((0x80 | index,))
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        return encode_integer(name_index, 4, 0) + _string(value)
    return b"\x00" + _string(name) + _string(value)


def encode_headers(headers: Iterable[tuple[bytes, bytes]], table_size_update: int | None = None) -> bytes:
    """One header block. ``table_size_update`` acknowledges a smaller SETTINGS_HEADER_TABLE_SIZE
    from the peer (RFC 7541 4.2: it must open the first block after the change)."""
    prefix = b"" if table_size_update is None else encode_integer(table_size_update, 5, 0x20)
    return prefix + b"".join(encode_header(name, value) for name, value in headers)


class DecodedBlock:
    """A decoded header block, with room for what the connection derives from it (memoized along
    with the block while the decoder's cache keeps it)."""

    __slots__ = ("derived", "headers")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.derived: object = None


class HeaderDecoder:
    """HPACK decoding with a cache of header blocks that leave the dynamic table untouched.

    A peer often repeats one header block byte for byte: Envoy's ext_proc streams all open with
    the same block (indexed fields plus the :path as a Huffman literal that is never indexed), and
    decoding it in pure Python costs more than a whole message. The result of a block depends only
    on its bytes and the dynamic table; when decoding it did not change the table, the same bytes
    decode to the same list for as long as the table stays unchanged. Any block that does change
    it empties the cache.

    The cache holds at most CACHE_BYTES (block bytes + decoded header list size, RFC 9113 6.5.2):
    a peer sending distinct large blocks that each pass the decode cap would otherwise leave up to
    64 of them (megabytes) behind for the life of the connection (RFC 9113 10.5: a peer must not
    make the server hold state it never accounts for). Blocks over a sixteenth of it are not cached;
    Envoy's repeated blocks are a few hundred bytes.
    """

    _CACHE_ENTRIES = 64
    CACHE_BYTES = 256 * 1024
    _CACHE_ONE = CACHE_BYTES // 16

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self._table = self._decoder.header_table
        self._cache: dict[bytes, DecodedBlock] = {}
        self._cache_bytes = 0

    def decode(self, block: bytes) -> DecodedBlock:
        """Raises hpack's errors (the caller turns them into COMPRESSION_ERROR)."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        entries = self._table.dynamic_entries
        # Hold the first entry itself (not its id): a new entry can then never reuse its address.
        length, first, size = len(entries), entries[0] if entries else None, self._table.maxsize
        decoded = DecodedBlock(self._decoder.decode(block, raw=True))  # type: ignore[arg-type]
        unchanged = (
            len(entries) == length
            and (entries[0] if entries else None) is first
            and self._table.maxsize == size
        )
        if not unchanged:
            self._cache.clear()
            self._cache_bytes = 0
        elif len(block) <= self._CACHE_ONE:
            cost = len(block) + header_list_size(decoded.headers)  # on a miss only
            if cost <= self._CACHE_ONE:
                if len(self._cache) >= self._CACHE_ENTRIES or self._cache_bytes + cost > self.CACHE_BYTES:
                    self._cache.clear()
                    self._cache_bytes = 0
                self._cache[block] = decoded
                self._cache_bytes += cost
        return decoded


class MalformedRequest(Exception):
    """The header block breaks RFC 9113 8.2-8.3: a stream error PROTOCOL_ERROR."""


@dataclass(slots=True)
class RequestHead:
    method: bytes
    scheme: bytes
    path: bytes
    authority: bytes
    # Regular fields in arrival order (names lower-case, pseudo-headers removed).
    fields: list[tuple[bytes, bytes]]

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None


def parse_request(headers: list[tuple[bytes, bytes]]) -> RequestHead:
    """Validate a decoded request header block and split pseudo-headers from fields."""
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if not _FIELD_NAME.match(name):
            raise MalformedRequest(f"invalid header name {name[:64]!r}")
        if _BAD_VALUE.search(value):
            raise MalformedRequest(f"invalid value for header {name.decode()}")
        if name[0] == 0x3A:  # ':'
            if fields:
                raise MalformedRequest("pseudo-header after a regular header")
            if name not in _REQUEST_PSEUDO:
                raise MalformedRequest(f"unknown request pseudo-header {name.decode()}")
            if name in pseudo:
                raise MalformedRequest(f"duplicate pseudo-header {name.decode()}")
            pseudo[name] = value
            continue
        if name in _CONNECTION_SPECIFIC:
            raise MalformedRequest(f"connection-specific header {name.decode()}")
        if name == b"te" and value != b"trailers":
            raise MalformedRequest("te may only be 'trailers'")
        fields.append((name, value))
    method = pseudo.get(b":method")
    scheme = pseudo.get(b":scheme")
    path = pseudo.get(b":path")
    if not method or not scheme or not path:
        raise MalformedRequest("a request needs :method, :scheme and a non-empty :path")
    return RequestHead(method, scheme, path, pseudo.get(b":authority", b""), fields)


def check_trailers(headers: list[tuple[bytes, bytes]]) -> None:
    """Request trailers carry no pseudo-headers (RFC 9113 8.1)."""
    for name, value in headers:
        if not _FIELD_NAME.match(name) or name[0] == 0x3A:
            raise MalformedRequest(f"invalid trailer name {name[:64]!r}")
        if _BAD_VALUE.search(value):
            raise MalformedRequest(f"invalid value for trailer {name.decode()}")


def header_list_size(headers: list[tuple[bytes, bytes]]) -> int:
    """The size SETTINGS_MAX_HEADER_LIST_SIZE limits (RFC 9113 6.5.2: name + value + 32 each)."""
    return sum(len(name) + len(value) + 32 for name, value in headers)
