"""Subscribers against a local ZMQ PUB/ROUTER driven by the test: live events, gaps filled by
replay, gaps that cannot be filled, vLLM restarts, joining mid-stream, malformed payloads, pod
removal. Every wait is for a condition (generous timeouts), never a fixed sleep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import zmq
import zmq.asyncio
from prometheus_client import REGISTRY

from epp.kvevents.hashing import BlockHasher
from epp.kvevents.index import KVBlockIndex
from epp.kvevents.pool import KVEventSubscriptions, split_hostport, tcp_address
from epp.kvevents.publisher import KVEventPublisher
from epp.kvevents.subscriber import EventSource
from epp.kvevents.wire import SEQ_BYTES, AllBlocksCleared, BlockRemoved, BlockStored, EventBatch

POD = "127.0.0.1:8000"
TIMEOUT = 15.0


def stored(*keys: int) -> EventBatch:
    return EventBatch(0.0, (BlockStored(tuple(keys), None, (), 16, medium="GPU"),))


def removed(*keys: int) -> EventBatch:
    return EventBatch(0.0, (BlockRemoved(tuple(keys), "GPU"),))


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def raw_publisher(context: zmq.asyncio.Context) -> tuple[zmq.asyncio.Socket, str]:
    """A bare PUB socket on a free port, for frames no well-behaved publisher would send."""
    pub = context.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0")
    return pub, pub.getsockopt_string(zmq.LAST_ENDPOINT)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def context() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
async def index() -> KVBlockIndex:
    return KVBlockIndex()


@contextlib.asynccontextmanager
async def subscribed(
    index: KVBlockIndex, context: zmq.asyncio.Context, publisher: KVEventPublisher, **kwargs: object
) -> AsyncIterator[KVEventSubscriptions]:
    subs = KVEventSubscriptions(index, context=context, replay_timeout=1.0, **kwargs)  # type: ignore[arg-type]
    source = EventSource(POD, publisher.events_address, publisher.replay_address)
    subs.add_endpoint(POD, source)
    try:
        yield subs
    finally:
        await subs.close()


async def warm_up(publisher: KVEventPublisher, index: KVBlockIndex, key: int = 10**6) -> None:
    """Without a replay socket, batches sent before the subscription reached the publisher are
    lost (ZMQ's slow joiner): publish a probe until one arrives, then the stream is contiguous."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not index.holds(POD, key):
        assert asyncio.get_running_loop().time() < deadline, "subscription never came up"
        await publisher.publish(stored(key))
        await asyncio.sleep(0.05)


async def rebind(context: zmq.asyncio.Context, events_port: str, replay_port: str) -> KVEventPublisher:
    """A publisher on the ports a closed one used (ZMQ releases them asynchronously)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        try:
            return KVEventPublisher(
                context, f"tcp://127.0.0.1:{events_port}", f"tcp://127.0.0.1:{replay_port}"
            )
        except zmq.ZMQError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_live_events_are_applied(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", topic=f"kv@{POD}@tiny")
    try:
        async with subscribed(index, context, publisher):
            await warm_up(publisher, index)
            await publisher.publish(stored(1, 2, 3))
            await publisher.publish(removed(3))
            await until(lambda: index.blocks(POD) == {10**6, 1, 2}, "store then remove")
            assert index.longest_prefix([1, 2, 3]) == {POD: 2}
    finally:
        await publisher.close()


async def test_gap_is_filled_by_replay(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", topic="kv@x@m")
    replayed, missed = (
        sample("epp_kvevents_gaps_total", {"outcome": "replayed"}),
        sample("epp_kvevents_missed_batches_total"),
    )
    try:
        async with subscribed(index, context, publisher) as subs:
            await publisher.publish(stored(1))
            await until(lambda: index.holds(POD, 1), "first batch")
            await publisher.publish(stored(2), send=False)  # lost on the way
            await publisher.publish(removed(1), send=False)
            await publisher.publish(stored(3))
            await until(lambda: index.blocks(POD) == {2, 3}, "gap replayed")
            assert subs.subscriber(POD).last_seq == 3  # type: ignore[union-attr]
            await publisher.publish(stored(4))
            await until(lambda: index.blocks(POD) == {2, 3, 4}, "stream continues")
    finally:
        await publisher.close()
    assert sample("epp_kvevents_gaps_total", {"outcome": "replayed"}) == replayed + 1
    assert sample("epp_kvevents_missed_batches_total") == missed + 2


async def test_gap_without_replay_resyncs(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0")
    resynced = sample("epp_kvevents_gaps_total", {"outcome": "resynced"})
    try:
        async with subscribed(index, context, publisher, topic_filter=""):
            await warm_up(publisher, index)
            await publisher.publish(stored(1))
            await until(lambda: index.holds(POD, 1), "first batch")
            await publisher.publish(removed(1), send=False)  # lost: the index would over-report
            await publisher.publish(stored(2))
            await until(lambda: index.holds(POD, 2), "batch after the gap")
            assert index.blocks(POD) == {2}  # everything from before the gap was dropped
    finally:
        await publisher.close()
    assert sample("epp_kvevents_gaps_total", {"outcome": "resynced"}) == resynced + 1


async def test_mid_stream_join_replays_history(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", topic="kv@x@m")
    try:
        for batch in (stored(1, 2), stored(3), removed(2), stored(9)):
            await publisher.publish(batch)  # nobody subscribed yet: only the replay buffer has them
        async with subscribed(index, context, publisher):
            # Replayed on connect, before any new live batch.
            await until(lambda: index.blocks(POD) == {1, 3, 9}, "history replayed on connect")
            await publisher.publish(stored(5))
            await until(lambda: index.holds(POD, 5), "live after replay")
            assert index.copies(POD, 1) == 1  # nothing applied twice
    finally:
        await publisher.close()


async def test_replay_buffer_rolled_over_gives_a_partial_rebuild(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", buffer_steps=2)
    try:
        for batch in (stored(1), stored(2), stored(3)):  # batch 0 fell out of the buffer
            await publisher.publish(batch)
        async with subscribed(index, context, publisher, topic_filter=""):
            await until(lambda: index.blocks(POD) == {2, 3}, "what the buffer still has")
    finally:
        await publisher.close()


async def test_publisher_restart_resyncs(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    events_port = split_hostport(publisher.events_address.removeprefix("tcp://"))[1]
    replay_port = split_hostport(publisher.replay_address.removeprefix("tcp://"))[1]  # type: ignore[union-attr]
    reconnects = sample("epp_kvevents_reconnects_total")
    async with subscribed(index, context, publisher, topic_filter=""):
        for batch in (stored(1), stored(2), stored(3)):
            await publisher.publish(batch)
        await until(lambda: index.blocks(POD) == {1, 2, 3}, "before the restart")
        await publisher.close()  # vLLM dies: its cache is gone; a new process counts from 0 again
        restarted = await rebind(context, events_port, replay_port)
        try:
            for batch in (stored(7), stored(8), stored(9), stored(10)):  # more batches than before
                await restarted.publish(batch)
            await until(lambda: index.blocks(POD) == {7, 8, 9, 10}, "the new process's cache only")
        finally:
            await restarted.close()
    assert sample("epp_kvevents_reconnects_total") == reconnects + 1


async def test_sequence_going_backwards_without_reconnect_is_a_restart(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", first_seq=0)
    restarts = sample("epp_kvevents_resyncs_total", {"reason": "restart"})
    try:
        async with subscribed(index, context, publisher, topic_filter=""):
            await warm_up(publisher, index)
            publisher._next_seq = 0  # same socket, numbering starts over
            await publisher.publish(stored(42))
            await until(lambda: index.blocks(POD) == {42}, "old entries dropped")
    finally:
        await publisher.close()
    assert sample("epp_kvevents_resyncs_total", {"reason": "restart"}) == restarts + 1


async def test_malformed_payload_is_counted_and_resyncs(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    pub, address = raw_publisher(context)
    malformed = sample("epp_kvevents_dropped_total", {"reason": "malformed_msgpack"})
    bad_frames = sample("epp_kvevents_dropped_total", {"reason": "frame_seq_length"})
    subs = KVEventSubscriptions(index, context=context, topic_filter="")
    subs.add_endpoint(POD, EventSource(POD, address))
    try:
        from epp.kvevents.wire import encode_batch

        seq = 0
        while not index.holds(POD, 1):
            await pub.send_multipart([b"", seq.to_bytes(SEQ_BYTES, "big"), encode_batch(stored(1))])
            seq += 1
            await asyncio.sleep(0.05)
        await pub.send_multipart([b"", b"\x00", b"x"])  # bad sequence frame: dropped, nothing lost
        await pub.send_multipart([b"", seq.to_bytes(SEQ_BYTES, "big"), b"\xc1garbage"])
        await pub.send_multipart([b"", (seq + 1).to_bytes(SEQ_BYTES, "big"), encode_batch(stored(2))])
        await until(lambda: index.blocks(POD) == {2}, "resync after the malformed batch")
    finally:
        await subs.close()
        pub.close(linger=0)
    assert sample("epp_kvevents_dropped_total", {"reason": "malformed_msgpack"}) == malformed + 1
    assert sample("epp_kvevents_dropped_total", {"reason": "frame_seq_length"}) == bad_frames + 1


async def test_unreachable_replay_socket_times_out_and_resyncs(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0")
    dead = context.socket(zmq.ROUTER)  # bind a port, then close it: nothing listens there
    dead.bind("tcp://127.0.0.1:0")
    dead_address = dead.getsockopt_string(zmq.LAST_ENDPOINT)
    dead.close(linger=0)
    subs = KVEventSubscriptions(index, context=context, topic_filter="", replay_timeout=0.3)
    subs.add_endpoint(POD, EventSource(POD, publisher.events_address, dead_address))
    try:
        await warm_up(publisher, index)
        await publisher.publish(stored(1), send=False)
        await publisher.publish(stored(2))
        await until(lambda: index.blocks(POD) == {2}, "resync after the failed replay")
    finally:
        await subs.close()
        await publisher.close()


async def test_pool_follows_endpoints(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    first = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    second = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    other = "127.0.0.2:8000"
    subs = KVEventSubscriptions(index, context=context, topic_filter="")
    try:
        subs.add_endpoint(POD, EventSource(POD, first.events_address, first.replay_address))
        subs.add_endpoint(other, EventSource(other, second.events_address, second.replay_address))
        assert sample("epp_kvevents_subscribers") == 2
        await first.publish(stored(1))
        await second.publish(stored(1, 2))
        await until(lambda: index.longest_prefix([1, 2]) == {POD: 1, other: 2}, "both pods")
        subs.endpoints_changed([POD])  # `other` left the pool
        assert subs.endpoints() == {POD} and index.endpoints() == {POD}
        assert index.longest_prefix([1, 2]) == {POD: 1}
        await second.publish(stored(3))
        await first.publish(stored(4))
        await until(lambda: index.holds(POD, 4), "the remaining pod still streams")
        assert other not in index.endpoints()
        subs.remove_endpoint(POD)
        assert index.size == 0 and sample("epp_kvevents_subscribers") == 0
    finally:
        await subs.close()
        await first.close()
        await second.close()


async def test_all_blocks_cleared(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    try:
        async with subscribed(index, context, publisher, topic_filter=""):
            await publisher.publish(stored(1, 2))
            await until(lambda: index.blocks(POD) == {1, 2}, "stored")
            await publisher.publish(EventBatch(0.0, (AllBlocksCleared(), BlockStored((5,), None, (), 16))))
            await until(lambda: index.blocks(POD) == {5}, "cleared, then the batch's later store")
    finally:
        await publisher.close()


async def test_hash_mismatch_is_reported(context: zmq.asyncio.Context, index: KVBlockIndex) -> None:
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    hasher = BlockHasher("sha256", 4)
    tokens = (1, 2, 3, 4)
    right = hasher.block_keys(tokens)
    mismatches = sample("epp_kvevents_hash_mismatch_total")
    try:
        async with subscribed(index, context, publisher, topic_filter="", hasher=hasher):
            await publisher.publish(EventBatch(0.0, (BlockStored(tuple(right), None, tokens, 4),)))
            await publisher.publish(EventBatch(0.0, (BlockStored((123,), None, tokens, 4),)))
            await until(lambda: index.holds(POD, 123), "both applied")
    finally:
        await publisher.close()
    assert sample("epp_kvevents_hash_mismatch_total") == mismatches + 1


def test_addresses() -> None:
    assert split_hostport("10.1.2.3:8000") == ("10.1.2.3", "8000")
    assert split_hostport("[fd00::1]:8000") == ("fd00::1", "8000")
    assert tcp_address("fd00::1", 5557) == "tcp://[fd00::1]:5557"
    with pytest.raises(ValueError, match="host:port"):
        split_hostport("nohost")
    subs = KVEventSubscriptions.__new__(KVEventSubscriptions)
    subs.socket_port, subs.replay_port = 5557, 5558
    assert subs.source_for("10.1.2.3:8000") == EventSource(
        "10.1.2.3:8000", "tcp://10.1.2.3:5557", "tcp://10.1.2.3:5558"
    )


async def test_oversized_message_is_refused_not_applied(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # ZMQ takes a message of any size unless told otherwise: a pod could make the EPP allocate
    # gigabytes. Past the limit the connection is dropped, then reconnects and resyncs.
    from epp.kvevents.wire import encode_batch

    pub, address = raw_publisher(context)
    reconnects = sample("epp_kvevents_reconnects_total")
    subs = KVEventSubscriptions(
        index, context=context, topic_filter="", max_message_bytes=4096, restart_after=0.3
    )
    subs.add_endpoint(POD, EventSource(POD, address))
    huge = EventBatch(0.0, (BlockStored((99,), None, (70_000,) * 2000, 16),))
    assert len(encode_batch(huge)) > 4096
    seq = 0

    async def send(batch: EventBatch) -> None:
        nonlocal seq
        await pub.send_multipart([b"", seq.to_bytes(SEQ_BYTES, "big"), encode_batch(batch)])
        seq += 1

    try:
        while not index.holds(POD, 1):
            await send(stored(1))
            await asyncio.sleep(0.05)
        await send(huge)
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not index.holds(POD, 3):
            assert asyncio.get_running_loop().time() < deadline, "no reconnect after the oversized message"
            await send(stored(3))
            await asyncio.sleep(0.05)
            assert not index.holds(POD, 99)
    finally:
        await subs.close()
        pub.close(linger=0)
    assert not index.holds(POD, 99)
    assert sample("epp_kvevents_reconnects_total") > reconnects


async def test_a_replay_that_never_ends_is_abandoned(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # A replay peer that keeps answering with contiguous batches held the pod's stream forever.
    from epp.kvevents.wire import encode_batch

    pub, address = raw_publisher(context)
    router = context.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:0")
    streams: list[asyncio.Task[None]] = []

    async def stream(identity: bytes, start: int) -> None:
        for seq in range(start, start + 10**9):
            payload = encode_batch(stored(1000 + seq % 50))
            await router.send_multipart([identity, b"", b"", seq.to_bytes(SEQ_BYTES, "big"), payload])
            await asyncio.sleep(0.001)

    async def serve() -> None:
        while True:
            identity, _, start = await router.recv_multipart()
            streams.append(asyncio.create_task(stream(identity, int.from_bytes(start, "big"))))

    server = asyncio.create_task(serve())
    subs = KVEventSubscriptions(index, context=context, topic_filter="", replay_budget=0.5)
    source = EventSource(POD, address, router.getsockopt_string(zmq.LAST_ENDPOINT))
    subs.add_endpoint(POD, source)
    try:
        seq = 10**9
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not index.holds(POD, 7):
            assert asyncio.get_running_loop().time() < deadline, "live events never applied"
            await pub.send_multipart([b"", seq.to_bytes(SEQ_BYTES, "big"), encode_batch(stored(7))])
            seq += 1
            await asyncio.sleep(0.05)
    finally:
        await subs.close()
        for task in [server, *streams]:
            task.cancel()
        pub.close(linger=0)
        router.close(linger=0)


# signature, version 3.0, mechanism NULL, as-server 0, filler (ZMTP 3.0, rfc.zeromq.org/spec/23).
ZMTP3_NULL_GREETING = (
    b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
)


async def test_a_peer_that_drops_every_connection_is_retried_with_back_off(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # The subscriber connects afresh only when ZMQ has not reconnected by itself: a peer that
    # completes the handshake and then drops the connection is retried at ZMQ's pace, not in a loop.
    accepted = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        # A ZMTP 3 greeting, so the connection counts as made before it is dropped.
        writer.write(ZMTP3_NULL_GREETING)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(64), 0.2)
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    subs = KVEventSubscriptions(index, context=context, topic_filter="", restart_after=5.0)
    subs.add_endpoint(POD, EventSource(POD, f"tcp://127.0.0.1:{port}"))
    try:
        await asyncio.sleep(2.0)
    finally:
        await subs.close()
        server.close()
    assert 0 < accepted <= 40, accepted  # ZMQ's back-off starts at 100 ms


async def test_a_backlog_of_batches_does_not_starve_the_event_loop(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # pyzmq's asyncio recv returns an already-completed future while messages are queued, and
    # awaiting one does not yield: a pod flooding events (or a backlog after a stall) held the
    # event loop, and so every request's routing, until the queue ran dry.
    from itertools import groupby

    from epp.kvevents.wire import encode_batch

    pub, address = raw_publisher(context)
    pub.setsockopt(zmq.SNDHWM, 0)
    ticks = 0
    seen: list[int] = []  # the ticker's count at each applied batch

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    subs = KVEventSubscriptions(
        index, context=context, topic_filter="", on_batch=lambda _e, _s: seen.append(ticks)
    )
    subs.add_endpoint(POD, EventSource(POD, address))
    ticking = asyncio.create_task(ticker())
    seq = 0
    try:
        while not index.holds(POD, 1):
            await pub.send_multipart([b"", seq.to_bytes(SEQ_BYTES, "big"), encode_batch(stored(1))])
            seq += 1
            await asyncio.sleep(0.05)
        start = len(seen)
        for _ in range(300):  # queued at once, without yielding in between
            pub.send_multipart([b"", b"\x00", b"bad frame"])  # dropped: must yield too
            pub.send_multipart([b"", seq.to_bytes(SEQ_BYTES, "big"), encode_batch(stored(seq))])
            seq += 1
        await until(lambda: len(seen) >= start + 300, "the backlog applied")
    finally:
        ticking.cancel()
        await subs.close()
        pub.close(linger=0)
    longest = max(len(list(run)) for _, run in groupby(seen[start:]))
    assert longest <= 2, f"{longest} batches applied while nothing else ran"


async def test_sequence_going_backwards_after_a_replay_is_still_a_restart(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # The first replayed seq was kept until the next resync, and any live seq from it up was taken
    # for a live copy of a replayed batch: with a replay socket (whose connect-time replay from 0
    # sets it to 0) a restart was never detected from the numbers, and the new process's batches
    # were dropped as duplicates until its numbers passed the old ones.
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    restarts = sample("epp_kvevents_resyncs_total", {"reason": "restart"})
    try:
        for batch in (stored(1), stored(2)):
            await publisher.publish(batch)  # before the subscription: replayed on connect
        async with subscribed(index, context, publisher, topic_filter=""):
            await until(lambda: index.blocks(POD) == {1, 2}, "history replayed")
            for key in (3, 4, 5):
                await publisher.publish(stored(key))
            await until(lambda: index.blocks(POD) == {1, 2, 3, 4, 5}, "live batches")
            publisher._next_seq = 0  # same socket, numbering starts over: a new process
            publisher._buffer.clear()
            await publisher.publish(stored(42))
            await until(lambda: index.blocks(POD) == {42}, "old entries dropped")
    finally:
        await publisher.close()
    assert sample("epp_kvevents_resyncs_total", {"reason": "restart"}) == restarts + 1


async def test_an_absurd_batch_timestamp_cannot_swallow_the_lag_sum(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # A finite timestamp far in the past (vLLM sends time.time()) was observed as it was: 1e300
    # absorbs every later lag (1e300 + 0.01 == 1e300), so the lag sum stopped moving for good,
    # and two such batches made it +Inf.
    import math
    import time

    from epp.kvevents.subscriber import KVEventSubscriber
    from epp.kvevents.wire import Frame, encode_batch

    sub = KVEventSubscriber(EventSource(POD, "tcp://127.0.0.1:1"), index, context)
    start = sample("epp_kvevents_lag_seconds_sum")
    for seq, ts in enumerate((-1e300, -1.7e308, -1.7e308)):
        sub._apply(Frame("", seq, encode_batch(EventBatch(ts, stored(seq).events))), "live")
    before = sample("epp_kvevents_lag_seconds_sum")
    assert math.isfinite(before) and before - start <= 3 * 86_400
    sub._apply(Frame("", 3, encode_batch(EventBatch(time.time() - 1.0, stored(3).events))), "live")
    assert sample("epp_kvevents_lag_seconds_sum") > before


def test_the_message_cap_bounds_the_memory_of_a_decoded_batch() -> None:
    # Decoding multiplies a message: one-byte token ids become 8-byte list slots, then a tuple.
    # At the former 64 MiB cap one message cost ~1 GiB, half the EPP's default memory limit.
    import tracemalloc

    import msgpack

    from epp.kvevents.subscriber import MAX_MESSAGE_BYTES
    from epp.kvevents.wire import decode_batch

    tokens = [0] * (1 << 18)  # the worst case: every id one byte on the wire
    payload = msgpack.packb(
        [
            0.0,
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
    tracemalloc.start()
    try:
        decode_batch(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / len(payload) * MAX_MESSAGE_BYTES <= 512 << 20  # a quarter of the default 2 GiB


async def test_a_disconnect_drops_the_pods_entries_at_once(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # A PUB drops what it cannot send (zmq_socket(3)), so from a disconnect on the index misses
    # every store and removal; the entries stayed, as hits, until a reconnect resynced them: a
    # restarted vLLM (empty cache) kept attracting its old prefixes for as long as it was away.
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0")
    closed = False
    try:
        async with subscribed(index, context, publisher, topic_filter=""):
            await warm_up(publisher, index)
            await publisher.publish(stored(1, 2))
            await until(lambda: index.blocks(POD) == {10**6, 1, 2}, "stored")
            await publisher.close()
            closed = True
            await until(lambda: index.endpoint_size(POD) == 0, "entries dropped on disconnect")
    finally:
        if not closed:
            await publisher.close()


async def test_a_huge_sequence_jump_cannot_swallow_the_missed_batches_count(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # A jump from 1 to 2**63 was counted as 2**63 missed batches: past 2**53 the counter can no
    # longer move by one, so every later real gap went uncounted for good.
    from epp.kvevents.subscriber import KVEventSubscriber
    from epp.kvevents.wire import Frame, encode_batch

    sub = KVEventSubscriber(EventSource(POD, "tcp://127.0.0.1:1"), index, context)

    async def live(seq: int) -> None:
        await sub._on_live(Frame("", seq, encode_batch(stored(seq % 1000))))

    for seq in (0, 1, 2**63, 2**63 + 1):
        await live(seq)
    before = sample("epp_kvevents_missed_batches_total")
    await live(2**63 + 4)  # batches 2**63 + 2 and + 3 lost
    assert sample("epp_kvevents_missed_batches_total") - before == 2
    assert index.blocks(POD) == {(2**63 + 4) % 1000}


async def test_a_join_replay_that_stops_short_leaves_no_silent_gap(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # Joining mid-stream (first live seq > 0) replays from 0. When that replay stopped short (a
    # timeout after batch 2), the live batch 10 was applied straight after it: batches 3..9, and
    # any removal in them, were skipped without a gap being seen, so entries could stay as hits.
    from epp.kvevents.subscriber import KVEventSubscriber
    from epp.kvevents.wire import Frame, encode_batch

    router = context.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:0")
    history = [stored(1, 2), stored(3), stored(4)]

    async def serve() -> None:
        while True:
            identity, _, start = await router.recv_multipart()
            if int.from_bytes(start, "big") == 0:  # the first batches, then silence
                for seq, batch in enumerate(history):
                    await router.send_multipart(
                        [identity, b"", b"", seq.to_bytes(SEQ_BYTES, "big"), encode_batch(batch)]
                    )

    server = asyncio.create_task(serve())
    source = EventSource(POD, "tcp://127.0.0.1:1", router.getsockopt_string(zmq.LAST_ENDPOINT))
    sub = KVEventSubscriber(source, index, context, replay_timeout=0.3)
    try:
        await sub._on_live(Frame("", 10, encode_batch(stored(9))))
    finally:
        server.cancel()
        router.close(linger=0)
    assert index.blocks(POD) == {9}
    assert sub.last_seq == 10


async def test_removing_an_endpoint_during_a_replay_stops_it(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # Python 3.11's asyncio.wait_for returns the result instead of raising when it is cancelled
    # while the awaited future is already done (python/cpython#86296), and a replay's recv often
    # is. Removing an endpoint during its connect-time replay then went on replaying into the
    # index: the removed endpoint came back with thousands of entries, and the task died later on
    # a closed socket ("Task exception was never retrieved").
    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    for key in range(2000):
        await publisher.publish(stored(key), send=False)
    seen: list[int] = []
    subs = KVEventSubscriptions(index, context=context, on_batch=lambda _e, seq: seen.append(seq))
    try:
        subs.add_endpoint(POD, EventSource(POD, publisher.events_address, publisher.replay_address))
        await until(lambda: len(seen) >= 10, "the replay under way")
        sub = subs.subscriber(POD)
        assert sub is not None
        subs.remove_endpoint(POD)
        applied = len(seen)
        await asyncio.sleep(0.5)
        assert len(seen) == applied, f"{len(seen) - applied} batches applied after the removal"
        assert POD not in index.endpoints() and index.size == 0
        assert sub._watcher is not None and sub._watcher.cancelled()  # not still replaying
    finally:
        await subs.close()
        await publisher.close()


async def test_a_long_replay_does_not_starve_the_event_loop(
    context: zmq.asyncio.Context, index: KVBlockIndex
) -> None:
    # As for live batches: a replay's recv is often complete at once and awaiting it does not
    # yield, so a 10,000-batch replay buffer held the event loop for the whole replay.
    from itertools import groupby

    publisher = KVEventPublisher(context, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    for key in range(500):
        await publisher.publish(stored(key), send=False)
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    try:
        async with subscribed(index, context, publisher, on_batch=lambda _e, _s: seen.append(ticks)):
            await until(lambda: len(seen) >= 500, "the buffer replayed")
    finally:
        ticking.cancel()
        await publisher.close()
    longest = max(len(list(run)) for _, run in groupby(seen))
    assert longest <= 2, f"{longest} replayed batches applied while nothing else ran"


async def test_a_replay_socket_that_cannot_be_opened_is_a_failed_replay(index: KVBlockIndex) -> None:
    # The replay DEALER was opened outside the replay's error handling: when ZMQ refused a new
    # socket (its per-context limit, 1,023 by default, or the process's descriptors), the error
    # ended the subscriber task, and the pool dropped the endpoint for good.
    context = zmq.asyncio.Context()
    context.set(zmq.MAX_SOCKETS, 3)  # the SUB and its monitor pair: no room for a DEALER
    pub = zmq.asyncio.Context()
    publisher = KVEventPublisher(pub, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    subs = KVEventSubscriptions(index, context=context, topic_filter="", replay_timeout=0.3)
    subs.add_endpoint(POD, EventSource(POD, publisher.events_address, publisher.replay_address))
    try:
        await warm_up(publisher, index)
        await publisher.publish(stored(1), send=False)  # a gap: the replay cannot open its socket
        await publisher.publish(stored(2))
        await until(lambda: index.blocks(POD) == {2}, "the gap resynced")
        assert subs.endpoints() == {POD}
        assert not subs._subscribers[POD][1].done()
    finally:
        await subs.close()
        await publisher.close()
        context.destroy(linger=0)
        pub.destroy(linger=0)


async def test_the_pool_subscribes_to_more_than_341_endpoints(index: KVBlockIndex) -> None:
    # Each subscription takes three ZMQ sockets (SUB, and the monitor's pair), and a ZMQ context
    # allows 1,023 sockets unless told otherwise: the 342nd endpoint's task failed ("Too many
    # open files") and the pool dropped it, so a large pool lost precise routing past that point.
    subs = KVEventSubscriptions(index, topic_filter="")
    try:
        for n in range(400):
            subs.add_endpoint(f"127.0.0.{1 + n // 250}:{8000 + n}")
        await asyncio.sleep(0.5)
        assert len(subs.endpoints()) == 400
        assert not any(task.done() for _, task in subs._subscribers.values())
    finally:
        await subs.close()


async def test_malformed_batches_by_the_thousand_log_a_line_not_a_thousand(
    context: zmq.asyncio.Context, index: KVBlockIndex, caplog: pytest.LogCaptureFixture
) -> None:
    # Each malformed batch wrote a warning (and each gap, replay failure and resync a line):
    # a pod sending garbage filled the logs, written to stderr from the event loop. Now one
    # line per kind every LOG_INTERVAL_SECONDS; every batch is still counted.
    import logging

    from epp.kvevents.subscriber import KVEventSubscriber
    from epp.kvevents.wire import Frame

    malformed = sample("epp_kvevents_dropped_total", {"reason": "malformed_msgpack"})
    sub = KVEventSubscriber(EventSource(POD, "tcp://127.0.0.1:1"), index, context)
    with caplog.at_level(logging.INFO, logger="epp.kvevents.subscriber"):
        for seq in range(1000):
            await sub._on_live(Frame("", seq * 2, b"\xc1"))  # malformed, and a gap before each
    assert sample("epp_kvevents_dropped_total", {"reason": "malformed_msgpack"}) == malformed + 1000
    lines = [r.getMessage() for r in caplog.records]
    assert sum("malformed batch" in line for line in lines) == 1
    assert sum("lost, dropped" in line for line in lines) == 1
    assert len(lines) <= 3, lines
