"""Inputs of the golden block-key cases (pure data: imported by make_golden.py under .venv-vllm and by
test_hashing.py under .venv)."""

from __future__ import annotations

# name -> (algorithm, PYTHONHASHSEED or None, block size, token ids, LoRA (name, path) or None, cache_salt)
CASES: dict[str, tuple[str, str | None, int, list[int], tuple[str, str] | None, str | None]] = {
    "sha256-default-seed-bs16": ("sha256", None, 16, list(range(40)), None, None),
    "sha256-seed0-bs16": ("sha256", "0", 16, list(range(40)), None, None),
    "sha256-large-ids-bs4": (
        "sha256",
        None,
        4,
        [0, 255, 256, 65535, 65536, 151_000, 2**31 - 1, 7, 9],
        None,
        None,
    ),
    "sha256-cbor-default-seed-bs16": ("sha256_cbor", None, 16, list(range(40)), None, None),
    "sha256-cbor-seed-abc-bs128": ("sha256_cbor", "abc", 128, [i * 7 % 4096 for i in range(300)], None, None),
    "xxhash-seed42-bs16": ("xxhash", "42", 16, list(range(40)), None, None),
    "xxhash-cbor-seed42-bs16": ("xxhash_cbor", "42", 16, list(range(40)), None, None),
    "sha256-salt-bs16": ("sha256", None, 16, list(range(40)), None, "tenant-a"),
    "sha256-cbor-salt-bs16": ("sha256_cbor", None, 16, list(range(40)), None, "tenant-a"),
    "sha256-lora-bs16": ("sha256", None, 16, list(range(40)), ("sql-adapter", "/adapters/sql"), None),
    "sha256-cbor-lora-salt-bs16": ("sha256_cbor", None, 16, list(range(40)), ("sql", "/a/sql"), "s1"),
    "sha256-default-seed-bs128-600": (
        "sha256",
        None,
        128,
        [(i * 31 + 5) % 4096 for i in range(600)],
        None,
        None,
    ),
}
