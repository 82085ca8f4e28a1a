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
    """The simulator's ids of ``text``. ASCII text without NUL (nearly every prompt) takes a fast
    path: each 4-byte word read little-endian has its bytes' 7-bit payloads moved together,
    which is ``piece_id`` of that piece (a short last piece reads as zero-padded, and zeros add
    nothing); about 10x faster than piece by piece."""
    if text.isascii() and "\0" not in text:
        data = text.encode()
        words = array("I")
        if words.itemsize != 4:  # pragma: no cover - every supported platform has a 4-byte "I"
            return [piece_id(text[i : i + CHARS_PER_TOKEN]) for i in range(0, len(text), CHARS_PER_TOKEN)]
        words.frombytes(data + b"\0" * (-len(data) % 4))
        if sys.byteorder == "big":  # pragma: no cover
            words.byteswap()
        return [
            (w & 0x7F) | ((w >> 1) & 0x3F80) | ((w >> 2) & 0x1FC000) | ((w >> 3) & 0xFE00000) for w in words
        ]
    return [piece_id(text[i : i + CHARS_PER_TOKEN]) for i in range(0, len(text), CHARS_PER_TOKEN)]


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
