"""CPU per request of the EPP's protocol layer alone: ``ExtProcStream`` and its metrics, in process,
without a transport or sockets (issue 16: what is left of the EPP's cost once the transport is
cheap).

Each request is the message sequence Envoy sends in FULL_DUPLEX_STREAMED mode (request headers
with the protocol configuration, one body chunk, trailers, response headers, one JSON body chunk
with ``usage``, trailers), parsed from bytes as a transport receives them; every answer is
serialized as a transport sends it. The Director is fixed (one endpoint, no scheduling) unless
``--director default``, which runs the real scheduler with llm-d's default profile over 8 endpoints
with fresh metrics.

    python -m benchmarks.stream_cpu                     # CPU µs per request and per message
    python -m benchmarks.stream_cpu --profile 20        # cProfile: the 20 costliest functions
    python -m benchmarks.stream_cpu --streamed 16       # an SSE answer of 16 chunks instead

The figure is ``time.process_time`` over many requests with the GC as the EPP runs it (frozen
start-up objects); compare runs on the same machine and load only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from prometheus_client import CollectorRegistry

from epp.server import ServerMetrics
from epp.server.stream import ActiveRequestIds, BufferBudget, ExtProcStream, StreamSettings
from epp.types import Decision, InferenceRequest, Usage

MODEL = "tiny"
REQUEST = json.dumps(
    {"model": MODEL, "prompt": "Say something short about gateways.", "max_tokens": 4}
).encode()
# What Envoy forwards for an HTTP/1.1 client POST through kgateway's filter chain (as seen on the wire).
REQUEST_HEADERS = {
    ":authority": "127.0.0.1:10000",
    ":path": "/v1/completions",
    ":method": "POST",
    ":scheme": "http",
    "user-agent": "Python/3.11 aiohttp/3.10",
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "content-type": "application/json",
    "content-length": str(len(REQUEST)),
    "x-forwarded-proto": "http",
    "x-request-id": "0b7c1c1e-9f51-4b1e-8d5f-2f7a3c9e1d20",
}
RESPONSE_HEADERS = {
    ":status": "200",
    "content-type": "application/json; charset=utf-8",
    "content-length": "316",
    "date": "Tue, 25 Nov 2026 01:10:00 GMT",
    "server": "Python/3.11 aiohttp/3.10",
    "x-envoy-upstream-service-time": "1",
}


def _headers(values: dict[str, str], end: bool) -> ext_proc.HttpHeaders:
    return ext_proc.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
        ),
        end_of_stream=end,
    )


def envoy_messages(streamed_chunks: int = 0) -> list[bytes]:
    """One request's ProcessingRequests, serialized as they arrive from Envoy."""
    mode = processing_mode_pb2.ProcessingMode
    first = ext_proc.ProcessingRequest(request_headers=_headers(REQUEST_HEADERS, False))
    first.protocol_config.request_body_mode = mode.FULL_DUPLEX_STREAMED
    first.protocol_config.response_body_mode = mode.FULL_DUPLEX_STREAMED
    usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    messages = [
        first,
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=REQUEST, end_of_stream=True)),
        ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers()),
    ]
    if streamed_chunks:
        headers = {**RESPONSE_HEADERS, "content-type": "text/event-stream"}
        del headers["content-length"]
        messages.append(ext_proc.ProcessingRequest(response_headers=_headers(headers, False)))
        for i in range(streamed_chunks):
            event: dict[str, Any] = {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": MODEL,
                "choices": [{"text": f"t{i}"}],
            }
            if i == streamed_chunks - 1:
                event["usage"] = usage
            chunk = b"data: " + json.dumps(event).encode() + b"\n\n"
            if i == streamed_chunks - 1:
                chunk += b"data: [DONE]\n\n"
            body = ext_proc.HttpBody(body=chunk, end_of_stream=False)
            messages.append(ext_proc.ProcessingRequest(response_body=body))
    else:
        answer = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1764032000,
            "model": MODEL,
            "choices": [{"index": 0, "text": " gateways route", "finish_reason": "length"}],
            "usage": usage,
        }
        messages.append(ext_proc.ProcessingRequest(response_headers=_headers(RESPONSE_HEADERS, False)))
        body = ext_proc.HttpBody(body=json.dumps(answer).encode(), end_of_stream=False)
        messages.append(ext_proc.ProcessingRequest(response_body=body))
    messages.append(ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers()))
    return [m.SerializeToString() for m in messages]


