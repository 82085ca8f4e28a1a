"""Keys for the blocks a request fills past its prompt's full ones: the prompt's partial tail
block, then its generated tokens.

vLLM caches every full block a request has computed, not only the prompt's: ``Request`` appends
block hashes as output tokens arrive (``vllm/v1/request.py``, ``update_block_hashes``) and
``allocate_slots`` caches blocks up to ``request.num_tokens`` (``vllm/v1/core/kv_cache_manager.py``).
So a finished request leaves its generated tokens' blocks in the prefix cache, where they take
space from other prefixes, and with KV events on each one is published as a ``BlockStored``
chained to the prompt's last block. ``tests/slow/test_kvevents_vllm.py`` checks vLLM 0.32 does
this. The engine asks for these keys only as blocks fill (:meth:`Sequence.block_keys`).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence

import xxhash

# One more block's key from its token ids, chained to the previous block (the callable keeps the
# chain's state).
NextKey = Callable[[list[int]], int]
# Told each key as it is made, with its parent's key and its token ids (the KV-event publisher).
OnBlock = Callable[[int, int | None, list[int]], None]


class OutputBlockKeys:
    """Called with a number of blocks past the prompt's full ones, returns the keys of that many.

    Token ids there are the prompt's tail (``tail``), then output token ``i``'s id
    (``output_id(i)``), which the simulator's deterministic output makes known in advance; it only
    asks for blocks whose tokens have all been generated.
    """

    def __init__(
        self,
        block_size: int,
        tail: Sequence[int],
        output_id: Callable[[int], int],
        next_key: NextKey,
        parent: int | None,
        on_block: OnBlock | None = None,
    ) -> None:
        self._block_size = block_size
        self._tail = list(tail)
        self._output_id = output_id
        self._next_key = next_key
        self._parent = parent
        self._on_block = on_block
        self._keys: list[int] = []

    def __call__(self, count: int) -> list[int]:
        size, tail = self._block_size, self._tail
        while len(self._keys) < count:
            start = len(self._keys) * size
            ids = [
                tail[position] if position < len(tail) else self._output_id(position - len(tail))
                for position in range(start, start + size)
            ]
            key = self._next_key(ids)
            if self._on_block is not None:
                self._on_block(key, self._parent, ids)
            self._keys.append(key)
            self._parent = key
        return self._keys[:count]


def xxh64_chain(parent: int) -> NextKey:
    """The simulator's own keys when KV events are off (nothing outside sees them): XXH64 of the
    block's token ids, seeded with the previous block's key, as :func:`simulator.tokens.block_hashes`
    chains the prompt's blocks."""
    state = [parent]

    def next_key(ids: list[int]) -> int:
        key: int = xxhash.xxh64_intdigest(array("q", ids).tobytes(), seed=state[0])
        state[0] = key
        return key

    return next_key
