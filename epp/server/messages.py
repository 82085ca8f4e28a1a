"""Builders for the ext_proc ``ProcessingResponse`` messages the EPP sends.

Pure functions from plain values to protobuf, so the state machine reads as protocol steps and the
exact wire shape is testable on its own.

They fill one new message in place (``response.request_body.response.body_mutation...``) rather
than nesting constructors: upb copies every sub-message passed to a constructor. One request's
answers in FULL_DUPLEX_STREAMED mode, built and serialized, cost 25-51 µs of CPU nested and 11-19 µs
filled in place (timeit, interleaved, 2-core machine at load 2.8); tests/epp/server/test_messages.py
checks each builder against the nested form, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from epp.server.protocol import BODY_CHUNK_BYTES, DESTINATION_ENDPOINT, DROPPED_REASON, LB_METADATA_NAMESPACE

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> ext_proc.HeaderMutation:
    """Headers to set (always overwriting a client-sent value) and headers to remove."""
    mutation = ext_proc.HeaderMutation()
    _fill_mutation(mutation, set_headers, remove)
    return mutation


def _fill_mutation(
    mutation: ext_proc.HeaderMutation, set_headers: Mapping[str, str] | None, remove: Iterable[str]
) -> None:
    mutation.SetInParent()  # present even when empty, as it always was
    if set_headers:
        add = mutation.set_headers.add
        for key, value in set_headers.items():
            option = add()
            option.header.key = key
            option.header.raw_value = value.encode()
            option.append_action = _OVERWRITE
    if remove:
        mutation.remove_headers.extend(sorted(remove))


def destination_metadata(destination: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    _fill_destination(metadata, destination)
    return metadata


def _fill_destination(metadata: struct_pb2.Struct, destination: str) -> None:
    namespace = metadata.fields[LB_METADATA_NAMESPACE].struct_value
    namespace.fields[DESTINATION_ENDPOINT].string_value = destination


def continue_request_headers(remove: Iterable[str] = ()) -> ext_proc.ProcessingResponse:
    """Let the request headers through unchanged except for ``remove`` (BUFFERED mode, first answer)."""
    response = ext_proc.ProcessingResponse()
    _fill_mutation(response.request_headers.response.header_mutation, None, remove)
    return response


def routed_request_headers(
    set_headers: Mapping[str, str], remove: Iterable[str], destination: str
) -> ext_proc.ProcessingResponse:
    """The deferred header answer of FULL_DUPLEX_STREAMED mode: where to go, and a fresh route match."""
    response = ext_proc.ProcessingResponse()
    common = response.request_headers.response
    _fill_mutation(common.header_mutation, set_headers, remove)
    common.clear_route_cache = True
    _fill_destination(response.dynamic_metadata, destination)
    return response


def routed_request_body(
    set_headers: Mapping[str, str], remove: Iterable[str], destination: str, new_body: bytes | None
) -> ext_proc.ProcessingResponse:
    """BUFFERED mode: the routing headers ride on the body answer (Envoy applies them before host
    selection); the body is replaced only when the decision rewrote it."""
    response = ext_proc.ProcessingResponse()
    common = response.request_body.response
    _fill_mutation(common.header_mutation, set_headers, remove)
    common.clear_route_cache = True
    if new_body is not None:
        common.body_mutation.body = new_body
    _fill_destination(response.dynamic_metadata, destination)
    return response


def streamed_request_body(body: bytes) -> Iterator[ext_proc.ProcessingResponse]:
    """The whole request body in chunks, ``end_of_stream`` on the last (an empty body: one empty chunk)."""
    for chunk, last in _chunks(body):
        response = ext_proc.ProcessingResponse()
        _fill_streamed(response.request_body, chunk, last)
        yield response


def streamed_response_body(
    body: bytes, end_of_stream: bool, chunked: bool = True
) -> Iterator[ext_proc.ProcessingResponse]:
    if not chunked or len(body) <= BODY_CHUNK_BYTES:
        response = ext_proc.ProcessingResponse()
        _fill_streamed(response.response_body, body, end_of_stream)
        yield response
        return
    for chunk, last in _chunks(body):
        response = ext_proc.ProcessingResponse()
        _fill_streamed(response.response_body, chunk, last and end_of_stream)
        yield response


def _fill_streamed(answer: ext_proc.BodyResponse, chunk: bytes, end_of_stream: bool) -> None:
    streamed = answer.response.body_mutation.streamed_response
    streamed.body = chunk
    streamed.end_of_stream = end_of_stream
    streamed.SetInParent()  # present even for an empty last chunk (body b"", end_of_stream False)


def _chunks(body: bytes) -> Iterator[tuple[bytes, bool]]:
    if not body:
        yield b"", True
        return
    for start in range(0, len(body), BODY_CHUNK_BYTES):
        end = start + BODY_CHUNK_BYTES
        yield body[start:end], end >= len(body)


def replaced_response_body(new_body: bytes | None) -> ext_proc.ProcessingResponse:
    """BUFFERED response mode: keep the body (None) or replace it."""
    response = ext_proc.ProcessingResponse()
    common = response.response_body.response
    common.SetInParent()
    if new_body is not None:
        common.body_mutation.body = new_body
    return response


def continue_response_headers(
    remove: Iterable[str] = (), set_headers: Mapping[str, str] | None = None
) -> ext_proc.ProcessingResponse:
    if not remove and not set_headers:
        return _CONTINUE_RESPONSE_HEADERS
    response = ext_proc.ProcessingResponse()
    _fill_mutation(response.response_headers.response.header_mutation, set_headers, remove)
    return response


def request_trailers_done() -> ext_proc.ProcessingResponse:
    return _REQUEST_TRAILERS_DONE


def response_trailers_done() -> ext_proc.ProcessingResponse:
    return _RESPONSE_TRAILERS_DONE


# Answers without content, built once (hot path; grpc only serializes them, nothing mutates them).
_CONTINUE_RESPONSE_HEADERS = ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse())
_REQUEST_TRAILERS_DONE = ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())
_RESPONSE_TRAILERS_DONE = ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())


def immediate_error(status: int, message: str, reason: str | None = None) -> ext_proc.ProcessingResponse:
    """An HTTP error answered by the proxy on the EPP's behalf, with an OpenAI-style JSON body."""
    headers = {"content-type": "application/json"}
    if reason:
        headers[DROPPED_REASON] = reason
    # OpenAI's error object (vLLM's too): message, type, param and code; no single field is blamed.
    payload = {"error": {"message": message, "type": _error_type(status), "param": None, "code": status}}
    if reason:
        payload["error"]["reason"] = reason
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=_status_code(status)),
            headers=header_mutation(headers),
            body=json.dumps(payload).encode(),
            # Envoy copies details into response-code details, which must not contain whitespace.
            details=f"epp_rejected_{status}_{reason or 'error'}".replace(" ", "_"),
        )
    )


def _status_code(status: int) -> http_status_pb2.StatusCode.ValueType:
    # StatusCode is a closed enum of the registered codes; anything else is reported as a 500.
    if status in http_status_pb2.StatusCode.values():
        return http_status_pb2.StatusCode.ValueType(status)
    return http_status_pb2.StatusCode.InternalServerError


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status == 404:
        return "not_found_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "server_error"
