"""``python -m benchmarks.cachemodel``: why approximate and precise prefix routing tie or differ.

A small discrete-event model of the precise benchmark, with no processes: pods are the simulator's
own block pool (:class:`simulator.kvcache.BlockPool`, vLLM's LRU of freed blocks), approximate
routing is the EPP's own index (:class:`epp.plugins.prefix.PrefixIndex`, its routing history with
the autoTune capacity, the pod's whole KV), precise routing reads the pools themselves (what the
KV events tell the EPP). Each pod prefills one request at a time (FIFO, ``prefill_s`` per uncached
token), then holds the request's blocks for ``decode_s`` while it decodes. The scores are llm-d's
scorers: the prefix ratio, the waiting-queue min-max, 1 - KV usage.

It answers the questions the live benchmark cannot cheaply: for each routed request, did the router
*believe* the chosen pod held its prefix, and did the pod still hold it? ``stale`` is the share of
requests routed to a pod the router believed held at least half the prompt, where the pod held
less than half of it (it had evicted the prefix). The model is deterministic (a seed), so the
comparison between settings is exact; its TTFT is the model's, not the simulator's.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from epp.plugins.prefix import PrefixIndex
from simulator.kvcache import BlockPool, BlockTable


@dataclass(frozen=True, slots=True)
class ModelSetup:
    pods: int = 8
    kv_tokens: int = 16384
    block_tokens: int = 16
    groups: int = 96
    prefix_tokens: int = 3000
    question_tokens: int = 100
    zipf: float = 1.0
    requests: int = 384
    rate: float = 6.0
    prefill_s: float = 0.0002  # per uncached prompt token
    decode_s: float = 0.1  # how long a request holds its blocks after its prefill
    output_tokens: int = 16  # blocks a request grows while decoding
    # vLLM caches the generated tokens' full blocks too (simulator/outputblocks.py): they stay in
    # the pod's LRU after the request, where approximate's index does not count them. False models
    # them as private blocks, freed empty (the simulator before it matched vLLM here).
    output_cached: bool = True
    # prefix, queue, KV utilisation: llm-d's default profile (approximate) and the precise guide's.
    weights: tuple[float, float, float] = (3.0, 2.0, 2.0)
    precise_weights: tuple[float, float, float] = (2.0, 1.0, 1.0)
    replicas: int = 1  # approximate: EPP replicas, each deciding every replicas-th request
    capacity_factor: float = 1.0  # approximate: its LRU capacity over the pod's real KV
    seed: int = 1


@dataclass(slots=True)
class ModelResult:
    router: str
    hit_rate: float
    ttft_p50_s: float
    ttft_p90_s: float
    stale: float  # routed on a belief of >= half the prompt cached that the pod no longer held
    believed_hit_tokens: int
    actual_hit_tokens: int
    evictions: int


@dataclass(slots=True)
class _Pod:
    pool: BlockPool
    busy_until: float = 0.0
    waiting: int = 0  # routed, prefill not finished
    tables: list[BlockTable] = field(default_factory=list)


def _requests(setup: ModelSetup) -> list[tuple[float, int, list[int]]]:
    """(arrival, group, block ids): block ids of a group's prefix are shared, the question's unique."""
    rng = random.Random(setup.seed)
    prefix_blocks = setup.prefix_tokens // setup.block_tokens
    total_blocks = (setup.prefix_tokens + setup.question_tokens) // setup.block_tokens
    weights = [1 / (rank + 1) ** setup.zipf for rank in range(setup.groups)]
    picks = rng.choices(range(setup.groups), weights=weights, k=setup.requests)
    out = []
    now = 0.0
    unique = 10**9
    for group in picks:
        now += rng.expovariate(setup.rate)
        blocks = [group * 100_000 + i for i in range(prefix_blocks)]
        for _ in range(total_blocks - prefix_blocks):
            unique += 1
            blocks.append(unique)
        out.append((now, group, blocks))
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(setup: ModelSetup, router: str) -> ModelResult:
    """Route the workload with ``approximate``, ``precise`` or ``round-robin``."""
    capacity = setup.kv_tokens // setup.block_tokens
    pods = [_Pod(BlockPool(capacity)) for _ in range(setup.pods)]
    approx_capacity = max(1, int(capacity * setup.capacity_factor))
    replicas = [PrefixIndex(approx_capacity) for _ in range(setup.replicas)]
    events: list[tuple[float, int, int, int]] = []  # (time, seq, pod, table index): releases
    ttfts: list[float] = []
    hits = queries = believed_total = stale = 0
    output_ids = iter(range(-1, -(10**12), -1))  # unique keys, apart from the prompts' (>= 0)
    w_prefix, w_queue, w_kv = setup.precise_weights if router == "precise" else setup.weights
    ties = random.Random(setup.seed)  # max-score-picker breaks ties at random
    for number, (arrival, _group, blocks) in enumerate(_requests(setup)):
        while events and events[0][0] <= arrival:
            _, _, index, slot = heapq.heappop(events)
            pods[index].pool.release(pods[index].tables[slot])
        total = len(blocks)
        approx = replicas[number % setup.replicas]
        if router == "approximate":
            matched = approx.match_lengths(blocks)
            belief = [matched.get(str(i), 0) for i in range(setup.pods)]
        else:
            belief = [pod.pool.cached_prefix(blocks) for pod in pods]
        if router == "round-robin":
            choice = number % setup.pods
        else:
            queue = [pod.waiting for pod in pods]
            low, high = min(queue), max(queue)
            scores = []
            for i, pod in enumerate(pods):
                queue_score = 1.0 if high == low else (high - queue[i]) / (high - low)
                kv_score = 1 - pod.pool.usage
                scores.append(w_prefix * belief[i] / total + w_queue * queue_score + w_kv * kv_score)
            best = max(scores)
            choice = ties.choice([i for i, s in enumerate(scores) if s == best])
        pod = pods[choice]
        actual = pod.pool.cached_prefix(blocks)
        if belief[choice] * 2 >= total and actual * 2 < total:
            stale += 1
        believed_total += belief[choice] * setup.block_tokens
        approx.add(str(choice), blocks, approx_capacity)
        # FIFO prefill: the pool is read when the prefill starts (an approximation: the simulator
        # admits at the next step); blocks beyond capacity are not allocated (the model ignores
        # admission waits, which the simulator has).
        start = max(arrival, pod.busy_until)
        cached = min(pod.pool.cached_prefix(blocks), total - 1)
        table = BlockTable()
        pod.pool.acquire_prefix(table, blocks[:cached])
        grow = -(-setup.output_tokens // setup.block_tokens)
        need = min(total - cached + grow, pod.pool.allocatable)
        pod.pool.allocate(table, need)
        generated = setup.output_tokens // setup.block_tokens if setup.output_cached else 0
        pod.pool.commit(table, blocks[cached:] + [next(output_ids) for _ in range(generated)])
        prefill = (total - cached) * setup.block_tokens * setup.prefill_s
        pod.busy_until = start + prefill
        ttfts.append(pod.busy_until - arrival)
        hits += cached * setup.block_tokens
        queries += total * setup.block_tokens
        pod.tables.append(table)
        heapq.heappush(events, (pod.busy_until + setup.decode_s, number, choice, len(pod.tables) - 1))
        # What queue-scorer reads: requests whose prefill has not finished by now.
        for other in pods:
            other.waiting = 0
        for when, _, index, _slot in events:
            if when - setup.decode_s > arrival:
                pods[index].waiting += 1
    return ModelResult(
        router=router,
        hit_rate=hits / queries,
        ttft_p50_s=_percentile(ttfts, 0.5),
        ttft_p90_s=_percentile(ttfts, 0.9),
        stale=stale / setup.requests,
        believed_hit_tokens=believed_total,
        actual_hit_tokens=hits,
        evictions=sum(pod.pool.evictions for pod in pods),
    )


def _weights(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("three numbers: prefix,queue,kv")
    return parts[0], parts[1], parts[2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cachemodel", description=__doc__)
    defaults = ModelSetup()
    for name, value in asdict(defaults).items():
        if isinstance(value, tuple):
            continue
        if isinstance(value, bool):
            flag = f"--{name.replace('_', '-')}"
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument(
        "--weights", type=_weights, default=defaults.weights, help="approximate: prefix,queue,kv"
    )
    parser.add_argument("--precise-weights", type=_weights, default=defaults.precise_weights, help="the same")
    args = parser.parse_args(argv)
    setup = ModelSetup(**{k: getattr(args, k) for k in asdict(defaults)})
    results = [asdict(run(setup, router)) for router in ("round-robin", "approximate", "precise")]
    print(json.dumps({"setup": asdict(setup), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
