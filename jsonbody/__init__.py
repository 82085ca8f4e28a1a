"""Strict parsing of JSON request bodies, shared by the EPP, the P/D sidecar and the simulator.

Python's ``json.loads`` accepts things that are valid JSON (or close to it) but that every consumer
downstream trips over:

* lone UTF-16 surrogates (``"\\ud800"``): valid JSON text, but no UTF-8 encoding exists, so
  hashing a prompt, re-serialising a body or writing a log line raises ``UnicodeEncodeError``;
* nesting a few hundred levels deep: ``json.loads`` copes, but recursive consumers
  (``copy.deepcopy``, ``json.dumps``, pydantic) hit ``RecursionError`` at different depths;
* ``NaN``/``Infinity`` literals (not JSON at all) and numbers beyond a double (``1e999`` parses
  to ``inf``), which re-serialise as invalid JSON.

* (request bodies) more than :data:`MAX_REQUEST_CONTAINERS` arrays and objects, whose Python
  objects cost seconds of CPU to build, walk and render.

:func:`loads` refuses all of these with a :class:`BodyError` that names the offending field, so
each server can answer 400 instead of failing later with a 500. One depth limit for all three
processes means a body one of them accepts is never refused (or crashed on) by the next hop.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Deep enough for any OpenAI-style body (tool and response_format JSON schemas included: a schema
# nested ten objects deep is ~25 JSON levels), far below where recursive consumers break:
# copy.deepcopy needs ~3 frames per level, so it fails at ~330 levels with Python's default
# recursion limit of 1000; pydantic-core's JSON parser stops at 200.
MAX_DEPTH = 100

# A \uD800-\uDFFF escape is the only way a JSON text can produce a surrogate (raw UTF-8 cannot
# encode one, and strict decoding refuses it); JSON spells it with a lower-case u. Valid pairs match
# too and pass the walk. Most bodies have no backslash at all, which a memchr-speed find rules out
# first. Cost over json.loads, measured on the 2-core machine (load ~3.5): +0.6 us on a 1 KB chat
# body, +4 us at 12 KB, none on a 100 KB prompt or 10k token ids; +45 % on a 115 KB prompt full of
# escapes (\n, \", \u00e9), where this regex search runs.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyError(ValueError):
    """A body this stack cannot use. ``field`` is the JSON path (``messages[0].content``) or None
    when the problem is the body as a whole."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


# Request bodies only (``max_containers``): a body of many tiny arrays and objects costs far more CPU
# than its bytes suggest, each one a Python object to build, walk and render. A 4 MB body of
# [1],[1],... (a million one-token prompts) held the EPP's event loop for 3.6 s and one of 1.4 M {}
# for 2.4 s, stalling every request in flight; at this cap the worst case is ~0.25 s. No real body
# comes near: a 2,048-prompt token-id batch has 2,049, a 10,000-message agentic chat some 50,000.
# Model-server answers are not capped (a long completion with logprobs has an object per token).
MAX_REQUEST_CONTAINERS = 100_000

