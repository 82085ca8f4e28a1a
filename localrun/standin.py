"""A model-server stand-in for gateway tests and latency benchmarks: OpenAI endpoints, vLLM-named
``/metrics`` whose values the caller sets, and a record of what reached it.

Not a simulator (``simulator`` is): it answers at once (or after ``--delay-ms``) so that what a test
or benchmark measures is the gateway, not the model. Run it as a process so a test can kill it
like a crashed pod::

    python -m localrun.standin --port 8001 --name pod-a

Control surface (JSON):

* ``POST /control/metrics`` ``{"waiting": 30, "running": 2, "kv_cache_usage": 0.9}`` — the values
  ``/metrics`` reports (``running`` is added to the requests really in progress).
* ``GET /control/requests`` — ``{"count": n, "requests": [{"path", "model", "headers", "body_bytes"}]}``
  (the last 1,000 requests), ``DELETE /control/requests`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from typing import Any

from aiohttp import web

_RECORDED = 1000


class StandIn:
    def __init__(
        self, name: str, model: str, delay_ms: float, stream_chunks: int, token_interval_ms: float = 0.0
    ) -> None:
        self.name = name
        self.model = model
        self.delay = delay_ms / 1000
        self.token_interval = token_interval_ms / 1000
        self.stream_chunks = stream_chunks
        self.waiting = 0
        self.running_offset = 0
        self.kv_cache_usage = 0.0
        self.in_progress = 0
        self.count = 0
        self.scrapes = 0  # /metrics requests served (tests time faults against the EPP's scrapes)
        self.records: deque[dict[str, Any]] = deque(maxlen=_RECORDED)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/control/metrics", self.set_metrics)
        app.router.add_get("/control/requests", self.requests)
        app.router.add_delete("/control/requests", self.clear_requests)
        return app

    async def generate(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": {"message": "stand-in: body is not JSON"}}, status=400)
        self.count += 1
        self.records.append(
            {
                "path": request.path,
                "model": body.get("model"),
                "headers": dict(request.headers),
                "body_bytes": len(raw),
            }
        )
        self.in_progress += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            chat = request.path.endswith("/chat/completions")
            if body.get("stream"):
                return await self._stream(request, body, chat)
            return web.json_response(self._completion(body, chat, self.stream_chunks))
        finally:
            self.in_progress -= 1

    def _completion(self, body: dict[str, Any], chat: bool, tokens: int) -> dict[str, Any]:
        text = " ".join(f"tok{i}" for i in range(tokens))
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        return {
            "id": f"cmpl-{self.name}-{self.count}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "served_by": self.name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": _prompt_tokens(body),
                "completion_tokens": tokens,
                "total_tokens": _prompt_tokens(body) + tokens,
            },
        }

    async def _stream(self, request: web.Request, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        model = body.get("model", self.model)
        for i in range(self.stream_chunks):
            if i and self.token_interval:
                await asyncio.sleep(self.token_interval)
            delta = (
                {"index": 0, "delta": {"content": f"tok{i} "}} if chat else {"index": 0, "text": f"tok{i} "}
            )
            event = {"id": f"cmpl-{self.name}", "model": model, "served_by": self.name, "choices": [delta]}
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        usage = {
            "prompt_tokens": _prompt_tokens(body),
            "completion_tokens": self.stream_chunks,
            "total_tokens": _prompt_tokens(body) + self.stream_chunks,
        }
        final = {
            "id": f"cmpl-{self.name}",
            "model": model,
            "served_by": self.name,
            "choices": [],
            "usage": usage,
        }
        await response.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model"}], "served_by": self.name}
        )

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(self, _request: web.Request) -> web.Response:
        self.scrapes += 1
        labels = f'model_name="{self.model}",engine="0"'
        lines = [
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {self.waiting}",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {self.running_offset + self.in_progress}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {self.kv_cache_usage}",
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{block_size="16",enable_prefix_caching="True",{labels}}} 1.0',
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def set_metrics(self, request: web.Request) -> web.Response:
        values = await request.json()
        self.waiting = int(values.get("waiting", self.waiting))
        self.running_offset = int(values.get("running", self.running_offset))
        self.kv_cache_usage = float(values.get("kv_cache_usage", self.kv_cache_usage))
        return web.json_response(
            {"waiting": self.waiting, "running": self.running_offset, "kv_cache_usage": self.kv_cache_usage}
        )

    async def requests(self, _request: web.Request) -> web.Response:
        records = list(self.records)
        return web.json_response({"count": self.count, "scrapes": self.scrapes, "requests": records})

    async def clear_requests(self, _request: web.Request) -> web.Response:
        self.count = 0
        self.records.clear()
        return web.json_response({"count": 0})


def _prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt") or body.get("messages") or ""
    return max(1, len(json.dumps(prompt)) // 4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localrun.standin", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="standin", help="reported as served_by in every answer")
    parser.add_argument(
        "--model", default="tiny", help="name listed by /v1/models and used in metrics labels"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before answering")
    parser.add_argument("--stream-chunks", type=int, default=4, help="tokens per answer (SSE events)")
    parser.add_argument(
        "--token-interval-ms",
        type=float,
        default=0.0,
        help="wait between streamed events (0: back to back, so the proxy may pass several as one chunk)",
    )
    args = parser.parse_args(argv)
    standin = StandIn(args.name, args.model, args.delay_ms, args.stream_chunks, args.token_interval_ms)
    # The accept backlog of uvicorn, which vLLM runs (aiohttp's default is 128): a burst of new
    # connections must queue as it would at a real model server, not be dropped.
    web.run_app(standin.app(), host=args.host, port=args.port, access_log=None, print=None, backlog=2048)


if __name__ == "__main__":
    main()
