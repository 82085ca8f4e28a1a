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


def render_chat(
    messages: Sequence[Any], add_generation_prompt: bool = True, continue_final_message: bool = False
) -> str:
    """ChatML rendering (what the tiny model's template does).

    ``add_generation_prompt`` opens the assistant's turn; ``continue_final_message`` leaves the last
    message open instead (for prefilling the start of a reply), as vLLM's chat options do.
    """
    if add_generation_prompt and continue_final_message:
        raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    parts: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{index}] must be an object with a string 'role'")
        parts.append(f"<|im_start|>{message['role']}\n{_content_text(message.get('content'), index)}")
        open_turn = continue_final_message and index == len(messages) - 1
        parts.append("" if open_turn else "<|im_end|>\n")
    if add_generation_prompt:
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


# Token ids. An all-ASCII piece (1-4 characters, no NUL) packs its code points 7 bits each into
# one id below 2**28, so /detokenize gives the text back exactly; any other piece gets a hashed id
# in [2**28, 2**29) that decodes to U+FFFD, the way a byte-level tokenizer renders a broken piece.
_ASCII_ID_LIMIT = 1 << 28
_MAX_TOKEN_ID = (1 << 29) - 1
# What vLLM's checks call the vocabulary size: every id in [0, VOCAB_SIZE) is a token.
VOCAB_SIZE = _MAX_TOKEN_ID + 1
UNKNOWN_PIECE = "\ufffd"


def token_pieces(text: str) -> list[str]:
    """The text each token covers: consecutive 4-character pieces, the last one possibly shorter."""
    return [text[start : start + CHARS_PER_TOKEN] for start in range(0, len(text), CHARS_PER_TOKEN)]


def piece_id(piece: str) -> int:
    codes = [ord(char) for char in piece]
    if all(0 < code < 128 for code in codes):
        return sum(code << (7 * index) for index, code in enumerate(codes))
    return _ASCII_ID_LIMIT + xxhash.xxh32_intdigest(piece.encode()) % _ASCII_ID_LIMIT


def token_ids(text: str) -> list[int]:
    return [piece_id(piece) for piece in token_pieces(text)]


def id_piece(token_id: int) -> str:
    """The text of one id; ValueError for an id no piece maps to."""
    if not 0 < token_id <= _MAX_TOKEN_ID:
        raise ValueError(f"token id {token_id} is out of vocabulary (1..{_MAX_TOKEN_ID})")
    if token_id >= _ASCII_ID_LIMIT:
        return UNKNOWN_PIECE
    chars = []
    while token_id:
        token_id, code = divmod(token_id, 128)
        if code == 0:
            raise ValueError("token id does not encode a text piece")
        chars.append(chr(code))
    return "".join(chars)


def output_token(seed: int, position: int) -> str:
    return _OUTPUT_WORDS[(seed + position * 7) % len(_OUTPUT_WORDS)]
