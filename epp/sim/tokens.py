"""A deterministic pseudo-tokenizer: one token per 4 characters, no vocabulary.

Four characters per token is what the EPP's ``estimate`` token producer assumes and close to what BPE
tokenizers give on English text, so the EPP's prefix estimate and the simulator's cache agree on where
blocks start. Prefix-cache block hashes chain like vLLM's: each full block's hash covers the block and
its parent's hash, so equal hashes mean equal prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xxhash

CHARS_PER_TOKEN = 4

# Words the simulated model "generates"; each one is one token (<= 4 chars, leading space).
_OUTPUT_WORDS = (" the", " a", " of", " to", " and", " in", " is", " it", " for", " on", " sim", " kv")


def count_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def block_hashes(text: str, block_size: int, salt: str = "") -> list[int]:
    """Chained hashes of the prompt's *full* token blocks (a trailing partial block is not cacheable)."""
    chars_per_block = block_size * CHARS_PER_TOKEN
    hashes: list[int] = []
    parent = xxhash.xxh64_intdigest(salt.encode())
    for start in range(0, len(text) - chars_per_block + 1, chars_per_block):
        parent = xxhash.xxh64_intdigest(text[start : start + chars_per_block].encode(), seed=parent)
        hashes.append(parent)
    return hashes


def render_chat(messages: Sequence[Any]) -> str:
    """ChatML rendering (what the tiny model's template does), with the generation prompt appended."""
    parts: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{index}] must be an object with a string 'role'")
        parts.append(
            f"<|im_start|>{message['role']}\n{_content_text(message.get('content'), index)}<|im_end|>\n"
        )
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
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise ValueError(f"messages[{index}].content: only text parts are supported by the simulator")
        return "".join(texts)
    raise ValueError(f"messages[{index}].content must be a string or a list of text parts")


def output_token(seed: int, position: int) -> str:
    return _OUTPUT_WORDS[(seed + position * 7) % len(_OUTPUT_WORDS)]
