import pytest

from simulator.kvcache import BlockPool, BlockTable, OutOfBlocks


def test_shared_prefix_blocks_are_reference_counted():
    pool = BlockPool(10)
    first, second = BlockTable(), BlockTable()
    pool.allocate(first, 3)
    pool.commit(first, [11, 12, 13])
    assert pool.cached_prefix([11, 12, 99]) == 2

    pool.acquire_prefix(second, [11, 12])
    assert pool.blocks_in_use == 3  # shared, not copied
    pool.release(first)
    assert pool.blocks_in_use == 2  # 11, 12 still held by the second sequence
    assert pool.cached_prefix([11, 12, 13]) == 3  # 13 is free but still cached
    pool.release(second)
    assert pool.blocks_in_use == 0
    assert pool.usage == 0.0


def test_eviction_takes_empty_blocks_first_then_least_recently_freed():
    pool = BlockPool(4)
    old, new = BlockTable(), BlockTable()
    pool.allocate(old, 2)
    pool.commit(old, [1, 2])
    pool.release(old)  # tail first: 2 is older in the LRU than 1
    pool.allocate(new, 2)  # two empty blocks left: nothing evicted
    assert pool.evictions == 0
    assert pool.cached_prefix([1, 2]) == 2
    pool.allocate(new, 1)
    assert pool.evictions == 1
    assert pool.contains(1) and not pool.contains(2)  # the deeper block went first


def test_usage_counts_held_blocks_only():
    pool = BlockPool(8)
    table = BlockTable()
    pool.allocate(table, 2)
    assert pool.usage == pytest.approx(0.25)
    pool.commit(table, [5, 6])
    pool.release(table)
    assert pool.usage == 0.0
    assert pool.allocatable == 8  # cached-but-free blocks can be reused


def test_allocation_beyond_capacity_is_refused():
    pool = BlockPool(2)
    table = BlockTable()
    pool.allocate(table, 2)
    with pytest.raises(OutOfBlocks, match="need 1 blocks, 0 allocatable"):
        pool.allocate(BlockTable(), 1)


def test_commit_of_a_hash_someone_else_cached_keeps_a_private_duplicate():
    pool = BlockPool(6)
    a, b = BlockTable(), BlockTable()
    pool.allocate(a, 1)
    pool.allocate(b, 1)
    pool.commit(a, [7])
    pool.commit(b, [7])
    assert (a.hashed, b.hashed, b.anonymous) == ([7], [], 1)
    pool.release(a)
    pool.release(b)
    assert pool.blocks_in_use == 0


class Recorder:
    def __init__(self) -> None:
        self.stored: list[list[int]] = []
        self.removed: list[list[int]] = []

    def blocks_stored(self, hashes) -> None:
        self.stored.append(list(hashes))

    def blocks_removed(self, hashes) -> None:
        self.removed.append(list(hashes))


def test_observer_sees_new_cached_blocks_and_evictions_only():
    pool = BlockPool(4)
    pool.observer = recorder = Recorder()
    first = BlockTable()
    pool.allocate(first, 3)
    pool.commit(first, [11, 12, 13])
    assert recorder.stored == [[11, 12, 13]]
    second = BlockTable()
    pool.acquire_prefix(second, [11])  # a cache hit stores nothing
    pool.allocate(second, 1)
    pool.commit(second, [11, 14])  # 11 is already cached: only 14 is new
    assert recorder.stored[-1] == [14]
    pool.release(first)
    pool.release(second)
    third = BlockTable()
    pool.allocate(third, 2)  # no empty block left: the two least recently freed go
    assert recorder.removed == [[13, 12]]
