"""What the EPP reads from, and changes in, a model server's response body.

Two jobs, both on bytes as they stream by: find the ``usage`` object (last SSE event or the JSON
body) so token counts reach the Director, and put the client's model name back when the decision
rewrote it (the client must always see the name it asked for).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeGuard

import jsonbody
from epp.types import Usage

# A buffered (non-SSE) body larger than this is passed through without looking for usage.
MAX_INSPECTED_BODY_BYTES = 8 * 1024 * 1024
# An SSE line longer than this is released unparsed rather than held back.
_MAX_SSE_LINE_BYTES = 1024 * 1024


def usage_from_payload(payload: Any) -> Usage | None:
    """The ``usage`` of an OpenAI response object (or SSE event), or None when absent/malformed.

    Completions and chat count ``prompt_tokens``/``completion_tokens``; the Responses API (and
    Anthropic's /v1/messages, which vLLM also serves) ``input_tokens``/``output_tokens``, and a
    streamed Responses answer carries its usage inside the final event's ``response``
    (``response.completed``). Only the first shape was read: /v1/responses answers had no usage."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        response = payload.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict):
            return None
    if "prompt_tokens" in usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details")
    else:
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens", 0)
        details = usage.get("input_tokens_details")
    if not _is_count(prompt) or not _is_count(completion):
        return None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, cached if _is_count(cached) else None)


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ModelNameRewriter:
    """Replaces ``"model":"<target>"`` (with or without a space after the colon) by the original name."""

    def __init__(self, target_model: str, client_model: str) -> None:
        # Both JSON spellings of a non-ASCII name: vLLM writes raw UTF-8 (pydantic's model_dump_json
        # for SSE chunks and completions, starlette's JSONResponse, ensure_ascii=False, for chat:
        # vllm/entrypoints/openai/*/serving.py, api_router.py); other servers write \u escapes.
        # Looking only for the escapes left a non-ASCII target name in every vLLM answer.
        self._pairs: list[tuple[bytes, bytes]] = []
        for ascii_only in (True, False):
            target = json.dumps(target_model, ensure_ascii=ascii_only).encode()
            client = json.dumps(client_model, ensure_ascii=ascii_only).encode()
            for colon in (b'"model":', b'"model": '):
                if (colon + target, colon + client) not in self._pairs:
                    self._pairs.append((colon + target, colon + client))

        # The longest spelling looked for: a stream need hold back no more than this, less one byte.
        self.longest = max(len(old) for old, _ in self._pairs)

    def __call__(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            if old in data:
                data = data.replace(old, new)
        return data

    def stream(self) -> RewritingStream:
        return RewritingStream(self)

    def straddling_end(self, data: bytes, cut: int) -> int:
        """Where an occurrence beginning before ``cut`` and complete in ``data`` ends, else ``cut``."""
        end = cut
        for old, _ in self._pairs:
            start = data.find(old, max(0, cut - len(old) + 1))
            if start != -1 and start < cut:
                end = max(end, start + len(old))
        return end


class RewritingStream:
    """A body rewritten as it passes, chunk by chunk: only a tail shorter than the longest name
    spelling is held back (it may be the start of a name the next chunk completes). A JSON answer
    used to be held whole until its end, so an embeddings or logprobs answer of any size sat in
    the EPP's memory and reached the client only once complete."""

    def __init__(self, rewriter: ModelNameRewriter) -> None:
        self._rewriter = rewriter
        self._tail = b""

    @property
    def held(self) -> int:
        return len(self._tail)

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        data = self._tail + chunk
        if end_of_stream:
            self._tail = b""
            return self._rewriter(data)
        # An occurrence not complete in ``data`` starts at or after ``cut``; one that is complete but
        # crosses ``cut`` is released whole (occurrences cannot overlap: each starts with "model":
        # and a name's own quotes are escaped).
        cut = len(data) - (self._rewriter.longest - 1)
        if cut <= 0:
            self._tail = data
            return b""
        cut = self._rewriter.straddling_end(data, cut)
        self._tail = data[cut:]
        return self._rewriter(data[:cut])


class SseTracker:
    """Follows a ``text/event-stream`` body chunk by chunk.

    Chunks may split an event anywhere; only complete lines are inspected. With a rewriter, only
    complete lines are released too (the incomplete tail waits for the next chunk), so a model name
    split across two chunks is still rewritten; without one every byte passes through at once.

    The usage is that of the last event carrying one, parsed only when read: with
    ``stream_options.continuous_usage_stats`` vLLM sends the running usage in every event, and
    parsing each as it passed cost the EPP 12 times the CPU per streamed token.
    """

    def __init__(self, rewriter: ModelNameRewriter | None) -> None:
        self._rewriter = rewriter
        self._tail = b""
        self._usage: Usage | None = None
        self._pending: bytes | None = None  # the last usage-bearing ``data:`` payload, unparsed

    @property
    def usage(self) -> Usage | None:
        if self._pending is not None:
            try:
                # jsonbody: a model server's deeply nested answer must not raise RecursionError here.
                self._usage = usage_from_payload(jsonbody.loads(self._pending))
            except ValueError:
                self._usage = None
            self._pending = None
        return self._usage

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        data = self._tail + chunk
        cut = len(data) if end_of_stream else data.rfind(b"\n") + 1
        complete, self._tail = data[:cut], data[cut:]
        if len(self._tail) > _MAX_SSE_LINE_BYTES:  # not line-structured after all: stop holding bytes
            complete, self._tail = data, b""
        if b'"usage"' in complete:
            self._note_usage(complete)
        if self._rewriter is None:
            return chunk
        return self._rewriter(complete)

    def _note_usage(self, lines: bytes) -> None:
        for line in reversed(lines.splitlines()):
            # OpenAI-style servers send "usage":null in every event but the last: not a usage.
            if line.startswith(b"data:") and b'"usage"' in line and not _NULL_USAGE.search(line):
                self._pending = bytes(line[5:].strip())
                return


_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')


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
