"""What the EPP reads from, and changes in, a model server's response body.

Two jobs, both on bytes as they stream by: find the ``usage`` object (last SSE event or the JSON
body) so token counts reach the Director, and put the client's model name back when the decision
rewrote it (the client must always see the name it asked for).
"""

from __future__ import annotations

import json
from typing import Any

import jsonbody
from epp.types import Usage

# A buffered (non-SSE) body larger than this is passed through without looking for usage.
MAX_INSPECTED_BODY_BYTES = 8 * 1024 * 1024
# An SSE line longer than this is released unparsed rather than held back.
_MAX_SSE_LINE_BYTES = 1024 * 1024


def usage_from_payload(payload: Any) -> Usage | None:
    """The ``usage`` of an OpenAI response object (or SSE event), or None when absent/malformed."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if not _is_count(prompt) or not _is_count(completion):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, cached if isinstance(cached, int) and _is_count(cached) else None)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ModelNameRewriter:
    """Replaces ``"model":"<target>"`` (with or without a space after the colon) by the original name."""

    def __init__(self, target_model: str, client_model: str) -> None:
        target, client = json.dumps(target_model).encode(), json.dumps(client_model).encode()
        self._pairs = [
            (b'"model":' + target, b'"model":' + client),
            (b'"model": ' + target, b'"model": ' + client),
        ]

    def __call__(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            if old in data:
                data = data.replace(old, new)
        return data

    def streaming(self) -> StreamingRewriter:
        return StreamingRewriter(self._pairs)


class StreamingRewriter:
    """The same replacement on a body that arrives in chunks, released as it arrives: only the
    last ``longest pattern - 1`` bytes are held back (they may begin a name the next chunk ends).
    A JSON body used to be held whole until its end to be rewritten in one go: per stream, without
    a bound, so one huge answer (n=128 with logprobs, a pod gone wrong) was all in the EPP's memory.
    """

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._pairs = pairs
        self._keep = max(len(old) for old, _ in pairs) - 1
        self._tail = b""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        data = self._tail + chunk
        out: list[bytes] = []
        position = 0
        while True:
            # The earliest occurrence of any pattern (they all start with '"model":' and differ
            # right after it, so two never match at the same place).
            found = [(data.find(old, position), old, new) for old, new in self._pairs]
            hits = [hit for hit in found if hit[0] != -1]
            if not hits:
                break
            start, old, new = min(hits)
            out += (data[position:start], new)
            position = start + len(old)
        # Replaced bytes are never rescanned: hold back only unreplaced ones.
        keep = len(data) if end_of_stream else max(position, len(data) - self._keep)
        out.append(data[position:keep])
        self._tail = data[keep:]
        return b"".join(out)


class SseTracker:
    """Follows a ``text/event-stream`` body chunk by chunk.

    Chunks may split an event anywhere; only complete lines are inspected. With a rewriter, only
    complete lines are released too (the incomplete tail waits for the next chunk), so a model name
    split across two chunks is still rewritten; without one every byte passes through at once.
    """

    def __init__(self, rewriter: ModelNameRewriter | None) -> None:
        self._rewriter = rewriter
        self._tail = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        data = self._tail + chunk
        cut = len(data) if end_of_stream else data.rfind(b"\n") + 1
        complete, self._tail = data[:cut], data[cut:]
        if len(self._tail) > _MAX_SSE_LINE_BYTES:  # not line-structured after all: stop holding bytes
            complete, self._tail = data, b""
        if b'"usage"' in complete:
            self._scan_usage(complete)
        if self._rewriter is None:
            return chunk
        return self._rewriter(complete)

    def _scan_usage(self, lines: bytes) -> None:
        for line in lines.splitlines():
            if not line.startswith(b"data:") or b'"usage"' not in line:
                continue
            try:
                # jsonbody: a model server's deeply nested answer must not raise RecursionError here.
                found = usage_from_payload(jsonbody.loads(line[5:].strip()))
            except ValueError:
                continue
            if found is not None:
                self.usage = found


class BufferedBodyTracker:
    """Follows a non-streamed (JSON) body: keeps a copy, bounded, to read ``usage`` at the end."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.usage: Usage | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> None:
        self._size += len(chunk)
        if self._size <= MAX_INSPECTED_BODY_BYTES:
            self._parts.append(chunk)
        else:
            self._parts.clear()
        if end_of_stream and self._parts:
            try:
                self.usage = usage_from_payload(jsonbody.loads(b"".join(self._parts)))
            except ValueError:
                self.usage = None
