"""The index applies vLLM's events exactly (copies, media, clears), stays within its bound, and
answers the longest cached prefix per endpoint like vLLM's own cache lookup."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.kvevents.index import ApplyResult, KVBlockIndex
from epp.kvevents.wire import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch

A, B, C = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"


def stored(*keys: int, medium: str | None = "GPU", group: int | None = 0) -> BlockStored:
    return BlockStored(tuple(keys), None, (), 16, medium=medium, group_idx=group)


def test_longest_prefix_per_endpoint() -> None:
    index = KVBlockIndex()
    index.store(A, [1, 2, 3, 4])
    index.store(B, [1, 2])
    index.store(C, [2, 3, 4])  # no block 0: no hit at all, as in vLLM
    assert index.longest_prefix([1, 2, 3, 4, 5]) == {A: 4, B: 2}
    assert index.longest_prefix([1, 2, 3, 4]) == {A: 4, B: 2}
    assert index.longest_prefix([9]) == {}
    assert index.longest_prefix([]) == {}


def test_a_hole_stops_the_prefix_even_when_later_blocks_are_held() -> None:
    index = KVBlockIndex()
    index.store(A, [1, 2, 3, 4])
    index.remove(A, [2])
    assert index.longest_prefix([1, 2, 3, 4]) == {A: 1}


def test_duplicate_physical_blocks_need_as_many_removals() -> None:
    index = KVBlockIndex()
    index.store(A, [1, 2])
    index.store(A, [1, 2])  # a second physical copy (vLLM does not de-duplicate)
    assert index.copies(A, 1) == 2 and index.size == 2
    assert index.remove(A, [1, 2]) == 0
    assert index.longest_prefix([1, 2]) == {A: 2}
    index.remove(A, [1, 2])
    assert index.longest_prefix([1, 2]) == {} and index.size == 0
    assert index.remove(A, [1]) == 1  # unknown removal: a counted no-op


def test_media_are_separate_and_a_prefix_may_span_them() -> None:
    index = KVBlockIndex()
    index.store(A, [1, 2], "GPU")
    index.store(A, [3], "CPU")
    assert index.blocks(A, "gpu") == {1, 2} and index.blocks(A, "cpu") == {3} and index.blocks(A) == {1, 2, 3}
    assert index.longest_prefix([1, 2, 3]) == {A: 3}
    assert index.weighted_prefix([1, 2, 3], {"gpu": 1.0, "cpu": 0.8}) == {A: pytest.approx(2.8)}
    index.remove(A, [3], "GPU")  # removal from another medium does not touch the CPU copy
    assert index.holds(A, 3, "CPU")


def test_weighted_prefix_single_medium() -> None:
    index = KVBlockIndex()
    index.store(A, [1, 2])
    assert index.weighted_prefix([1, 2, 3], {"gpu": 0.5}) == {A: 1.0}


def test_events_apply_and_all_blocks_cleared_drops_only_that_endpoint() -> None:
    index = KVBlockIndex()
    result = index.apply_batch(
        A, EventBatch(0.0, (stored(1, 2, 3), stored(9, medium="CPU"), BlockRemoved((3,), "GPU", 0)))
    )
    assert (result.stored, result.removed) == (4, 1)
    index.apply_batch(B, EventBatch(0.0, (stored(1),)))
    assert index.longest_prefix([1, 2]) == {A: 2, B: 1}
    cleared = index.apply_batch(A, EventBatch(0.0, (AllBlocksCleared(),)))
    assert cleared.cleared == 1
    assert index.blocks(A) == set() and index.longest_prefix([1]) == {B: 1} and index.size == 1


def test_other_kv_cache_groups_are_skipped() -> None:
    index = KVBlockIndex(groups=(0,))
    result = index.apply_batch(
        A, EventBatch(0.0, (stored(1, group=1), stored(2, group=None), BlockRemoved((2,), None, 1)))
    )
    assert result.skipped_group == 2 and index.blocks(A) == {2}


def test_remove_endpoint_frees_its_slot_for_reuse() -> None:
    index = KVBlockIndex()
    index.store(A, [1])
    index.store(B, [1])
    index.remove_endpoint(A)
    assert index.endpoints() == {B} and index.longest_prefix([1]) == {B: 1}
    index.store(C, [1, 2])  # reuses A's slot; A's old bits are gone
    assert index.longest_prefix([1, 2]) == {B: 1, C: 2}


def test_bound_evicts_least_recently_stored_of_the_largest_holder() -> None:
    index = KVBlockIndex(max_entries=10)
    index.store(A, range(100, 108))
    index.store(B, range(200, 202))
    index.store(A, [100])  # touched: now A's most recent
    index.store(B, [202, 203, 204])  # 13 entries > 10: A (8 entries) loses its oldest
    assert index.size == 10 and index.evictions == 3
    assert index.blocks(A) == {100, 104, 105, 106, 107}
    assert index.blocks(B) == {200, 201, 202, 203, 204}
    assert index.distinct_blocks == 10


def test_bad_bound_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        KVBlockIndex(max_entries=0)


class Reference:
    """The obvious model: per (endpoint, medium) a multiset of keys; prefix by scanning."""

    def __init__(self) -> None:
        self.copies: dict[tuple[str, str, int], int] = {}

    def store(self, endpoint: str, keys: list[int], medium: str) -> None:
        for key in keys:
            self.copies[endpoint, medium, key] = self.copies.get((endpoint, medium, key), 0) + 1

    def remove(self, endpoint: str, keys: list[int], medium: str) -> None:
        for key in keys:
            count = self.copies.get((endpoint, medium, key), 0)
            if count > 1:
                self.copies[endpoint, medium, key] = count - 1
            else:
                self.copies.pop((endpoint, medium, key), None)

    def clear(self, endpoint: str) -> None:
        self.copies = {k: v for k, v in self.copies.items() if k[0] != endpoint}

    def prefix(self, keys: list[int]) -> dict[str, int]:
        out = {}
        for endpoint in {k[0] for k in self.copies}:
            depth = 0
            for key in keys:
                if not any((endpoint, m, key) in self.copies for m in ("gpu", "cpu")):
                    break
                depth += 1
            if depth:
                out[endpoint] = depth
        return out


_ops = st.lists(
    st.tuples(
        st.sampled_from(["store", "remove", "clear", "drop"]),
        st.sampled_from([A, B, C]),
        st.lists(st.integers(0, 7), min_size=1, max_size=5),
        st.sampled_from(["gpu", "cpu"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_ops, st.lists(st.integers(0, 7), min_size=1, max_size=6))
def test_matches_the_reference_model(ops: list[tuple[str, str, list[int], str]], query: list[int]) -> None:
    index, reference = KVBlockIndex(), Reference()
    for op, endpoint, keys, medium in ops:
        if op == "store":
            index.store(endpoint, keys, medium)
            reference.store(endpoint, keys, medium)
        elif op == "remove":
            index.remove(endpoint, keys, medium)
            reference.remove(endpoint, keys, medium)
        elif op == "clear":
            index.clear(endpoint)
            reference.clear(endpoint)
        else:
            index.remove_endpoint(endpoint)
            reference.clear(endpoint)
    assert index.longest_prefix(query) == reference.prefix(query)
    assert index.size == len(reference.copies)
    assert set(index.media()) == set(index._masks) == {medium for _, medium, _ in reference.copies}
    for (endpoint, medium, key), count in reference.copies.items():
        assert index.copies(endpoint, key, medium) == count


def test_bound_holds_under_random_churn() -> None:
    rng = random.Random(7)
    index = KVBlockIndex(max_entries=500)
    for step in range(2000):
        endpoint = rng.choice([A, B, C])
        if rng.random() < 0.7:
            index.store(endpoint, [rng.randrange(5000) for _ in range(8)])
        else:
            index.remove(endpoint, [rng.randrange(5000) for _ in range(8)])
        assert index.size <= 500, step
    assert index.evictions > 0
    assert index.size == sum(index.endpoint_size(e) for e in (A, B, C))


def test_media_that_empty_are_forgotten() -> None:
    # A pod naming a fresh medium per event must not leave one empty map per name behind: that
    # grew memory without bound and made every lookup walk all of them.
    index = KVBlockIndex()
    for i in range(200):
        index.store(A, [i], f"tier{i}")
        index.remove(A, [i], f"tier{i}")
    index.store(B, [1], "x")
    index.clear(B)
    small = KVBlockIndex(max_entries=1)
    small.store(A, [1], "old")
    small.store(A, [2], "new")  # evicts "old"'s only entry
    assert index.size == 0 and index.media() == [] and not index._masks
    assert all(not media for media in index._held.values())
    assert small.media() == ["new"] and set(small._masks) == {"new"}


def test_media_past_the_limit_are_refused_and_counted() -> None:
    index = KVBlockIndex(max_media=2)
    index.store(A, [1], "gpu")
    index.store(A, [2], "cpu")
    result = ApplyResult()
    index.apply(A, BlockStored((3, 4), None, (), 16, medium="junk"), result)
    assert (result.stored, result.skipped_medium) == (0, 2)
    assert not index.holds(A, 3, "junk") and sorted(index.media()) == ["cpu", "gpu"]
    index.remove(A, [2], "cpu")  # a slot frees up once a medium empties
    assert index.store(A, [3], "junk") == 0 and index.holds(A, 3, "junk")
    with pytest.raises(ValueError, match="max_media"):
        KVBlockIndex(max_media=0)
