"""A scripted Director and helpers to drive one ext_proc stream without gRPC or Envoy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf import struct_pb2

from epp.types import Decision, InferenceRequest, Usage


@dataclass
class ScriptedDirector:
    """Answers every request with ``decision`` (or raises ``error``) and records every call."""

    decision: Decision = field(default_factory=lambda: Decision(endpoints=("10.0.0.1:8000",)))
    error: Exception | None = None
    delay: float = 0.0
    is_ready: bool = True
    requests: list[InferenceRequest] = field(default_factory=list)
    response_headers: list[tuple[str, str | None, int]] = field(default_factory=list)
    completions: list[tuple[str, Usage | None, bool]] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)  # handle_response_started, by request id
    called: asyncio.Event = field(default_factory=asyncio.Event)
    # What decides_nowait promises (that handle_request never suspends); with ``delay`` it breaks
    # that promise, which is what the protocol layer's guard is tested with.
    nowait: bool = False

    @property
    def decides_nowait(self) -> bool:
        return self.nowait

    def ready(self) -> bool:
        return self.is_ready

    async def handle_request(self, request: InferenceRequest) -> Decision:
        self.requests.append(request)
        self.called.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.decision

    def handle_response_headers(self, request: InferenceRequest, served: str | None, status: int) -> None:
        self.response_headers.append((request.request_id, served, status))

    def handle_response_started(self, request: InferenceRequest) -> None:
        self.starts.append(request.request_id)

    def handle_response_complete(self, request: InferenceRequest, usage: Usage | None, failed: bool) -> None:
        self.completions.append((request.request_id, usage, failed))


def headers_msg(
    headers: dict[str, str],
    end_of_stream: bool = False,
    mode: str | None = None,
    response: bool = False,
    metadata: dict[str, dict[str, object]] | None = None,
) -> ext_proc.ProcessingRequest:
    http_headers = ext_proc.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
        ),
        end_of_stream=end_of_stream,
    )
    message = (
        ext_proc.ProcessingRequest(response_headers=http_headers)
        if response
        else ext_proc.ProcessingRequest(request_headers=http_headers)
    )
    if mode is not None:
        body_mode = processing_mode_pb2.ProcessingMode.BodySendMode.Value(mode)
        message.protocol_config.request_body_mode = body_mode
        message.protocol_config.response_body_mode = body_mode
    if metadata:
        for namespace, values in metadata.items():
            struct = struct_pb2.Struct()
            struct.update(values)
            message.metadata_context.filter_metadata[namespace].CopyFrom(struct)
    return message


def request_headers(path: str = "/v1/completions", extra: dict[str, str] | None = None, **kw: object):
    base = {":method": "POST", ":path": path, ":authority": "gw", "content-type": "application/json"}
    return headers_msg({**base, **(extra or {})}, **kw)  # type: ignore[arg-type]


def body_msg(data: bytes, end_of_stream: bool = True, response: bool = False) -> ext_proc.ProcessingRequest:
    body = ext_proc.HttpBody(body=data, end_of_stream=end_of_stream)
    if response:
        return ext_proc.ProcessingRequest(response_body=body)
    return ext_proc.ProcessingRequest(request_body=body)


def response_headers(status: int = 200, content_type: str = "application/json", **kw: object):
    return headers_msg({":status": str(status), "content-type": content_type}, response=True, **kw)  # type: ignore[arg-type]


async def feed(messages: Iterable[ext_proc.ProcessingRequest]) -> AsyncIterator[ext_proc.ProcessingRequest]:
    for message in messages:
        yield message


class Collector:
    def __init__(self) -> None:
        self.sent: list[ext_proc.ProcessingResponse] = []

    async def __call__(self, message: ext_proc.ProcessingResponse) -> None:
        self.sent.append(message)

    def kinds(self) -> list[str]:
        return [str(m.WhichOneof("response")) for m in self.sent]


def set_headers(response: ext_proc.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in response.header_mutation.set_headers}
