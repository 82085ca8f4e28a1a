"""Hot-path measurements of the precise prefix core (not a test; numbers go in the report and
BENCHMARKS.md, never into assertions). Run from the repository root:

    PYTHONPATH=$PWD .venv/bin/python tests/epp/kvevents/bench_kvevents.py [build/tiny-llama]
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from epp.kvevents.hashing import BlockHasher
from epp.kvevents.index import KVBlockIndex
from epp.kvevents.wire import BlockStored, EventBatch, decode_batch, encode_batch


def best_of(fn: Callable[[], object], repeat: int = 7, number: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def main() -> None:
    rng = random.Random(0)
    tokens = [rng.randrange(128_000) for _ in range(8192)]
    print("block keys for an 8192-token prompt (best of 7):")
    for algorithm in ("sha256", "sha256_cbor"):
        for block in (16, 64, 128):
            hasher = BlockHasher(algorithm, block)
            t = best_of(lambda hasher=hasher: hasher.block_keys(tokens))
            print(
                f"  {algorithm:12s} block {block:3d}: {t * 1e3:6.2f} ms "
                f"({t / (8192 // block) * 1e6:.2f} us/block)"
            )

    model = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/tiny-llama")
    if (model / "tokenizer.json").is_file():
        from epp.kvevents.tokenization import PromptTokenizer

        tok = PromptTokenizer.from_dir(model)
        text = Path(__file__).read_text() * 4
        n = len(tok.request_tokens({"prompt": text}))
        t = best_of(lambda: tok.request_tokens({"prompt": text}))
        chat = {"messages": [{"role": "system", "content": text}, {"role": "user", "content": "q"}]}
        tc = best_of(lambda: tok.request_tokens(chat))
        print(f"tokenize {n} tokens ({model.name}): completion {t * 1e3:.2f} ms, chat {tc * 1e3:.2f} ms")

    endpoints = [f"10.0.0.{i}:8000" for i in range(8)]
    index = KVBlockIndex(max_entries=10_000_000)
    prompt = BlockHasher("sha256", 16).block_keys(tokens)  # 512 blocks
    for i, endpoint in enumerate(endpoints):
        index.store(endpoint, prompt[: len(prompt) * (i + 1) // len(endpoints)])  # 1/8 ... 8/8 of it
        index.store(endpoint, [rng.getrandbits(64) for _ in range(50_000)])
    t = best_of(lambda: index.longest_prefix(prompt), number=50)
    miss = [rng.getrandbits(64) for _ in range(512)]
    tm = best_of(lambda: index.longest_prefix(miss), number=50)
    print(
        f"longest_prefix, 512 keys, 8 endpoints x ~50k entries: {t * 1e6:.0f} us "
        f"(all miss: {tm * 1e6:.1f} us)"
    )

    batches = []
    for _ in range(200):
        keys = tuple(rng.getrandbits(64) for _ in range(16))
        batches.append(
            encode_batch(EventBatch(0.0, (BlockStored(keys, None, tuple(range(16 * 16)), 16, medium="GPU"),)))
        )
    target = KVBlockIndex()

    def apply_all() -> None:
        for payload in batches:
            target.apply_batch("10.0.0.1:8000", decode_batch(payload))

    t = best_of(apply_all, number=1)
    print(f"decode+apply: {t / 200 * 1e6:.0f} us per batch of 16 blocks ({200 * 16 / t:,.0f} blocks/s)")

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    big = KVBlockIndex(max_entries=10_000_000)
    for endpoint in endpoints:
        big.store(endpoint, [rng.getrandbits(64) for _ in range(125_000)])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(
        f"memory: {(after - before) / big.size:.0f} bytes per entry ({big.size:,} entries, all keys distinct)"
    )


if __name__ == "__main__":
    main()
