"""Measure a running vLLM server and print the simulator parameters that reproduce it.

    .venv/bin/python tools/calibrate_sim.py --url http://127.0.0.1:8100 --model tiny

The server should run with prefix caching on and nothing else loading it. What is measured, and
how each parameter of :mod:`simulator.params` follows:

1. Latency of one-token completions on *unique* prompts of two lengths (nothing cached): the slope
   of the medians over the prompt-token difference is the cost of one more prompt token.
   ``prefill_per_token_s`` is the part a cached prefix saves: the same long prompt repeated
   (only its last partial block recomputed) against unique ones; ``tokenize_per_token_s`` is the
   rest of the slope, paid per prompt token even when cached (tokenising, block hashing).
2. ``step_overhead_s`` and ``decode_per_seq_s``: median decode time per token of one request
   alone, then of ``--batch`` concurrent ones: gap = step_overhead + decode_per_seq x batch.
3. ``request_overhead_s``: median latency of a one-token completion on a short prompt minus one
   engine step and its per-token costs (HTTP and response building are the rest).

Prompt lengths come from the server's own ``usage.prompt_tokens``. Timing uses the client's clock,
so the numbers include loopback HTTP, as the simulator's do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import time
import uuid

import aiohttp

_VOCABULARY = (
    "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega import return yield class "
    "def while for with lambda async await value index table block cache route model token"
)
WORDS = tuple(_VOCABULARY.split())


def unique_prompt(rng: random.Random, words: int) -> str:
    # The leading nonce makes the very first block differ, so no run hits an earlier run's cache.
    return uuid.uuid4().hex + " " + " ".join(rng.choice(WORDS) for _ in range(words))


async def one_token(session: aiohttp.ClientSession, url: str, model: str, prompt: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.post(
        f"{url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1}
    ) as response:
        response.raise_for_status()
        body = await response.json()
    return time.perf_counter() - started, int(body["usage"]["prompt_tokens"])


async def decode_time_per_token(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, tokens: int
) -> float:
    """(latency of ``tokens`` output tokens - latency of one) / (tokens - 1), same prompt, cached.

    Streamed arrival times cannot be used: vLLM 0.32 on CPU flushed a 64-token stream of the tiny
    model in two writes, so per-event gaps measure the socket, not the engine.
    """
    await one_token(session, url, model, prompt)  # cache the prompt: both timings below hit it
    first, _ = await one_token(session, url, model, prompt)
    request = {"model": model, "prompt": prompt, "max_tokens": tokens, "ignore_eos": True}
    started = time.perf_counter()
    async with session.post(f"{url}/v1/completions", json=request) as response:
        response.raise_for_status()
        body = await response.json()
    if body["usage"]["completion_tokens"] != tokens:
        raise RuntimeError(f"asked for {tokens} tokens, got {body['usage']['completion_tokens']}")
    return (time.perf_counter() - started - first) / (tokens - 1)


async def calibrate(url: str, model: str, samples: int, batch: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # warm-up: first requests pay one-off compilation
            await one_token(session, url, model, unique_prompt(rng, 400))
        short = [await one_token(session, url, model, unique_prompt(rng, 4)) for _ in range(samples)]
        small = [await one_token(session, url, model, unique_prompt(rng, 150)) for _ in range(samples)]
        large = [await one_token(session, url, model, unique_prompt(rng, 900)) for _ in range(samples)]
        large_prompt = unique_prompt(rng, 900)
        # A repeated long prompt: only its last (partial) block is computed; the model predicts this.
        repeated = [await one_token(session, url, model, large_prompt) for _ in range(samples)]
        alone = [
            await decode_time_per_token(session, url, model, unique_prompt(rng, 20), 64)
            for _ in range(max(3, samples // 5))
        ]
        crowd: list[float] = []
        for _ in range(3):
            crowd += await asyncio.gather(
                *(
                    decode_time_per_token(session, url, model, unique_prompt(rng, 20), 64)
                    for _ in range(batch)
                )
            )
    median = statistics.median
    block_size = await server_block_size(url)
    n_short, n_small, n_large = (median(t for _, t in xs) for xs in (short, small, large))
    t_short, t_small, t_large, t_repeated = (
        median(s for s, _ in xs) for xs in (short, small, large, repeated)
    )
    # decode gap = step_overhead + decode_per_seq x batch
    gap_alone, gap_crowd = median(alone), median(crowd)
    decode_per_seq = max(0.0, (gap_crowd - gap_alone) / (batch - 1))
    step_overhead = max(0.0, gap_alone - decode_per_seq)
    # A repeated prompt recomputes only its last partial block; the difference to the same-length
    # unique prompt is pure prefill compute.
    recomputed = n_large % block_size or block_size
    prefill_per_token = max(0.0, (t_large - t_repeated) / (n_large - recomputed))
    # What grows with prompt length even when cached (tokenising, block hashing) is the rest.
    per_prompt_token = max(0.0, (t_large - t_small) / (n_large - n_small) - prefill_per_token)
    request_overhead = max(0.0, t_short - step_overhead - (per_prompt_token + prefill_per_token) * n_short)
    return {
        "request_overhead_s": round(request_overhead, 6),
        "tokenize_per_token_s": round(per_prompt_token, 9),
        "step_overhead_s": round(step_overhead, 6),
        "prefill_per_token_s": round(prefill_per_token, 9),
        "decode_per_seq_s": round(decode_per_seq, 7),
        "_server_block_size": block_size,
        "_short": {"prompt_tokens": n_short, "latency_s": round(t_short, 6)},
        "_small_unique": {"prompt_tokens": n_small, "latency_s": round(t_small, 6)},
        "_large_unique": {"prompt_tokens": n_large, "latency_s": round(t_large, 6)},
        "_large_repeated": {"prompt_tokens": n_large, "latency_s": round(t_repeated, 6)},
        "_decode_per_token_s": {"batch1": round(gap_alone, 6), f"batch{batch}": round(gap_crowd, 6)},
    }


async def server_block_size(url: str) -> int:
    """The KV block size the server reports in vllm:cache_config_info."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    match = re.search(r'^vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("the server's /metrics has no vllm:cache_config_info block_size")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8100")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8, help="concurrent streams for the decode slope")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.batch < 2 or args.samples < 1:
        parser.error("--batch must be >= 2 and --samples >= 1")
    print(
        json.dumps(
            asyncio.run(calibrate(args.url.rstrip("/"), args.model, args.samples, args.batch, args.seed)),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
