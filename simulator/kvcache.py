"""The KV block pool with a prefix cache, modelled on vLLM's: fixed capacity, hashed full blocks,
reference counts, and LRU eviction of blocks nobody is using.

A block is in one of three states: in use by at least one sequence (hashed or anonymous), free but
still holding a cached prefix (evictable, kept in LRU order), or free and empty. New blocks come from
the empty ones first, then by evicting the least recently freed cached block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class BlockTable:
    """The blocks one sequence holds: hashed prefix blocks (shared) plus anonymous ones (its own)."""

    hashed: list[int] = field(default_factory=list)
    anonymous: int = 0

    @property
    def size(self) -> int:
        return len(self.hashed) + self.anonymous


class PoolObserver(Protocol):
    """Told which cached blocks the pool gains and evicts (the KV-event publisher)."""

    def blocks_stored(self, hashes: Sequence[int]) -> None: ...
    def blocks_removed(self, hashes: Sequence[int]) -> None: ...


class OutOfBlocks(Exception):
    """Raised when an allocation needs more free blocks than the pool has."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._refs: dict[int, int] = {}  # hashed blocks in use -> reference count
        self._evictable: OrderedDict[int, None] = OrderedDict()  # hashed free blocks, oldest first
        self._anonymous_in_use = 0
        self.evictions = 0
        self.observer: PoolObserver | None = None

    # --- queries -------------------------------------------------------------------------------

    @property
    def blocks_in_use(self) -> int:
        return len(self._refs) + self._anonymous_in_use

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences (what vllm:kv_cache_usage_perc reports)."""
        return self.blocks_in_use / self.num_blocks

    @property
    def allocatable(self) -> int:
        """Blocks a new allocation may take: empty ones plus evictable cached ones."""
        return self.num_blocks - self.blocks_in_use

    def cached_prefix(self, hashes: list[int]) -> int:
        """How many leading blocks of ``hashes`` are in the cache (in use or evictable)."""
        matched = 0
        for block_hash in hashes:
            if block_hash not in self._refs and block_hash not in self._evictable:
                break
            matched += 1
        return matched

    def free_cached(self, hashes: list[int]) -> int:
        """How many of these cached blocks nobody holds: sharing them takes them out of the
        allocatable count (vLLM counts them the same way when it admits a request:
        vllm/v1/core/single_type_kv_cache_manager.py, get_num_blocks_to_allocate)."""
        return sum(1 for block_hash in hashes if block_hash in self._evictable)

    def contains(self, block_hash: int) -> bool:
        return block_hash in self._refs or block_hash in self._evictable

    # --- allocation ----------------------------------------------------------------------------

    def acquire_prefix(self, table: BlockTable, hashes: list[int]) -> None:
        """Share cached blocks: take a reference on each (they stop being evictable)."""
        for block_hash in hashes:
            if block_hash in self._evictable:
                del self._evictable[block_hash]
                self._refs[block_hash] = 1
            else:
                self._refs[block_hash] += 1
            table.hashed.append(block_hash)

    def allocate(self, table: BlockTable, count: int) -> None:
        if count > self.allocatable:
            raise OutOfBlocks(f"need {count} blocks, {self.allocatable} allocatable of {self.num_blocks}")
        self._make_room(count)
        self._anonymous_in_use += count
        table.anonymous += count

    def commit(self, table: BlockTable, hashes: list[int]) -> None:
        """The sequence computed these full blocks: anonymous blocks become cached prefix blocks.

        A hash another sequence committed in the meantime stays a private duplicate (vLLM keeps
        duplicates too rather than copying), so it costs capacity but no correctness.
        """
        stored = []
        for block_hash in hashes:
            if table.anonymous == 0:
                break
            if block_hash in self._refs or block_hash in self._evictable:
                continue
            table.anonymous -= 1
            self._anonymous_in_use -= 1
            self._refs[block_hash] = 1
            table.hashed.append(block_hash)
            stored.append(block_hash)
        if stored and self.observer is not None:
            self.observer.blocks_stored(stored)

    def release(self, table: BlockTable) -> None:
        """Drop the sequence's references. Tail blocks are freed first so they are evicted first."""
        for block_hash in reversed(table.hashed):
            remaining = self._refs[block_hash] - 1
            if remaining:
                self._refs[block_hash] = remaining
            else:
                del self._refs[block_hash]
                self._evictable[block_hash] = None
        self._anonymous_in_use -= table.anonymous
        table.hashed.clear()
        table.anonymous = 0

    def _make_room(self, count: int) -> None:
        empty = self.num_blocks - self.blocks_in_use - len(self._evictable)
        evicted = [self._evictable.popitem(last=False)[0] for _ in range(max(0, count - empty))]
        self.evictions += len(evicted)
        if evicted and self.observer is not None:
            self.observer.blocks_removed(evicted)
