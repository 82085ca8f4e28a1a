"""Block keys equal vLLM 0.32's, checked against literals that vLLM's own request block hasher
produced (tests/epp/kvevents/make_golden.py, run under .venv-vllm; the command is in its docstring)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.kvevents.hashing import DEFAULT_NONE_HASH_SEED, HASH_ALGORITHMS, BlockHasher, DigestMemo, key_of

from .golden_cases import CASES

# Output of: PYTHONPATH=/tmp/xxh .venv-vllm/bin/python tests/epp/kvevents/make_golden.py
GOLDEN_KEYS = {
    "sha256-default-seed-bs16": [3262291359910021016, 7142137847444424233],
    "sha256-seed0-bs16": [7982712666671721126, 12675106281628537544],
    "sha256-large-ids-bs4": [16383462322165230526, 12198435923847256997],
    "sha256-cbor-default-seed-bs16": [2233398808101521225, 17911472383915781900],
    "sha256-cbor-seed-abc-bs128": [855617783879172684, 7887476166309592286],
    "xxhash-seed42-bs16": [12912258812974194634, 9263927631139055237],
    "xxhash-cbor-seed42-bs16": [6281950042741980566, 17900829223840199876],
    "sha256-salt-bs16": [12616911002861201973, 7015185682589215122],
    "sha256-cbor-salt-bs16": [1072837495201822809, 8035883249497252415],
    "sha256-lora-bs16": [9301989523681859457, 6753063059716599177],
    "sha256-cbor-lora-salt-bs16": [4500501690916515082, 2997702161957157398],
    "sha256-default-seed-bs128-600": [
        18368684083382348018,
        11039383723751462107,
        6262530670053226446,
        9707787961825231005,
    ],
}


def test_every_case_has_a_golden_value() -> None:
    assert set(GOLDEN_KEYS) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_keys_equal_vllm(name: str) -> None:
    algorithm, seed, block_size, tokens, lora, salt = CASES[name]
    hasher = BlockHasher(algorithm, block_size, seed)
    assert hasher.block_keys(tokens, lora=lora, cache_salt=salt) == GOLDEN_KEYS[name]


def test_only_full_blocks_are_hashed_and_max_blocks_truncates() -> None:
    hasher = BlockHasher("sha256", 16)
    assert hasher.block_keys(list(range(15))) == []
    full = hasher.block_keys(list(range(40)))
    assert len(full) == 2
    assert hasher.block_keys(list(range(40)), max_blocks=1) == full[:1]


def test_keys_chain_over_the_whole_prefix() -> None:
    hasher = BlockHasher("sha256_cbor", 4)
    a = hasher.block_keys([1, 2, 3, 4, 5, 6, 7, 8])
    b = hasher.block_keys([9, 2, 3, 4, 5, 6, 7, 8])  # same second block, different first
    assert a[1] != b[1]
    assert hasher.block_keys([1, 2, 3, 4, 5, 6, 7, 9])[0] == a[0]


def test_default_seed_is_vllms_and_salt_only_changes_the_chain_from_block_zero() -> None:
    assert BlockHasher("sha256").seed == DEFAULT_NONE_HASH_SEED == "vllm-none-hash"
    hasher = BlockHasher("sha256", 4)
    plain = hasher.block_keys(list(range(8)))
    salted = hasher.block_keys(list(range(8)), cache_salt="x")
    assert plain[0] != salted[0] and plain[1] != salted[1]


def test_key_is_the_low_64_bits_of_the_digest() -> None:
    hasher = BlockHasher("sha256", 4)
    digests = hasher.digests([1, 2, 3, 4])
    assert hasher.block_keys([1, 2, 3, 4]) == [int.from_bytes(digests[0], "big") & (2**64 - 1)]
    assert key_of(bytes(range(32))) == int.from_bytes(bytes(range(24, 32)), "big")


def test_verify_stored_detects_a_configuration_mismatch() -> None:
    tokens = list(range(32))
    pod = BlockHasher("sha256", 16)
    keys = pod.block_keys(tokens)
    assert pod.verify_stored(keys, tokens, 16)
    assert not BlockHasher("sha256_cbor", 16).verify_stored(keys, tokens, 16)
    assert not BlockHasher("sha256", 16, seed="1").verify_stored(keys, tokens, 16)
    assert not BlockHasher("sha256", 8).verify_stored(keys, tokens, 16)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        BlockHasher("md5")
    with pytest.raises(ValueError, match="block size"):
        BlockHasher("sha256", 0)
    for algorithm in HASH_ALGORITHMS:
        if algorithm.startswith("xxhash"):
            with pytest.raises(ValueError, match="PYTHONHASHSEED"):
                BlockHasher(algorithm)


@settings(deadline=None, max_examples=60)
@given(
    st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=200),
    st.sampled_from(["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]),
    st.sampled_from([None, ("sql", "/adapters/sql")]),
    st.sampled_from([None, "tenant-1"]),
)
def test_the_memo_and_lazy_keys_equal_the_plain_ones(
    tokens: list[int], algorithm: str, lora: tuple[str, str] | None, salt: str | None
) -> None:
    plain = BlockHasher(algorithm, 4, "7")
    memo = BlockHasher(algorithm, 4, "7", DigestMemo(max_entries=8))  # tiny: generations rotate
    expected = plain.block_keys(tokens, lora=lora, cache_salt=salt)
    assert expected == [key_of(d) for d in plain.digests(tokens, lora=lora, cache_salt=salt)]
    for _ in range(2):  # cold, then from the memo
        assert memo.block_keys(tokens, lora=lora, cache_salt=salt) == expected
    assert list(memo.iter_keys(tokens, lora=lora, cache_salt=salt)) == expected
    assert memo.block_keys(tokens, lora=lora, cache_salt=salt, max_blocks=3) == expected[:3]
    assert memo.memo is not None and len(memo.memo) <= 8


def test_ids_beyond_32_bits_skip_the_memo_with_the_same_keys() -> None:
    tokens = [2**40, 1, 2, 3, 4, 5, 6, 7]
    memoized = BlockHasher("sha256", 4, memo=DigestMemo())
    assert memoized.block_keys(tokens) == BlockHasher("sha256", 4).block_keys(tokens)


@pytest.mark.parametrize("name", sorted(CASES))
def test_memoized_keys_equal_vllm(name: str) -> None:
    algorithm, seed, block_size, tokens, lora, salt = CASES[name]
    hasher = BlockHasher(algorithm, block_size, seed, DigestMemo())
    assert hasher.block_keys(tokens, lora=lora, cache_salt=salt) == GOLDEN_KEYS[name]


@settings(deadline=None, max_examples=40)
@given(st.integers(min_value=0, max_value=120), st.integers(min_value=0, max_value=120), st.randoms())
def test_prompts_that_share_a_prefix_with_a_recent_one_get_the_plain_keys(
    diverge: int, extra: int, rng: random.Random
) -> None:
    """The chain cache: a prompt that starts like a remembered one (for any number of blocks, then
    anything) reuses the shared blocks' keys and hashes the rest; each result equals plain hashing."""
    base = [rng.randrange(2**32) for _ in range(400)]  # 100 blocks of 4
    other = base[:diverge] + [rng.randrange(2**32) for _ in range(extra)]
    plain = BlockHasher("sha256_cbor", 4, "1")
    memo = BlockHasher("sha256_cbor", 4, "1", DigestMemo(max_entries=64, chains=2))
    for tokens in (base, other, base[: 4 * 30], other, base):
        assert memo.block_keys(tokens) == plain.block_keys(tokens)
    walked = memo.iter_keys(other)
    assert [next(walked, None) for _ in range(3)] == (plain.block_keys(other) + [None] * 3)[:3]
    walked.close()  # stopped early: what it computed is remembered, and still exact
    assert memo.block_keys(other) == plain.block_keys(other)
