"""The demo's mixed workload, sent one request at a time, and what became of each request.

Where a request went is read from the pods themselves: before and after each request the demo reads
every pod's vLLM counters, so the decode pod that answered and the prefill pod that did a remote
prefill are the ones whose ``vllm:request_success_total`` moved, and the cached prompt tokens are the
decode pod's ``vllm:prefix_cache_hits_total`` increase. Nothing is taken on the router's word.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from demo.cluster import MODEL, Pod
from epp.scrape.parser import samples

REQUEST_TIMEOUT_S = 20.0

_WORDS = (
    "cluster",
    "gateway",
    "prefill",
    "decode",
    "cache",
    "token",
    "router",
    "latency",
    "endpoint",
    "pool",
    "metric",
    "queue",
    "batch",
    "stream",
    "model",
    "budget",
    "region",
    "network",
    "memory",
    "storage",
)


def _text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(words))


@dataclass(frozen=True, slots=True)
class DemoRequest:
    label: str
    path: str
    body: bytes
    stream: bool
    expected_status: int = 200


def _json_request(label: str, path: str, body: dict[str, Any], expected_status: int = 200) -> DemoRequest:
    stream = bool(body.get("stream"))
    if stream:  # the final event then reports usage, as the non-streaming body does
        body = {**body, "stream_options": {"include_usage": True}}
    return DemoRequest(label, path, json.dumps(body).encode(), stream, expected_status)


def demo_requests() -> list[DemoRequest]:
    """Shared-prefix chat, streaming and not, a long and a short prompt, and one malformed body."""
    document = _text(1, 1100)  # about 1,900 tokens at 4 characters per token
    system = "You are the support assistant of a GPU cloud. " + _text(2, 420)  # about 760 tokens
    question_a = "How do I resize my inference pool without dropping requests?"
    answer_a = "Scale the decode deployment first, then let the endpoint picker spread new requests."
    chat_a = [{"role": "system", "content": system}, {"role": "user", "content": question_a}]
    return [
        _json_request(
            "long prompt (stream)",
            "/v1/completions",
            {"model": MODEL, "prompt": "Summarise this log:\n" + document, "max_tokens": 16, "stream": True},
        ),
        _json_request(
            "short prompt",
            "/v1/completions",
            {"model": MODEL, "prompt": "Name one prime number.", "max_tokens": 8},
        ),
        _json_request(
            "chat user A", "/v1/chat/completions", {"model": MODEL, "messages": chat_a, "max_tokens": 12}
        ),
        _json_request(
            "chat user B, same system (stream)",
            "/v1/chat/completions",
            {
                "model": MODEL,
                "max_tokens": 12,
                "stream": True,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": "Which regions have spare capacity?"},
                ],
            },
        ),
        _json_request(
            "chat user A, turn 2 (stream)",
            "/v1/chat/completions",
            {
                "model": MODEL,
                "max_tokens": 12,
                "stream": True,
                "messages": [
                    *chat_a,
                    {"role": "assistant", "content": answer_a},
                    {"role": "user", "content": "And how long does that take?"},
                ],
            },
        ),
        _json_request(
            "long prompt again (stream)",
            "/v1/completions",
            {"model": MODEL, "prompt": "Summarise this log:\n" + document, "max_tokens": 16, "stream": True},
        ),
        DemoRequest(
            "malformed JSON body",
            "/v1/completions",
            b'{"model": "' + MODEL.encode() + b'", "prompt": ',
            stream=False,
            expected_status=400,
        ),
    ]


@dataclass(frozen=True, slots=True)
class PodCounters:
    requests: float
    cached_tokens: float  # local prefix-cache hits, in tokens
    transferred_tokens: float  # external (KV connector) prefix hits, in tokens


_COUNTERS = {
    "requests": "vllm:request_success_total",
    "cached_tokens": "vllm:prefix_cache_hits_total",
    "transferred_tokens": "vllm:external_prefix_cache_hits_total",
}


def parse_pod_counters(text: str) -> PodCounters:
    totals = {field: sum(value for _, value in samples(text, name)) for field, name in _COUNTERS.items()}
    return PodCounters(**totals)


@dataclass(frozen=True, slots=True)
class Outcome:
    request: DemoRequest
    status: int
    ttft_s: float | None  # streaming requests only
    total_s: float
    decode_pod: str | None
    prefill_pod: str | None  # set when the request was disaggregated
    prompt_tokens: int | None
    cached_tokens: int
    transferred_tokens: int
    error: str | None  # the server's error message for a failed request

    @property
    def as_expected(self) -> bool:
        return self.status == self.request.expected_status


async def _counters(session: aiohttp.ClientSession, pods: Sequence[Pod]) -> dict[str, PodCounters]:
    async def one(pod: Pod) -> PodCounters:
        async with session.get(pod.metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return parse_pod_counters(await response.text())

    values = await asyncio.gather(*(one(pod) for pod in pods))
    return {pod.name: value for pod, value in zip(pods, values, strict=True)}


def _moved(
    before: Mapping[str, PodCounters], after: Mapping[str, PodCounters], pods: Sequence[Pod], role: str
) -> str | None:
    served = [p.name for p in pods if p.role == role and after[p.name].requests > before[p.name].requests]
    return ",".join(served) or None


async def _send(
    session: aiohttp.ClientSession, url: str, request: DemoRequest
) -> tuple[int, float | None, int | None, str | None]:
    """Returns (status, ttft, prompt tokens, error message)."""
    started = time.perf_counter()
    ttft: float | None = None
    prompt_tokens: int | None = None
    async with session.post(
        url + request.path,
        data=request.body,
        headers={"content-type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    ) as response:
        if response.status != 200:
            payload = await response.text()
            return response.status, None, None, _error_message(payload)
        if not request.stream:
            data = await response.json()
            return 200, None, data.get("usage", {}).get("prompt_tokens"), None
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices", []):
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - started
            if event.get("usage"):
                prompt_tokens = event["usage"].get("prompt_tokens")
    return 200, ttft, prompt_tokens, None


def _error_message(payload: str) -> str:
    try:
        data = json.loads(payload)
    except ValueError:
        return payload.strip()[:120] or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))[:120]
    return str(error or data)[:120]


async def run_scenario(url: str, pods: Sequence[Pod], requests: Sequence[DemoRequest]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    async with aiohttp.ClientSession() as session:
        for request in requests:
            before = await _counters(session, pods)
            started = time.perf_counter()
            status, ttft, prompt_tokens, error = await _send(session, url, request)
            total = time.perf_counter() - started
            after = await _counters(session, pods)
            decode = _moved(before, after, pods, "decode")
            decode_pods = [p for p in pods if p.name == decode]
            cached = sum(after[p.name].cached_tokens - before[p.name].cached_tokens for p in decode_pods)
            moved = sum(
                after[p.name].transferred_tokens - before[p.name].transferred_tokens for p in decode_pods
            )
            outcomes.append(
                Outcome(
                    request,
                    status,
                    ttft,
                    total,
                    decode,
                    _moved(before, after, pods, "prefill"),
                    prompt_tokens,
                    round(cached),
                    round(moved),
                    error,
                )
            )
    return outcomes


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def format_outcomes(outcomes: Sequence[Outcome]) -> str:
    headers = (
        "#",
        "request",
        "status",
        "decode pod",
        "P/D (prefill pod)",
        "prompt tok",
        "cached tok",
        "KV moved tok",
        "TTFT ms",
        "total ms",
    )
    rows = []
    for index, o in enumerate(outcomes, 1):
        status = str(o.status) + ("" if o.as_expected else f" (expected {o.request.expected_status})")
        pd = f"yes ({o.prefill_pod})" if o.prefill_pod else ("no" if o.decode_pod else "-")
        rows.append(
            (
                str(index),
                o.request.label,
                status,
                o.decode_pod or "-",
                pd,
                "-" if o.prompt_tokens is None else str(o.prompt_tokens),
                str(o.cached_tokens),
                str(o.transferred_tokens),
                _ms(o.ttft_s),
                _ms(o.total_s),
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    failures = [(i, o) for i, o in enumerate(outcomes, 1) if o.status != 200]
    lines += [f"  #{i} {o.request.label}: HTTP {o.status}: {o.error}" for i, o in failures]
    return "\n".join(lines)


def ttft_summary(outcomes: Sequence[Outcome]) -> str:
    streamed = [o for o in outcomes if o.ttft_s is not None]
    if not streamed:
        return "TTFT: no streamed request completed."
    values = sorted(o.ttft_s for o in streamed if o.ttft_s is not None)
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    lines = [
        f"TTFT over {len(values)} streamed requests: min {_ms(values[0])} ms, median {_ms(median)} ms, "
        f"max {_ms(values[-1])} ms"
    ]
    for o in streamed:
        how = f"P/D via {o.prefill_pod}" if o.prefill_pod else f"{o.cached_tokens} prompt tokens cached"
        lines.append(f"  {o.request.label}: {_ms(o.ttft_s)} ms on {o.decode_pod} ({how})")
    return "\n".join(lines)
