"""The answer builders fill one message in place (cheaper than nesting constructors, see
``epp/server/messages.py``); each must produce exactly the message the nested constructors describe,
including the presence of empty sub-messages, which Envoy reads (an absent ``header_mutation`` or
``streamed_response`` is a different answer)."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from epp.server import messages
from epp.server.protocol import BODY_CHUNK_BYTES, DESTINATION_ENDPOINT, LB_METADATA_NAMESPACE

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def nested_mutation(set_headers: dict[str, str], remove: list[str]) -> ext_proc.HeaderMutation:
    return ext_proc.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
            )
            for key, value in set_headers.items()
        ],
        remove_headers=sorted(remove),
    )


def nested_destination(destination: str) -> struct_pb2.Struct:
    return struct_pb2.Struct(
        fields={
            LB_METADATA_NAMESPACE: struct_pb2.Value(
                struct_value=struct_pb2.Struct(
                    fields={DESTINATION_ENDPOINT: struct_pb2.Value(string_value=destination)}
                )
            )
        }
    )


def nested_streamed(chunk: bytes, end_of_stream: bool) -> ext_proc.BodyResponse:
    return ext_proc.BodyResponse(
        response=ext_proc.CommonResponse(
            body_mutation=ext_proc.BodyMutation(
                streamed_response=ext_proc.StreamedBodyResponse(body=chunk, end_of_stream=end_of_stream)
            )
        )
    )


def same(built: Message, expected: Message) -> None:
    assert built == expected
    # Byte-equal too: an empty but present sub-message is on the wire (tag and zero length).
    assert built.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


SETS = {"x-gateway-destination-endpoint": "10.0.0.1:8000", "content-length": "42"}


@pytest.mark.parametrize(
    ("set_headers", "remove"), [({}, []), (SETS, []), ({}, ["b", "a"]), (SETS, ["b", "a"])]
)
def test_header_mutation(set_headers: dict[str, str], remove: list[str]) -> None:
    same(messages.header_mutation(set_headers, remove), nested_mutation(set_headers, remove))


def test_destination_metadata() -> None:
    same(messages.destination_metadata("10.0.0.1:8000"), nested_destination("10.0.0.1:8000"))


@pytest.mark.parametrize("remove", [[], ["content-length"]])
def test_continue_request_headers_keeps_an_empty_mutation(remove: list[str]) -> None:
    built = messages.continue_request_headers(remove)
    same(
        built,
        ext_proc.ProcessingResponse(
            request_headers=ext_proc.HeadersResponse(
                response=ext_proc.CommonResponse(header_mutation=nested_mutation({}, remove))
            )
        ),
    )
    assert built.request_headers.response.HasField("header_mutation")


def test_routed_request_headers() -> None:
    same(
        messages.routed_request_headers(SETS, ["content-length"], "10.0.0.1:8000"),
        ext_proc.ProcessingResponse(
            request_headers=ext_proc.HeadersResponse(
                response=ext_proc.CommonResponse(
                    header_mutation=nested_mutation(SETS, ["content-length"]), clear_route_cache=True
                )
            ),
            dynamic_metadata=nested_destination("10.0.0.1:8000"),
        ),
    )


@pytest.mark.parametrize("new_body", [None, b"", b'{"model":"m"}'])
def test_routed_request_body(new_body: bytes | None) -> None:
    common = ext_proc.CommonResponse(header_mutation=nested_mutation(SETS, []), clear_route_cache=True)
    if new_body is not None:
        common.body_mutation.body = new_body
    same(
        messages.routed_request_body(SETS, [], "10.0.0.1:8000", new_body),
        ext_proc.ProcessingResponse(
            request_body=ext_proc.BodyResponse(response=common),
            dynamic_metadata=nested_destination("10.0.0.1:8000"),
        ),
    )


@pytest.mark.parametrize("size", [0, 1, BODY_CHUNK_BYTES, BODY_CHUNK_BYTES + 1, 2 * BODY_CHUNK_BYTES + 5])
def test_streamed_request_body_chunks(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    built = list(messages.streamed_request_body(body))
    pieces = [body[i : i + BODY_CHUNK_BYTES] for i in range(0, len(body), BODY_CHUNK_BYTES)] or [b""]
    assert len(built) == len(pieces)
    for i, (answer, piece) in enumerate(zip(built, pieces, strict=True)):
        same(answer, ext_proc.ProcessingResponse(request_body=nested_streamed(piece, i == len(pieces) - 1)))


@pytest.mark.parametrize("end_of_stream", [False, True])
@pytest.mark.parametrize("body", [b"", b"data: {}\n\n"])
def test_streamed_response_body_single_chunk_is_present_even_when_empty(
    body: bytes, end_of_stream: bool
) -> None:
    (built,) = messages.streamed_response_body(body, end_of_stream)
    same(built, ext_proc.ProcessingResponse(response_body=nested_streamed(body, end_of_stream)))
    assert built.response_body.response.body_mutation.HasField("streamed_response")


@pytest.mark.parametrize("end_of_stream", [False, True])
def test_streamed_response_body_in_chunks(end_of_stream: bool) -> None:
    body = b"x" * (BODY_CHUNK_BYTES + 3)
    built = list(messages.streamed_response_body(body, end_of_stream))
    same(built[0], ext_proc.ProcessingResponse(response_body=nested_streamed(body[:BODY_CHUNK_BYTES], False)))
    same(
        built[1],
        ext_proc.ProcessingResponse(response_body=nested_streamed(body[BODY_CHUNK_BYTES:], end_of_stream)),
    )
    (whole,) = messages.streamed_response_body(body, end_of_stream, chunked=False)
    same(whole, ext_proc.ProcessingResponse(response_body=nested_streamed(body, end_of_stream)))


@pytest.mark.parametrize("new_body", [None, b"", b"{}"])
def test_replaced_response_body(new_body: bytes | None) -> None:
    common = ext_proc.CommonResponse()
    if new_body is not None:
        common.body_mutation.body = new_body
    built = messages.replaced_response_body(new_body)
    same(built, ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse(response=common)))
    assert built.response_body.HasField("response")


@pytest.mark.parametrize("remove", [[], ["x-a", "x-b"]])
def test_continue_response_headers(remove: list[str]) -> None:
    expected = ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse())
    if remove:
        expected.response_headers.response.header_mutation.CopyFrom(nested_mutation({}, remove))
    same(messages.continue_response_headers(remove), expected)


@pytest.mark.parametrize(
    ("status", "reason"), [(400, None), (404, None), (429, "rejected-saturated"), (503, None)]
)
def test_an_error_answer_has_openais_error_object(status: int, reason: str | None) -> None:
    """message, type, param and code, as OpenAI and vLLM answer (param null: no field is named);
    the param key was missing."""
    answer = messages.immediate_error(status, "why", reason).immediate_response
    error = json.loads(answer.body)["error"]
    expected = {"message", "type", "param", "code"} | ({"reason"} if reason else set())
    assert set(error) == expected and error["param"] is None and error["code"] == status