class FixedDirector:
    # As the scheduling director without flow control (the EPP's default): no decision timer.
    decides_nowait = True

    def ready(self) -> bool:
        return True

    async def handle_request(self, request: InferenceRequest) -> Decision:
        return Decision(endpoints=("10.0.0.1:8000",))

    def handle_response_headers(self, request: InferenceRequest, served: str | None, status: int) -> None:
        pass

    def handle_response_complete(self, request: InferenceRequest, usage: Usage | None, failed: bool) -> None:
        pass


def default_director() -> Any:
    """The real scheduler, llm-d's default profile, over 8 endpoints with fresh metrics."""
    from epp.config.loader import DEFAULT_CONFIG, load_config
    from epp.datastore import Datastore, EndpointSpec
    from epp.director import SchedulingDirector
    from epp.scrape.parser import VLLM, parse_metrics

    datastore = Datastore()
    datastore.replace_endpoints(
        [EndpointSpec(f"pod-{i}", f"10.0.0.{i + 1}", 8000, 8000, {}) for i in range(8)]
    )
    page = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.2\n"
    director = SchedulingDirector(datastore, load_config(DEFAULT_CONFIG), metrics_staleness=3600.0)
    for endpoint in datastore.endpoints():
        endpoint.metrics = parse_metrics(page, time.monotonic(), VLLM)
    return director


async def drive(director: Any, metrics: ServerMetrics, raw: Sequence[bytes], requests: int) -> int:
    """Run ``requests`` streams back to back; returns the messages exchanged (both ways)."""
    settings = StreamSettings()
    budget, ids = BufferBudget(settings.max_buffered_request_bytes), ActiveRequestIds()
    exchanged = 0

    async def send(message: ext_proc.ProcessingResponse) -> None:
        nonlocal exchanged
        message.SerializeToString()  # what a transport does with every answer
        exchanged += 1

    async def incoming() -> AsyncIterator[ext_proc.ProcessingRequest]:
        nonlocal exchanged
        for data in raw:
            exchanged += 1
            yield ext_proc.ProcessingRequest.FromString(data)

    for _ in range(requests):
        await ExtProcStream(director, settings, metrics, budget, ids).run(incoming(), send)
    return exchanged


def measure(requests: int, streamed: int, director_name: str, profile: int) -> dict[str, float]:
    raw = envoy_messages(streamed)
    metrics = ServerMetrics(CollectorRegistry())

    async def main() -> tuple[float, int]:
        director = default_director() if director_name == "default" else FixedDirector()
        await drive(director, metrics, raw, 200)  # warm caches and first-call paths
        gc.collect()
        gc.freeze()  # as epp.cli does after start-up
        profiler = cProfile.Profile() if profile else None
        started = time.process_time()
        if profiler is not None:
            profiler.enable()
        exchanged = await drive(director, metrics, raw, requests)
        if profiler is not None:
            profiler.disable()
        elapsed = time.process_time() - started
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(profile)
            print(out.getvalue(), file=sys.stderr)
        return elapsed, exchanged

    elapsed, exchanged = asyncio.run(main())
    return {
        "us_per_request": elapsed * 1e6 / requests,
        "messages_per_request": exchanged / requests,
        "us_per_message": elapsed * 1e6 / exchanged,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stream_cpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--streamed", type=int, default=0, help="SSE chunks in the answer (0: one JSON body)")
    parser.add_argument("--director", choices=["fixed", "default"], default="fixed")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements; the lowest is the figure")
    args = parser.parse_args(argv)
    if args.requests <= 0 or args.repeat <= 0 or args.streamed < 0:
        parser.error("--requests and --repeat must be positive, --streamed not negative")
    runs = [measure(args.requests, args.streamed, args.director, args.profile) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["us_per_request"])
    each = ", ".join(f"{r['us_per_request']:.0f}" for r in runs)
    shape = f"SSE x{args.streamed}" if args.streamed else "JSON"
    print(
        f"ExtProcStream ({args.director} director, {shape}): "
        f"{best['us_per_request']:.0f} µs CPU per request, {best['messages_per_request']:.0f} messages, "
        f"{best['us_per_message']:.1f} µs per message (best of {args.repeat}: "
        f"{each}); load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
