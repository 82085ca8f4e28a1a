"""One pod's KV-event stream: a ZMQ SUB socket on asyncio, sequence tracking, replay, resync.

The pod's vLLM binds its publisher (``--kv-events-config`` ``endpoint: tcp://*:5557``) and, when
configured, a replay ROUTER (``replay_endpoint: tcp://*:5558``); the EPP connects to both. This is
llm-d's "pod discovery" mode (``kvEventsConfig.discoverPods`` with ``podDiscoveryConfig.socketPort``
and ``replaySocketPort``; ``pkg/kvevents/zmq_subscriber.go``), written for asyncio: nothing here
blocks the event loop, and a replay in progress pauses only this pod's stream (ZMQ keeps queueing
its live messages meanwhile).

Sequence numbers (8 bytes big-endian, from 0 per vLLM process) drive the consistency rules:

* next expected → apply;
* a gap (missed batches: slow joiner, high-water mark, network) → ask the replay socket for the
  batches from the first missing one. If the replay returns them contiguously, nothing is lost;
  otherwise (no replay socket, buffer rolled over, timeout) the pod is *resynced*: its entries are
  dropped and the stream continues from here, so the index can only under-report that pod;
* a number at or below the last applied one → a duplicate (dropped) when equal, otherwise vLLM
  restarted (its cache is empty now): resync, then replay from 0 when possible;
* a TCP disconnect (seen on the socket monitor) drops the pod's entries at once (the PUB drops
  what it cannot send, so they can only go stale); the reconnect may hide a restart whose numbers
  happen to continue upward, so it also resyncs and replays from 0;
* the first message after subscribing with a number above 0 means history was missed: replay from
  0 when possible (a full rebuild while vLLM's buffer still reaches back to 0, else a partial one).
  With a replay socket the subscriber also replays from 0 right after connecting, so an idle pod's
  cache is known before its next batch.

A payload that fails to decode resyncs the pod (its events are lost; replaying the same bytes would
fail again). ``AllBlocksCleared`` clears the pod like vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from epp import metrics
from epp.kvevents.hashing import BlockHasher
from epp.kvevents.index import KVBlockIndex
from epp.kvevents.wire import (
    END_SEQ,
    SEQ_BYTES,
    BlockStored,
    Frame,
    MalformedEvent,
    decode_batch,
    parse_frames,
)

log = logging.getLogger(__name__)

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
RCVHWM = 100_000  # as vLLM's publisher hwm: queue, rather than drop, while a replay runs
# Largest message taken from a pod. vLLM's biggest batch is one engine step's stores (token ids of
# at most max_num_batched_tokens, a few MB); ZMQ itself accepts any size, so without this a pod could
# make the EPP allocate gigabytes. Past it ZMQ drops the connection, which reconnects and resyncs.
# Decoded, a message costs up to ~16 times its size (one-byte token ids become 8-byte list slots,
# then a tuple) and ~0.1 us a byte of event-loop time: 64 MiB was ~1 GiB and seconds of stall per
# message in an EPP whose default limit is 2 GiB. 16 MiB still holds ~2M tokens of one step (at most
# 5 bytes an id plus 9 a block hash), over ten times a large max_num_batched_tokens.
MAX_MESSAGE_BYTES = 16 << 20
# Longest a whole replay may take. vLLM's buffer (10,000 batches by default) replays in well under a
# second; a peer that keeps answering never ends the replay, and it holds this pod's stream.
REPLAY_BUDGET_SECONDS = 60.0
# How long after a disconnect ZMQ may take to reconnect by itself before the subscriber connects
# afresh (see _watch): past its longest retry interval, so an ordinary drop is left to ZMQ.
RESTART_AFTER_SECONDS = 2 * RECONNECT_IVL_MAX_MS / 1000
# One log line per kind (malformed, gap, replay, resync, ...) and endpoint at most this often; the
# next line says how many were held back. Every occurrence is counted in the metrics regardless.
LOG_INTERVAL_SECONDS = 10.0
# Largest lag observed. vLLM stamps a batch with time.time(), but the number is the pod's: one from
# far in the past (finite, so the decoder takes it) would make the histogram's sum absorb every later
# lag (1e300 + 0.01 == 1e300), or overflow to +Inf. Past the top bucket only the sum sees the value.
MAX_LAG_SECONDS = 86_400.0
# Most batches one gap counts as missed. vLLM numbers batches one by one from 0, so a jump past this
# is no count of lost batches; counted whole (up to 2**64), it left the float counter unable to move
# by one (past 2**53) for good.
MAX_COUNTED_GAP = 1 << 32


@dataclass(frozen=True, slots=True)
class EventSource:
    """Where one endpoint's events come from. ``endpoint`` is the index identity (the serving
    ``ip:port``); the topic's pod id is ignored, as llm-d does in pod-discovery mode."""

    endpoint: str
    events_address: str
    replay_address: str | None = None


