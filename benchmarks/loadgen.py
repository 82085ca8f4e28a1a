"""The open-loop client: send each request at its scheduled time, whatever the earlier ones are doing.

Closed-loop clients slow down when the server does, which hides queueing; open loop is what users do
to a shared endpoint, so TTFT here includes any queue the router builds. Every request streams
(Server-Sent Events), which is how time to first token is observable from outside: TTFT is the time
from sending the request to the first event that carries generated text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from benchmarks.workloads import RequestSpec


@dataclass(frozen=True, slots=True)
class RequestResult:
    index: int
    group: str
    scheduled_at: float  # seconds from the run's start
    sent_at: float  # seconds from the run's start (later than scheduled only if the client lagged)
    status: int  # HTTP status; 0 when no response arrived
    ttft: float | None  # seconds; None when no token arrived
    latency: float | None  # seconds from send to the end of the response; None on failure
    output_tokens: int
    error: str | None = None
    # x-llm-d-request-dropped-reason of a refused request: the router shed it on purpose.
    dropped_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200

    @property
    def shed(self) -> bool:
        """Refused on purpose: a 429, or a 503 that names why (flow control's answers)."""
        return self.status == 429 or (self.status == 503 and bool(self.dropped_reason))

    @property
    def lost(self) -> bool:
        """Neither served nor deliberately shed: a timeout, a reset, a 5xx without a reason."""
        return not self.ok and not self.shed


ProgressCallback = Callable[[int, int], None]


def _event_has_text(event: dict[str, object]) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(choice.get("text"), str) and choice["text"]:
            return True
        if isinstance(delta, dict) and isinstance(delta.get("content"), str) and delta["content"]:
            return True
    return False


def _usage_completion_tokens(event: dict[str, object]) -> int | None:
    usage = event.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return None


DROPPED_REASON = "x-llm-d-request-dropped-reason"


async def send_streaming(
    session: aiohttp.ClientSession, base_url: str, spec: RequestSpec, request_timeout_s: float
) -> tuple[int, float | None, float | None, int, str | None, str | None]:
    """POST one streaming request; returns (status, ttft, latency, output tokens, error, drop reason)."""
    started = time.perf_counter()
    ttft: float | None = None
    text_events = 0
    reported_tokens: int | None = None
    try:
        async with session.post(
            base_url + spec.path,
            json=dict(spec.body),
            headers=dict(spec.headers) or None,
            timeout=aiohttp.ClientTimeout(total=request_timeout_s),
        ) as response:
            if response.status != 200:
                detail = (await response.text())[:200]
                reason = response.headers.get(DROPPED_REASON)
                return response.status, None, None, 0, f"HTTP {response.status}: {detail}", reason
            async for raw_line in response.content:
                line = raw_line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                event = json.loads(payload)
                if _event_has_text(event):
                    text_events += 1
                    if ttft is None:
                        ttft = time.perf_counter() - started
                usage_tokens = _usage_completion_tokens(event)
                if usage_tokens is not None:
                    reported_tokens = usage_tokens
            latency = time.perf_counter() - started
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        return 0, ttft, None, text_events, f"{type(exc).__name__}: {exc}"[:200], None
    if ttft is None:
        return 200, None, latency, 0, "stream ended without any generated text", None
    tokens = reported_tokens if reported_tokens is not None else text_events
    return 200, ttft, latency, tokens, None, None


async def run_open_loop(
    base_url: str,
    specs: Sequence[RequestSpec],
    offsets: Sequence[float],
    *,
    request_timeout_s: float = 60.0,
    max_in_flight: int = 1024,
    progress: ProgressCallback | None = None,
) -> list[RequestResult]:
    """Send ``specs[i]`` at ``offsets[i]`` seconds after the start; return results in spec order.

    ``max_in_flight`` bounds the client's own resources; a request that would exceed it is recorded as
    a client-side drop rather than delayed, so the arrival process stays open-loop.
    """
    if len(specs) != len(offsets):
        raise ValueError(f"{len(specs)} requests but {len(offsets)} send times")
    results: list[RequestResult | None] = [None] * len(specs)
    finished = 0
    in_flight = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()

        async def one(index: int) -> None:
            nonlocal finished, in_flight
            spec = specs[index]
            sent_at = time.perf_counter() - start
            status, ttft, latency, tokens, error, reason = await send_streaming(
                session, base_url, spec, request_timeout_s
            )
            in_flight -= 1
            results[index] = RequestResult(
                index, spec.group, offsets[index], sent_at, status, ttft, latency, tokens, error, reason
            )
            finished += 1
            if progress is not None:
                progress(finished, len(specs))

        tasks: list[asyncio.Task[None]] = []
        for index, offset in enumerate(offsets):
            delay = offset - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:
                results[index] = RequestResult(
                    index,
                    specs[index].group,
                    offset,
                    offset,
                    0,
                    None,
                    None,
                    0,
                    f"client dropped: {max_in_flight} requests already in flight",
                )
                finished += 1
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return [result for result in results if result is not None]
