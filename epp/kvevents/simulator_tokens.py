"""The vLLM simulator's pseudo-tokenizer, reproduced for the EPP. **For the simulator only.**

``python -m simulator`` has no vocabulary: a prompt's tokens are its consecutive 4-character
pieces, and an all-ASCII piece without NUL packs its code points 7 bits each into one id (any other
piece gets a hashed id). Chat requests are rendered as ChatML first. That is what
``simulator/tokens.py`` (``token_ids``, ``render_chat``) and ``simulator/requests.py``
(``_prompt_text``) do; this module computes the same ids from a request body, so the
``token-producer``'s ``simulator`` backend lets the precise prefix producer match the simulator's
KV events exactly. The EPP image must not import the simulator, hence the copy;
``tests/epp/kvevents/test_simulator_tokens.py`` holds the two to the same output.

Real model servers need the model's own tokenizer (the ``local`` or ``vllm`` backends).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from epp.kvevents.chat_template import UnsupportedPrompt

CHARS_PER_TOKEN = 4
_ASCII_ID_LIMIT = 1 << 28


def piece_id(piece: str) -> int:
    codes = [ord(char) for char in piece]
    if all(0 < code < 128 for code in codes):
        return sum(code << (7 * index) for index, code in enumerate(codes))
    return _ASCII_ID_LIMIT + xxhash.xxh32_intdigest(piece.encode()) % _ASCII_ID_LIMIT


def token_ids(text: str) -> list[int]:
    """The simulator's ids of ``text`` (see :func:`token_ids_packed`)."""
    return token_ids_packed(text)[0]


def token_ids_packed(text: str) -> tuple[list[int], bytes | None]:
    """The simulator's ids of ``text``, and the same ids as native unsigned 32-bit bytes when they
    come for free (the precise producer's memo keys on them).

    ASCII text without NUL (nearly every prompt) takes a fast path: read as little-endian 32-bit
    words, each word's four 7-bit characters are moved together (``c0 | c1 << 7 | c2 << 14 |
    c3 << 21`` is ``piece_id`` of that piece; a short last piece reads as zero-padded, and zeros add
    nothing). The shifts and masks run on the whole text as one big integer, so the cost is a few
    C-level passes rather than Python work per token (~10x faster)."""
    if not text.isascii() or "\0" in text:
        return [piece_id(text[i : i + CHARS_PER_TOKEN]) for i in range(0, len(text), CHARS_PER_TOKEN)], None
    data = text.encode()
    words = -(-len(data) // 4)
    if not words:
        return [], b""
    value = int.from_bytes(data, "little")
    m0, m1, m2, m3 = _masks(words)
    packed = (value & m0) | ((value >> 1) & m1) | ((value >> 2) & m2) | ((value >> 3) & m3)
    raw = packed.to_bytes(words * 4, "little")
    out = array("I")
    out.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover - the bytes above are little-endian words
        out.byteswap()
        return out.tolist(), None
    return out.tolist(), raw


_MASK_WORDS = (b"\x7f\x00\x00\x00", b"\x80\x3f\x00\x00", b"\x00\xc0\x1f\x00", b"\x00\x00\xe0\x0f")
_MASK_CACHE_WORDS = 1 << 16  # masks for prompts up to 256 KB are kept (4 x 256 KB)
_cached_masks: tuple[int, ...] = ()
_cached_words = 0


def _masks(words: int) -> tuple[int, ...]:
    """Per-word masks at least ``words`` long (an AND costs only as much as its shorter operand,
    so one long cached mask serves every shorter prompt)."""
    global _cached_masks, _cached_words
    if words <= _cached_words:
        return _cached_masks
    size = max(words, min(_MASK_CACHE_WORDS, 2 * _cached_words, 4096))
    masks = tuple(int.from_bytes(word * size, "little") for word in _MASK_WORDS)
    if size <= _MASK_CACHE_WORDS:
        _cached_masks, _cached_words = masks, size
    return masks


def render_chat(messages: Sequence[Any]) -> str:
    """ChatML as the simulator renders a chat request (generation prompt open at the end)."""
    parts: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise UnsupportedPrompt(f"messages[{index}] must be an object with a string 'role'")
        parts.append(f"<|im_start|>{message['role']}\n{_content_text(message.get('content'), index)}")
        parts.append("<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _content_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise UnsupportedPrompt(f"messages[{index}].content: the simulator serves text parts only")
        return "".join(texts)
    raise UnsupportedPrompt(f"messages[{index}].content must be a string or a list of text parts")


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text the simulator tokenizes for a chat or completions body."""
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise UnsupportedPrompt("messages must be a non-empty list")
        return render_chat(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise UnsupportedPrompt("the simulator serves one non-empty text prompt per request")
    return prompt


def request_tokens(body: Mapping[str, Any]) -> list[int]:
    return token_ids(prompt_text(body))


def request_tokens_packed(body: Mapping[str, Any]) -> tuple[list[int], bytes | None]:
    return token_ids_packed(prompt_text(body))
