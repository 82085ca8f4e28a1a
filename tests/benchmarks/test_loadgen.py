"""The open-loop client against a scripted SSE server on 127.0.0.1: TTFT, latency, errors."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp.test_utils import TestServer

from benchmarks.loadgen import run_open_loop
from benchmarks.workloads import RequestSpec

FIRST_TOKEN_DELAY = 0.15
TOKEN_GAP = 0.05
SLOW_EXTRA = 1.0  # the "slow" prompt waits this much longer before its first token


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("prompt") == "fail":
        return web.json_response({"error": {"message": "no"}}, status=429)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    # A role-only first event must not count as the first token.
    await response.write(b'data: {"choices":[{"index":0,"text":""}]}\n\n')
    await asyncio.sleep(FIRST_TOKEN_DELAY + (SLOW_EXTRA if body.get("prompt") == "slow" else 0.0))
    for _ in range(3):
        await response.write(b'data: {"choices":[{"index":0,"text":" tok"}]}\n\n')
        await asyncio.sleep(TOKEN_GAP)
    usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}
    await response.write(f"data: {json.dumps(usage)}\n\n".encode() + b"data: [DONE]\n\n")
    return response


def spec(prompt: str) -> RequestSpec:
    return RequestSpec("/v1/completions", {"model": "m", "prompt": prompt, "stream": True}, "g", 1, 3)


async def test_open_loop_measures_ttft_latency_and_failures() -> None:
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        progress: list[tuple[int, int]] = []
        results = await run_open_loop(
            str(server.make_url("")).rstrip("/"),
            [spec("slow"), spec("fail"), spec("b")],
            [0.0, 0.05, 0.2],
            progress=lambda done, total: progress.append((done, total)),
        )
    finally:
        await server.close()
    slow, failed, late = results
    assert slow.ok and late.ok and not failed.ok
    assert failed.status == 429 and failed.error is not None and "429" in failed.error
    assert failed.ttft is None and failed.latency is None
    for r, first_token_delay in ((slow, FIRST_TOKEN_DELAY + SLOW_EXTRA), (late, FIRST_TOKEN_DELAY)):
        assert r.ttft is not None and r.latency is not None
        # Not the role-only event that arrives at once: TTFT waits for the first generated text.
        assert r.ttft >= first_token_delay
        assert r.latency >= r.ttft + 3 * TOKEN_GAP
        assert r.output_tokens == 3  # from the usage event
    # Open loop: the third request left at its own time, while the slow first one was still running.
    assert late.sent_at >= 0.2
    assert slow.latency is not None and late.sent_at < slow.sent_at + slow.latency
    assert sorted(progress) == [(1, 3), (2, 3), (3, 3)]
