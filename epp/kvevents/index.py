"""Which endpoint holds which KV block, from vLLM's KV events; longest cached prefix per endpoint.

Keys are the 64-bit block keys vLLM publishes (see :mod:`epp.kvevents.hashing`), so a request's
keys, computed from its prompt tokens, are looked up directly.

Layout, chosen for the lookup (the per-request hot path):

* every endpoint gets a small integer *slot*; for each medium (``gpu``, ``cpu``, ...) a dict maps
  ``key → bitmask of slots`` holding it. The longest-prefix walk ANDs masks block by block
  (C-level integer operations, independent of the number of endpoints) and stops as soon as no
  endpoint is left;
* per (endpoint, medium), a dict ``key → copies`` in least-recently-stored order (dict insertion
  order; a repeated store moves the key to the end). It gives removal, per-endpoint clears and the
  memory bound without scanning the whole index.

``copies`` counts stores minus removals, because vLLM can hold two physical blocks with the same
hash (``BlockHashToBlockMap`` does not de-duplicate, e.g. two requests computing the same prefix
chunk concurrently) and then publishes a ``BlockRemoved`` per physical block. llm-d counts the same
way (``pkg/kvevents/event_dedup_filter.go``). A removal of an unknown key is a no-op (counted).

vLLM answers a prefix-cache hit with the longest run of consecutive cached blocks from block 0
(``find_longest_cache_hit`` stops at the first miss), so that is what :meth:`KVBlockIndex.longest_prefix`
returns, with no assumption that cached sets are prefix-closed.

Bound: at most ``max_entries`` (key, endpoint, medium) entries. Past it, the endpoint holding the
most entries loses its least recently stored one (counted in :attr:`KVBlockIndex.evictions`). vLLM
itself reports every eviction, so the bound only bites when events were lost or the cap is set
below the pods' real capacity; a dropped entry can only make the index under-report (a miss, never
a false hit). The media are bounded too (``max_media`` live at once, default 8; vLLM names three),
because the medium is a free string a misbehaving pod could vary per event. llm-d bounds its
in-memory index by key count (``inMemoryConfig.size``, default 1e8, with ``podCacheSize`` 10 pods
per key) or bytes (``costAwareMemoryConfig.size``, default 2 GiB).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice, repeat

from epp.kvevents.wire import AllBlocksCleared, BlockRemoved, BlockStored, Event, EventBatch

DEFAULT_MEDIUM = "gpu"  # vLLM's BlockPool publishes MEDIUM_GPU unless an offloading tier says otherwise
DEFAULT_MAX_ENTRIES = 2_000_000
# vLLM publishes "GPU", "CPU" and "STORAGE"; the medium is a free string on the wire, so a pod could
# name a new one per event. Each live medium costs a dict and a step of every lookup, so only this
# many are indexed at once (stores into a further one are skipped and counted).
DEFAULT_MAX_MEDIA = 8


def normalize_medium(medium: str | None) -> str:
    return DEFAULT_MEDIUM if not medium else medium.lower()


@dataclass(slots=True)
class ApplyResult:
    """What one batch did to the index, for metrics."""

    stored: int = 0
    removed: int = 0
    cleared: int = 0
    skipped_group: int = 0
    skipped_medium: int = 0  # blocks not stored: their medium would exceed ``max_media``
    unknown_removals: int = 0


class KVBlockIndex:
    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        groups: Iterable[int] = (0,),
        max_media: int = DEFAULT_MAX_MEDIA,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        if max_media < 1:
            raise ValueError(f"max_media must be positive, got {max_media}")
        self.max_entries = max_entries
        self.max_media = max_media
        self.groups = frozenset(groups)  # KV-cache groups indexed (events without group_idx always are)
        self._slots: dict[str, int] = {}
        self._slot_owner: list[str | None] = []
        self._free_slots: list[int] = []
        # Neither holds an empty inner dict: a medium's maps go when its last entry does, so memory
        # and the lookup's per-medium work follow the live entries, not every medium ever named.
        self._masks: dict[str, dict[int, int]] = {}  # medium -> key -> slot bitmask
        self._held: dict[str, dict[str, dict[int, int]]] = {}  # endpoint -> medium -> key -> copies
        self.size = 0  # (key, endpoint, medium) entries
        self.evictions = 0

    # ---- events ---------------------------------------------------------------------------

    def apply_batch(self, endpoint: str, batch: EventBatch) -> ApplyResult:
        result = ApplyResult()
        for event in batch.events:
            self.apply(endpoint, event, result)
        return result

    def apply(self, endpoint: str, event: Event, result: ApplyResult | None = None) -> None:
        result = result if result is not None else ApplyResult()
        if isinstance(event, BlockStored):
            if event.group_idx is not None and event.group_idx not in self.groups:
                result.skipped_group += 1
                return
            refused = self.store(endpoint, event.block_hashes, event.medium)
            result.stored += len(event.block_hashes) - refused
            result.skipped_medium += refused
        elif isinstance(event, BlockRemoved):
            if event.group_idx is not None and event.group_idx not in self.groups:
                result.skipped_group += 1
                return
            unknown = self.remove(endpoint, event.block_hashes, event.medium)
            result.removed += len(event.block_hashes) - unknown
            result.unknown_removals += unknown
        elif isinstance(event, AllBlocksCleared):
            # vLLM's reset_prefix_cache clears every tier of the pod at once.
            self.clear(endpoint)
            result.cleared += 1

    def store(self, endpoint: str, keys: Sequence[int], medium: str | None = None) -> int:
        """Apply stores; returns how many keys were refused (a medium past ``max_media``)."""
        if not keys:
            return 0
        medium = normalize_medium(medium)
        masks = self._masks.get(medium)
        if masks is None:
            if len(self._masks) >= self.max_media:
                return len(keys)
            masks = self._masks[medium] = {}
        bit = 1 << self._slot(endpoint)
        media = self._held[endpoint]
        held = media.get(medium)
        if held is None:
            held = media[medium] = {}
        added = 0
        for key in keys:
            copies = held.pop(key, 0)
            held[key] = copies + 1  # re-inserted: now the most recently stored
            if not copies:
                masks[key] = masks.get(key, 0) | bit
                added += 1
        self.size += added
        if self.size > self.max_entries:
            self._trim()
        return 0

    def remove(self, endpoint: str, keys: Sequence[int], medium: str | None = None) -> int:
        """Apply removals; returns how many keys were not held (no-ops)."""
        medium = normalize_medium(medium)
        held = self._held.get(endpoint, {}).get(medium)
        if held is None:
            return len(keys)
        masks = self._masks[medium]
        bit = 1 << self._slots[endpoint]
        unknown = 0
        for key in keys:
            copies = held.get(key)
            if copies is None:
                unknown += 1
            elif copies > 1:
                held[key] = copies - 1
            else:
                del held[key]
                self._unset(masks, key, bit)
                self.size -= 1
        self._prune(endpoint, medium)
        return unknown

    def clear(self, endpoint: str) -> int:
        """Forget everything ``endpoint`` holds (AllBlocksCleared, resync); returns entries dropped."""
        media = self._held.get(endpoint)
        if not media:
            return 0
        bit = 1 << self._slots[endpoint]
        dropped = 0
        for medium, held in media.items():
            masks = self._masks[medium]
            for key in held:
                self._unset(masks, key, bit)
            dropped += len(held)
            if not masks:
                del self._masks[medium]
        media.clear()
        self.size -= dropped
        return dropped

    def remove_endpoint(self, endpoint: str) -> int:
        dropped = self.clear(endpoint)
        slot = self._slots.pop(endpoint, None)
        if slot is not None:
            self._held.pop(endpoint, None)
            self._slot_owner[slot] = None
            self._free_slots.append(slot)
        return dropped

    # ---- queries --------------------------------------------------------------------------

    def longest_prefix(self, keys: Iterable[int]) -> dict[str, int]:
        """For every endpoint holding ``keys[0]``: how many consecutive keys from the start it
        holds (in any medium). ``keys`` may be a lazy iterator: the walk stops drawing from it at
        the first key no endpoint holds (so later keys need not be computed)."""
        if (isinstance(keys, Sequence) and not keys) or not self._masks:
            return {}
        tiers = [m for m in self._masks.values() if m]
        if not tiers:
            return {}
        masks: Iterable[int]
        if len(tiers) == 1:
            masks = map(tiers[0].get, keys, repeat(0))  # get(key, 0) per key, called from C
        else:
            masks = (self._union(tiers, key) for key in keys)
        owners = self._slot_owner
        result: dict[str, int] = {}
        active = -1  # every slot, narrowed by the first key
        depth = 0
        for mask in masks:
            narrowed = active & mask
            if narrowed != active:
                if depth:
                    self._assign(active & ~narrowed, depth, owners, result)
                active = narrowed
                if not active:
                    return result
            depth += 1
        self._assign(active, depth, owners, result)
        return result

    def weighted_prefix(
        self, keys: Sequence[int], weights: Mapping[str, float], default_weight: float = 1.0
    ) -> dict[str, float]:
        """llm-d's ``LongestPrefixScorer`` score: over each endpoint's longest prefix, the sum of the
        best medium weight holding each block (``gpu`` 1.0 and ``cpu`` 0.8 in llm-d's defaults)."""
        depths = self.longest_prefix(keys)
        media = [(m, weights.get(m, default_weight), masks) for m, masks in self._masks.items() if masks]
        if len(media) == 1:
            weight = media[0][1]
            return {endpoint: depth * weight for endpoint, depth in depths.items()}
        media.sort(key=lambda item: -item[1])
        scores: dict[str, float] = {}
        for endpoint, depth in depths.items():
            bit = 1 << self._slots[endpoint]
            total = 0.0
            for key in keys[:depth]:
                for _, weight, masks in media:
                    if masks.get(key, 0) & bit:
                        total += weight
                        break
            scores[endpoint] = total
        return scores

    def holds(self, endpoint: str, key: int, medium: str | None = None) -> bool:
        return key in self._held.get(endpoint, {}).get(normalize_medium(medium), {})

    def blocks(self, endpoint: str, medium: str | None = None) -> set[int]:
        """Keys ``endpoint`` holds (in ``medium``, or in any medium when None)."""
        media = self._held.get(endpoint, {})
        if medium is not None:
            return set(media.get(normalize_medium(medium), {}))
        out: set[int] = set()
        for held in media.values():
            out.update(held)
        return out

    def copies(self, endpoint: str, key: int, medium: str | None = None) -> int:
        return self._held.get(endpoint, {}).get(normalize_medium(medium), {}).get(key, 0)

    def endpoint_size(self, endpoint: str) -> int:
        return sum(len(held) for held in self._held.get(endpoint, {}).values())

    def endpoints(self) -> frozenset[str]:
        return frozenset(self._slots)

    def media(self) -> list[str]:
        """The media some endpoint currently holds a block in."""
        return [medium for medium, masks in self._masks.items() if masks]

    @property
    def distinct_blocks(self) -> int:
        return sum(len(masks) for masks in self._masks.values())

    # ---- internals ------------------------------------------------------------------------

    def _slot(self, endpoint: str) -> int:
        slot = self._slots.get(endpoint)
        if slot is None:
            if self._free_slots:
                slot = self._free_slots.pop()
                self._slot_owner[slot] = endpoint
            else:
                slot = len(self._slot_owner)
                self._slot_owner.append(endpoint)
            self._slots[endpoint] = slot
            self._held[endpoint] = {}
        return slot

    @staticmethod
    def _unset(masks: dict[int, int], key: int, bit: int) -> None:
        mask = masks.get(key, 0) & ~bit
        if mask:
            masks[key] = mask
        else:
            masks.pop(key, None)

    @staticmethod
    def _union(tiers: list[dict[int, int]], key: int) -> int:
        mask = 0
        for tier in tiers:
            mask |= tier.get(key, 0)
        return mask

    @staticmethod
    def _assign(mask: int, depth: int, owners: list[str | None], result: dict[str, int]) -> None:
        while mask:
            low = mask & -mask
            owner = owners[low.bit_length() - 1]
            if owner is not None:
                result[owner] = depth
            mask ^= low

    def _trim(self) -> None:
        """Drop least recently stored entries of the largest holder until within the bound."""
        while self.size > self.max_entries:
            endpoint, medium, held = max(
                ((e, m, h) for e, media in self._held.items() for m, h in media.items() if h),
                key=lambda item: len(item[2]),
            )
            excess = min(self.size - self.max_entries, max(1, len(held) // 64))
            bit = 1 << self._slots[endpoint]
            masks = self._masks[medium]
            for key in list(islice(held, excess)):  # one scan per chunk: oldest first
                del held[key]
                self._unset(masks, key, bit)
            self.size -= excess
            self.evictions += excess
            self._prune(endpoint, medium)

    def _prune(self, endpoint: str, medium: str) -> None:
        """Drop ``medium``'s maps that have become empty (see ``__init__``)."""
        media = self._held.get(endpoint)
        if media is not None and medium in media and not media[medium]:
            del media[medium]
        if medium in self._masks and not self._masks[medium]:
            del self._masks[medium]
