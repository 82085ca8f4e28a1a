"""The transport's pure pieces: frame encoding, the stateless HPACK encoder, the header-block
cache, request header rules, gRPC message framing, grpc-timeout, percent-encoding, options."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.transport import TransportOptions
from epp.transport.frames import (
    FRAME_HEADER,
    ErrorCode,
    FrameType,
    goaway,
    rst_stream,
    settings_frame,
    window_update,
)
from epp.transport.grpc import (
    MessageReader,
    RpcError,
    StatusCode,
    encode_timeout,
    message_prefix,
    parse_timeout,
    percent_decode,
    percent_encode,
)
from epp.transport.headers import HeaderDecoder, MalformedRequest, encode_headers, parse_request

# Same examples on every run: the suite must not depend on the luck of the draw.
_DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=100)

_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":path", b"/a.B/C"),
    (b":authority", b"epp"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def test_frame_header_round_trip() -> None:
    data = window_update(7, 1234)
    high, low, frame_type, flags, stream_id = FRAME_HEADER.unpack_from(data)
    assert ((high << 16) | low, frame_type, flags, stream_id) == (4, FrameType.WINDOW_UPDATE, 0, 7)
    assert rst_stream(3, ErrorCode.CANCEL)[9:] == b"\x00\x00\x00\x08"
    assert goaway(5, ErrorCode.NO_ERROR, b"bye")[9:] == b"\x00\x00\x00\x05\x00\x00\x00\x00bye"
    assert len(settings_frame({})) == 9


_HEADER_NAMES = st.sampled_from(
    [b":status", b"content-type", b"grpc-status", b"grpc-message", b"x-long-" + b"n" * 200]
)
_HEADER_VALUES = st.binary(max_size=300).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))


@_DETERMINISTIC
@given(
    st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=8),
    st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_the_stateless_encoder_decodes_with_hpack(
    headers: list[tuple[bytes, bytes]], table_size: int | None
) -> None:
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 65_536
    assert decoder.decode(encode_headers(headers, table_size), raw=True) == headers
    # Nothing was added to the peer's dynamic table: the next block decodes the same.
    assert decoder.decode(encode_headers(headers), raw=True) == headers
    assert not decoder.header_table.dynamic_entries


def test_header_cache_hits_only_while_the_table_is_unchanged() -> None:
    encoder = hpack.Encoder()
    decoder = HeaderDecoder(65_536)
    first = bytes(encoder.encode(_REQUEST))  # literals that insert into the table
    second = bytes(encoder.encode(_REQUEST))  # the same headers, now all indexed
    assert first != second
    assert decoder.decode(first).headers == _REQUEST
    one, two = decoder.decode(second), decoder.decode(second)
    assert one is two and one.headers == _REQUEST  # cached: the block did not change the table
    # A block that inserts an entry empties the cache; the indexed block still decodes right.
    changing = bytes(encoder.encode([*_REQUEST, (b"x-new", b"1")]))
    assert decoder.decode(changing).headers == [*_REQUEST, (b"x-new", b"1")]
    again = bytes(encoder.encode(_REQUEST))
    assert decoder.decode(again).headers == _REQUEST
    assert decoder.decode(again) is not one


@_DETERMINISTIC
@given(
    st.lists(st.sampled_from([_REQUEST, [(b"a", b"1")], [(b"a", b"2"), (b"b", b"x" * 3000)]]), max_size=12)
)
def test_header_cache_agrees_with_plain_decoding(lists: list[list[tuple[bytes, bytes]]]) -> None:
    encoder = hpack.Encoder()
    cached, plain = HeaderDecoder(65_536), hpack.Decoder(65_536)
    for headers in lists:
        block = bytes(encoder.encode(headers))
        assert cached.decode(block).headers == plain.decode(block, raw=True) == headers


def test_parse_request_splits_pseudo_headers() -> None:
    head = parse_request([*_REQUEST, (b"grpc-timeout", b"5S")])
    assert (head.method, head.scheme, head.path, head.authority) == (b"POST", b"https", b"/a.B/C", b"epp")
    assert head.get(b"grpc-timeout") == b"5S" and head.get(b"missing") is None


@pytest.mark.parametrize(
    "headers",
    [
        [*_REQUEST, (b"Bad", b"x")],
        [*_REQUEST, (b"x", b" leading space")],
        [*_REQUEST, (b"x", b"nul\x00")],
        [*_REQUEST, (b"keep-alive", b"1")],
        [*_REQUEST, (b":path", b"/again")],
        [(b"x-a", b"1"), *_REQUEST],
        [h for h in _REQUEST if h[0] != b":scheme"],
        [*_REQUEST[:2], (b":path", b""), *_REQUEST[3:]],
    ],
)
def test_parse_request_rejects_malformed_requests(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(headers)


def _framed(payloads: list[bytes]) -> bytes:
    return b"".join(message_prefix(len(p)) + p for p in payloads)


@_DETERMINISTIC
@given(st.lists(st.binary(max_size=200), max_size=6), st.lists(st.integers(1, 50), max_size=20))
def test_message_reader_reassembles_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    data = _framed(payloads)
    reader = MessageReader(1_000)
    out: list[bytes] = []
    pos = 0
    for cut in cuts:
        out += reader.feed(data[pos : pos + cut])
        pos += cut
    out += reader.feed(data[pos:])
    assert out == payloads and reader.buffered == 0


def test_message_reader_refuses_before_buffering() -> None:
    with pytest.raises(RpcError) as too_big:
        MessageReader(10).feed(message_prefix(11))
    assert too_big.value.code is StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(RpcError) as compressed:
        MessageReader(10).feed(b"\x01\x00\x00\x00\x01x")
    assert compressed.value.code is StatusCode.UNIMPLEMENTED
    with pytest.raises(RpcError) as flags:
        MessageReader(10).feed(b"\x80\x00\x00\x00\x01x")
    assert flags.value.code is StatusCode.INTERNAL


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"250m", 0.25),
        (b"7u", 7e-6),
        (b"99999999n", 0.099999999),
    ],
)
def test_parse_timeout(header: bytes, seconds: float) -> None:
    assert parse_timeout(header) == pytest.approx(seconds)


@pytest.mark.parametrize("header", [b"", b"5", b"S", b"123456789S", b"-1S", b"1.5S", b"1s", b"1 S"])
def test_parse_timeout_rejects(header: bytes) -> None:
    with pytest.raises(ValueError):
        parse_timeout(header)


@_DETERMINISTIC
@given(st.floats(min_value=1e-9, max_value=1e6))
def test_encoded_timeouts_parse_back_no_shorter(seconds: float) -> None:
    parsed = parse_timeout(encode_timeout(seconds))
    assert parsed >= seconds * (1 - 1e-12)


@_DETERMINISTIC
@given(st.text(max_size=100))
def test_percent_encoding_round_trips(message: str) -> None:
    encoded = percent_encode(message)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    assert percent_decode(encoded) == message.encode("utf-8", "replace").decode("utf-8", "replace")


def test_percent_encoding_keeps_plain_text() -> None:
    assert percent_encode("no such method") == b"no such method"
    assert percent_encode("100%") == b"100%25"
    assert percent_encode("é\n") == b"%C3%A9%0A"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent_streams", 0),
        ("initial_window_size", 1_000),
        ("connection_window_size", 2**31),
        ("max_frame_size", 1_000),
        ("keepalive_time", 0.0),
        ("max_buffered_bytes", 1),
    ],
)
def test_options_name_the_bad_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TransportOptions(**{field: value})  # type: ignore[arg-type]