class KVEventSubscriber:
    def __init__(
        self,
        source: EventSource,
        index: KVBlockIndex,
        context: zmq.asyncio.Context,
        *,
        topic_filter: str = "kv@",
        hasher: BlockHasher | None = None,
        replay_timeout: float = 2.0,
        replay_budget: float = REPLAY_BUDGET_SECONDS,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        restart_after: float = RESTART_AFTER_SECONDS,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.source = source
        self.index = index
        self.context = context
        self.topic_filter = topic_filter
        self.hasher = hasher
        self.replay_timeout = replay_timeout
        self.replay_budget = replay_budget
        self.max_message_bytes = max_message_bytes
        self.restart_after = restart_after
        self.on_batch = on_batch  # (endpoint, seq) after each applied batch; tests and tracing
        self.last_seq: int | None = None
        self.connected = asyncio.Event()
        self._resync_reason: str | None = None
        self._replayed_from: int | None = None  # first seq of the applied range that came by replay
        self._ever_connected = False
        self._warned_mismatch = False
        self._stopped = False
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (when last logged, held back since)
        self._watcher: asyncio.Task[None] | None = None
        # Live handling and monitor-driven resyncs both await (replay); one at a time keeps order.
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        return self.source.endpoint

    async def run(self) -> None:
        """Receive and apply until cancelled."""
        sub = self.context.socket(zmq.SUB)
        _tune(sub, self.source.events_address, self.max_message_bytes)
        sub.setsockopt(zmq.RCVHWM, RCVHWM)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic_filter.encode())
        monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        watcher = self._watcher = asyncio.get_running_loop().create_task(self._watch(monitor, sub))
        try:
            sub.connect(self.source.events_address)
            while True:
                frames = await sub.recv_multipart()
                try:
                    frame = parse_frames(frames)
                except MalformedEvent as exc:
                    metrics.KVEVENTS_DROPPED.labels(f"frame_{exc.reason}").inc()
                else:
                    async with self._lock:
                        if self._resync_reason is not None:
                            await self._resync(self._resync_reason)
                        await self._on_live(frame)
                # pyzmq's recv_multipart returns an already-completed future while messages are
                # queued, and awaiting it does not yield: without this, a flood or a backlog held
                # the event loop (every request's routing) until the queue ran dry. llm-d reads
                # on its own goroutine and hands batches to a worker pool (kvevents/pool.go).
                await asyncio.sleep(0)
        finally:
            watcher.cancel()
            sub.disable_monitor()
            monitor.close(linger=0)
            sub.close(linger=0)

    def stop(self) -> None:
        """Apply nothing more: the caller forgets the endpoint now, while the run task (cancelled
        by the caller) and the monitor task end only at their next await."""
        self._stopped = True
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self, monitor: zmq.asyncio.Socket, sub: zmq.asyncio.Socket) -> None:
        disconnected = False
        pending: list[bytes] | None = None
        while True:
            message, pending = pending or await monitor.recv_multipart(), None
            event = parse_monitor_message(message)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                disconnected = True
                self.connected.clear()
                # The PUB drops what it cannot send (zmq_socket(3)), so from now on every store and
                # removal is missed: what the index holds can only go stale (a restarted vLLM's cache
                # is empty), and the reconnect resyncs anyway. Forget it now, not at the reconnect.
                dropped = self.index.clear(self.endpoint)
                if dropped:
                    self._log(logging.INFO, "disconnect", "disconnected, dropped %d entries", dropped)
                    self._publish_index_metrics()
                # A message past MAXMSGSIZE is a protocol error, after which libzmq ends the
                # connection for good instead of reconnecting (session_base.cpp, engine_error).
                # So when ZMQ has not reconnected by itself in restart_after, connect afresh. Not
                # at once: that would skip ZMQ's back-off, and a peer that accepts and drops
                # connections would have the EPP reconnecting as fast as TCP allows.
                try:
                    async with asyncio.timeout(self.restart_after):
                        pending = await monitor.recv_multipart()
                except TimeoutError:
                    with contextlib.suppress(zmq.ZMQError):
                        sub.disconnect(self.source.events_address)
                    sub.connect(self.source.events_address)
            elif event == zmq.EVENT_CONNECTED:
                self.connected.set()
                if disconnected:
                    metrics.KVEVENTS_RECONNECTS.inc()
                    self._resync_reason = "reconnect"
                    disconnected = False
                elif not self._ever_connected and self.source.replay_address is not None:
                    self._resync_reason = "connect"  # proactive replay from 0 on the first connect
                self._ever_connected = True
                async with self._lock:
                    if self._resync_reason is not None:
                        await self._resync(self._resync_reason)

    async def _resync(self, reason: str) -> None:
        """Drop the pod's entries and rebuild from the replay buffer when there is one."""
        self._resync_reason = None
        dropped = self.index.clear(self.endpoint)  # a replay from 0 must start from nothing
        if reason != "connect":
            metrics.KVEVENTS_RESYNCS.labels(reason).inc()
            self._log(logging.INFO, "resync", "resync (%s), dropped %d entries", reason, dropped)
        self.last_seq = None
        self._replayed_from = None
        if self.source.replay_address is not None:
            await self._replay(0)
        self._publish_index_metrics()

    async def _on_live(self, frame: Frame) -> None:
        seq = frame.seq
        last = self.last_seq
        if last is not None and seq <= last:
            if seq == last or (self._replayed_from is not None and seq >= self._replayed_from):
                # A batch already applied (live copies of what a replay delivered stay queued).
                metrics.KVEVENTS_DROPPED.labels("duplicate_seq").inc()
                return
            await self._resync("restart")  # numbers went backwards: a new vLLM process
            last = self.last_seq
            if last is not None and seq <= last:
                return
        if last is None and seq > 0 and self.source.replay_address is not None:
            self.index.clear(self.endpoint)
            await self._replay(0)
            last = self.last_seq
            if last is not None and seq <= last:
                return
        # Also after a join replay: one that stopped short (timeout, bad frame) leaves a gap before
        # this batch, like any other.
        if last is not None and seq > last + 1:
            metrics.KVEVENTS_MISSED_BATCHES.inc(min(seq - last - 1, MAX_COUNTED_GAP))
            if self.source.replay_address is not None and await self._replay(last + 1):
                metrics.KVEVENTS_GAPS.labels("replayed").inc()
            else:
                metrics.KVEVENTS_GAPS.labels("resynced").inc()
                metrics.KVEVENTS_RESYNCS.labels("gap").inc()
                dropped = self.index.clear(self.endpoint)
                self._log(
                    logging.WARNING,
                    "gap",
                    "batches %d..%d lost, dropped %d entries",
                    last + 1,
                    seq - 1,
                    dropped,
                )
            last = self.last_seq
            if last is not None and seq <= last:
                return
        # The live stream is now past everything a replay delivered (its queued copies came first,
        # in order), so a lower number from here on is a restart, not a copy. Kept until the next
        # resync, it made every backwards number after any replay (with a replay socket: always,
        # the connect-time replay from 0) a "duplicate", and a restart went unnoticed.
        self._replayed_from = None
        self._apply(frame, "live")

    async def _replay(self, start: int) -> bool:
        """Apply buffered batches from ``start``; True when they arrived contiguously from ``start``.

        Timeouts here and in _watch are ``asyncio.timeout``, not ``wait_for``: on Python 3.11,
        wait_for cancelled while the awaited future is already done returns its result and drops
        the cancellation (python/cpython#86296), and a replay's recv often is done at once. A
        removed endpoint's replay then ran on, filling the index for an endpoint no longer there.
        """
        assert self.source.replay_address is not None
        try:
            dealer = self.context.socket(zmq.DEALER)
        except zmq.ZMQError as exc:  # the context's socket limit, or the process's descriptors
            self._log(logging.WARNING, "replay", "replay from %d: no socket: %r", start, exc)
            return False
        _tune(dealer, self.source.replay_address, self.max_message_bytes)
        complete = False
        expected = start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.replay_budget
        try:
            dealer.connect(self.source.replay_address)
            # A DEALER with no connected peer blocks on send: bound that wait too.
            async with asyncio.timeout(self.replay_timeout):
                await dealer.send_multipart([b"", start.to_bytes(SEQ_BYTES, "big")])
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self._log(
                        logging.WARNING,
                        "replay",
                        "replay from %d still running after %.1fs (at seq %d): abandoned",
                        start,
                        self.replay_budget,
                        expected,
                    )
                    return False
                timeout = min(self.replay_timeout, remaining)
                async with asyncio.timeout(timeout):
                    frames = await dealer.recv_multipart()
                if frames and not frames[0]:
                    frames = frames[1:]
                if len(frames) == 3 and frames[1] == END_SEQ and not frames[2]:
                    complete = True
                    break
                frame = parse_frames(frames)
                if frame.seq != expected:
                    if start == 0 and expected == 0 and frame.seq > 0:
                        # vLLM's buffer no longer reaches back to 0: rebuild from what it has.
                        metrics.KVEVENTS_GAPS.labels("partial_history").inc()
                        expected = frame.seq
                    else:
                        self._log(
                            logging.WARNING,
                            "replay",
                            "replay from %d returned %d, expected %d",
                            start,
                            frame.seq,
                            expected,
                        )
                        return False
                metrics.KVEVENTS_REPLAYED_BATCHES.inc()
                if self._replayed_from is None or frame.seq < self._replayed_from:
                    self._replayed_from = frame.seq
                self._apply(frame, "replay")
                expected += 1
                await asyncio.sleep(0)  # a completed recv does not yield: see run()
        except (TimeoutError, MalformedEvent, zmq.ZMQError) as exc:
            self._log(logging.WARNING, "replay", "replay from %d failed: %r", start, exc)
            return False
        finally:
            dealer.close(linger=0)
        # An empty answer is fine from 0 (nothing published yet), not for a gap's first batch.
        return complete and (expected > start or start == 0)

    def _apply(self, frame: Frame, source: str) -> None:
        if self._stopped:
            return
        self.last_seq = frame.seq
        try:
            batch = decode_batch(frame.payload)
        except MalformedEvent as exc:
            metrics.KVEVENTS_DROPPED.labels(f"malformed_{exc.reason}").inc()
            metrics.KVEVENTS_RESYNCS.labels("malformed").inc()
            dropped = self.index.clear(self.endpoint)
            self._log(
                logging.WARNING,
                "malformed",
                "malformed batch %d (%s), dropped %d entries",
                frame.seq,
                exc,
                dropped,
            )
            self._publish_index_metrics()
            return
        if batch.unknown:
            metrics.KVEVENTS_DROPPED.labels("unknown_event").inc(len(batch.unknown))
        if self.hasher is not None:
            for event in batch.events:
                if isinstance(event, BlockStored):
                    self._verify(event)
        result = self.index.apply_batch(self.endpoint, batch)
        if result.stored:
            metrics.KVEVENTS_EVENTS.labels("BlockStored").inc(result.stored)
        if result.removed:
            metrics.KVEVENTS_EVENTS.labels("BlockRemoved").inc(result.removed)
        if result.cleared:
            metrics.KVEVENTS_EVENTS.labels("AllBlocksCleared").inc(result.cleared)
        if result.skipped_group:
            metrics.KVEVENTS_DROPPED.labels("group_not_indexed").inc(result.skipped_group)
        if result.skipped_medium:
            metrics.KVEVENTS_DROPPED.labels("medium_limit").inc(result.skipped_medium)
        if result.unknown_removals:
            metrics.KVEVENTS_UNKNOWN_REMOVALS.inc(result.unknown_removals)
        metrics.KVEVENTS_BATCHES.labels(self.endpoint, source).inc()
        metrics.KVEVENTS_LAG_SECONDS.observe(min(max(0.0, time.time() - batch.ts), MAX_LAG_SECONDS))
        metrics.KVEVENTS_LAST_SEQUENCE.labels(self.endpoint).set(frame.seq)
        self._publish_index_metrics()
        if self.on_batch is not None:
            self.on_batch(self.endpoint, frame.seq)

    def _verify(self, event: BlockStored) -> None:
        """Check the first block of a chain-start store against our own key computation."""
        assert self.hasher is not None
        if event.parent_block_hash is not None or not event.block_hashes or event.lora_name is not None:
            return
        if event.block_size != self.hasher.block_size:
            ok = False
        else:
            salt = None
            if event.extra_keys and event.extra_keys[0] is not None:
                first = event.extra_keys[0]
                if len(first) != 1 or not isinstance(first[0], str):
                    return  # multimodal or prompt-embeds keys: not predictable from text
                salt = first[0]
            size = self.hasher.block_size
            ok = self.hasher.block_keys(event.token_ids[:size], cache_salt=salt)[:1] == [
                event.block_hashes[0]
            ]
        if not ok:
            metrics.KVEVENTS_HASH_MISMATCHES.inc()
            if not self._warned_mismatch:
                self._warned_mismatch = True
                log.warning(
                    "kv events %s: block keys differ from the EPP's (%s, block size %d, seed %r; the "
                    "event says block size %d): check --prefix-caching-hash-algo, PYTHONHASHSEED and "
                    "--block-size against the producer's parameters",
                    self.endpoint,
                    self.hasher.algorithm,
                    self.hasher.block_size,
                    self.hasher.seed,
                    event.block_size,
                )

    def _log(self, level: int, kind: str, message: str, *args: object) -> None:
        """Log at most one line of ``kind`` every LOG_INTERVAL_SECONDS: a pod sending malformed
        batches, gaps or restarts by the thousand would otherwise write a line for each, and the
        handler writes to stderr from the event loop."""
        now = time.monotonic()
        last, held = self._logged.get(kind, (-LOG_INTERVAL_SECONDS, 0))
        if now - last < LOG_INTERVAL_SECONDS:
            self._logged[kind] = (last, held + 1)
            return
        self._logged[kind] = (now, 0)
        suffix = f" ({held} more since the last such line)" if held else ""
        log.log(level, "kv events %s: " + message + suffix, self.endpoint, *args)

    def _publish_index_metrics(self) -> None:
        metrics.KVEVENTS_INDEX_ENTRIES.set(self.index.size)
        metrics.KVEVENTS_ENDPOINT_ENTRIES.labels(self.endpoint).set(self.index.endpoint_size(self.endpoint))


def _tune(socket: zmq.asyncio.Socket, address: str, max_message_bytes: int) -> None:
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    if address.startswith("tcp://["):
        socket.setsockopt(zmq.IPV6, 1)
