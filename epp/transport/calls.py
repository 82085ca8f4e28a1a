"""Admission of a request header block as a gRPC call (grpc/grpc doc/PROTOCOL-HTTP2.md).

A pure function of the decoded headers, the served methods and the header-list limit, so the
connection memoizes its result with the decoded block (Envoy opens every ext_proc stream with the
same block). Three outcomes: a call to start, a well-formed HTTP/2 request that is not a call here
(answered Trailers-Only, with an HTTP status where the protocol document asks for one), or a
malformed request (a stream error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from epp.transport.grpc import StatusCode, parse_timeout
from epp.transport.headers import MalformedRequest, header_list_size, parse_request
from epp.transport.methods import Method

GRPC_CONTENT_TYPE = b"application/grpc"


@dataclass(frozen=True, slots=True)
class Call:
    method: Method
    timeout: float | None  # seconds, from grpc-timeout


@dataclass(frozen=True, slots=True)
class Rejection:
    """Answered Trailers-Only: ``http_status`` (200 unless the request is not gRPC at all), the
    gRPC status and message, and extra headers."""

    http_status: bytes
    code: StatusCode
    message: str
    extra: tuple[tuple[bytes, bytes], ...] = ()


def plan_call(
    headers: list[tuple[bytes, bytes]], methods: Mapping[bytes, Method], max_header_list_size: int
) -> Call | Rejection | MalformedRequest:
    try:
        head = parse_request(headers)
    except MalformedRequest as error:
        return error
    if head.method != b"POST":
        return Rejection(b"405", StatusCode.INTERNAL, "gRPC requires POST")
    # Not gRPC at all: 415, so that a plain HTTP client does not read a 200 as success.
    content_type = head.get(b"content-type") or b""
    if not content_type.startswith(GRPC_CONTENT_TYPE):
        shown = content_type.decode(errors="replace")
        return Rejection(b"415", StatusCode.INTERNAL, f"content-type {shown!r} is not gRPC")
    subtype = content_type[len(GRPC_CONTENT_TYPE) :]
    if subtype not in (b"", b"+proto") and not subtype.startswith((b";", b"+proto;")):
        return Rejection(b"200", StatusCode.UNIMPLEMENTED, "only protobuf messages are supported")
    size = header_list_size(headers)
    if size > max_header_list_size:
        message = f"header list of {size} bytes exceeds {max_header_list_size}"
        return Rejection(b"200", StatusCode.RESOURCE_EXHAUSTED, message)
    method = methods.get(head.path)
    if method is None:
        return Rejection(
            b"200", StatusCode.UNIMPLEMENTED, f"unknown method {head.path.decode(errors='replace')}"
        )
    encoding = head.get(b"grpc-encoding")
    if encoding is not None and encoding != b"identity":
        # Identity only; say which encodings this server accepts.
        message = f"grpc-encoding {encoding.decode(errors='replace')} is not supported"
        return Rejection(b"200", StatusCode.UNIMPLEMENTED, message, ((b"grpc-accept-encoding", b"identity"),))
    timeout_header = head.get(b"grpc-timeout")
    timeout = None
    if timeout_header is not None:
        try:
            timeout = parse_timeout(timeout_header)
        except ValueError as error:
            return Rejection(b"200", StatusCode.INTERNAL, str(error))
    return Call(method, timeout)