# A JSON string, escapes included (the unrolled form: one regex step per run of plain characters).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH, max_containers: int | None = None) -> Any:
    """Decode a request body (UTF-8 JSON) or raise :class:`BodyError` saying why and where.
    ``max_containers`` (a request body: :data:`MAX_REQUEST_CONTAINERS`) bounds its arrays and
    objects, checked before any is built."""
    if max_containers is not None and _containers_over(raw, max_containers):
        raise BodyError(
            f"request body holds more than {max_containers} JSON arrays and objects; split the request"
        )
    try:
        text = raw.decode("utf-8")  # JSON on the wire is UTF-8; no guessing of other encodings
    except UnicodeDecodeError as exc:
        raise BodyError(f"request body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        value = _DECODER.decode(text)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError(f"request body nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing a number of > 4300 digits
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    # Both checks need a walk over the parsed value; skip it when the raw text rules the problem out.
    deep = not _few_containers(raw, max_depth)
    surrogates = raw.find(b"\\") != -1 and _SURROGATE_ESCAPE.search(raw) is not None
    if deep or surrogates:
        check(value, max_depth=max_depth)
    return value


def carries_json_body(method: str) -> bool:
    """Whether a request with this ``:method`` has a body to read: every OpenAI / vLLM route that
    takes a JSON body is a POST (methods are case-sensitive). Judging the body of a GET, PUT,
    OPTIONS ... answered it with a 400 or 404 where the model server answers 405 (or, for
    GET /v1/models, the listing)."""
    return method == "POST"


def encoding_problem(content_encoding: str) -> str | None:
    """Why a body sent with this ``content-encoding`` header cannot be read (None: it can). A
    compressed body is not JSON text until decompressed, which none of these servers does (nor does
    vLLM): saying so beats reporting that the gzip bytes are "not UTF-8 text"."""
    encoding = content_encoding.strip().lower()
    if not encoding or encoding == "identity":
        return None
    return (
        f"request bodies with content-encoding {encoding[:40]!r} are not supported: the body is read "
        "as JSON to route it; send it uncompressed"
    )


def _containers_over(raw: bytes, limit: int) -> bool:
    """More than ``limit`` arrays and objects. Counting bracket bytes is C speed (~4 ms for 4 MB) and
    over-counts only brackets inside strings, so the exact count (strings cut out first: ~35 ms for
    4 MB of text, ~0.2 s at worst, all escapes) runs only past the limit. Brackets are ASCII, never
    part of a UTF-8 sequence, so the bytes need no decoding."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    outside = _STRING.sub(b"", raw)
    return outside.count(b"[") + outside.count(b"{") > limit


def _few_containers(raw: bytes, limit: int) -> bool:
    """At most ``limit`` brackets and braces in all (so no deeper nesting): memchr-speed finds that
    stop at ``limit`` rather than a count over the whole body (bytes.count is a byte loop)."""
    seen = 0
    for opener in (b"[", b"{"):
        position = raw.find(opener)
        while position != -1:
            seen += 1
            if seen > limit:
                return False
            position = raw.find(opener, position + 1)
    return True


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Walk a parsed value: nesting within ``max_depth``, every string (and key) encodable as UTF-8.
    Iterative, so the walk itself cannot overflow the stack."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            _check_scalar(node, path)
            continue
        if depth > max_depth:
            # Name the top-level field: the full path of a 100-level nest is noise.
            top = field_name(path[:1])
            where = f"'{top}'" if top else "request body"
            raise BodyError(f"{where} nests deeper than {max_depth} levels", top or None)
        for key, item in items:
            if isinstance(key, str):
                _check_text(key, path, what="a key")
            if isinstance(item, dict | list):
                stack.append((item, depth + 1, (*path, key)))
            elif isinstance(item, str):
                _check_text(item, (*path, key))


def _check_scalar(node: Any, path: tuple[str | int, ...]) -> None:
    if isinstance(node, str):
        _check_text(node, path)


def _check_text(text: str, path: tuple[str | int, ...], what: str = "") -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = field_name(path)
        if what:
            subject = f"{what} of '{where}'" if where else f"{what} of the body"
        else:
            subject = f"'{where}'" if where else "the body"
        raise BodyError(
            f"{subject} holds a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at character "
            f"{exc.start}, which has no UTF-8 encoding",
            where or None,
        ) from None


def field_name(path: tuple[str | int, ...]) -> str:
    """``("messages", 0, "content")`` → ``messages[0].content``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _refuse_constant(name: str) -> Any:
    raise BodyError(f"request body is not valid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise BodyError(f"request body is not valid JSON: the number {text[:40]} is out of range")
    return number


# Built once: json.loads with hooks would build a decoder (and its scanner) on every call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


# pydantic's lax booleans, which vLLM's request models use for their flags (stream,
# add_special_tokens, add_generation_prompt, ...): "false", "No", 0 are False; "yes", 1 are True.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_bool(value: Any) -> bool | None:
    """``value`` as vLLM reads a boolean field, or None when vLLM refuses it (a 400). Python's
    ``bool()`` is no substitute: ``bool("false")`` is True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None
