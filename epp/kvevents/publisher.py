"""A vLLM-compatible KV-event publisher on asyncio: PUB socket plus optional replay ROUTER.

Same behaviour as vLLM 0.32's ``ZmqEventPublisher`` (``vllm/distributed/kv_events.py``): frames
``(topic, seq, payload)`` with ``seq`` 8 bytes big-endian from 0; the last ``buffer_steps`` batches
kept for replay; a replay request ``(identity, b"", start)`` answered with every buffered batch from
``start`` as ``(identity, b"", topic, seq, payload)`` and then ``(identity, b"", b"", END_SEQ, b"")``.
A bind address with port 0 binds an ephemeral port (:attr:`events_address` tells which).

The vLLM simulator publishes its cache events through it, and the tests drive subscribers with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import zmq
import zmq.asyncio

from epp.kvevents.wire import END_SEQ, SEQ_BYTES, EventBatch, encode_batch

log = logging.getLogger(__name__)


class KVEventPublisher:
    def __init__(
        self,
        context: zmq.asyncio.Context,
        bind: str = "tcp://*:5557",
        replay_bind: str | None = None,
        *,
        topic: str = "",
        buffer_steps: int = 10_000,
        hwm: int = 100_000,
        first_seq: int = 0,
    ) -> None:
        self.topic = topic.encode()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._next_seq = first_seq
        self._pub = context.socket(zmq.PUB)
        self._router: zmq.asyncio.Socket | None = None
        self.replay_address: str | None = None
        self._replay_task: asyncio.Task[None] | None = None
        try:
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.setsockopt(zmq.SNDHWM, hwm)
            self._pub.bind(bind)
            self.events_address: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            if replay_bind is not None:
                self._router = context.socket(zmq.ROUTER)
                self._router.setsockopt(zmq.LINGER, 0)
                self._router.bind(replay_bind)
                self.replay_address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError:
            self._pub.close(linger=0)
            if self._router is not None:
                self._router.close(linger=0)
            raise
        if self._router is not None:
            self._replay_task = asyncio.get_running_loop().create_task(self._serve_replay())

    @property
    def next_seq(self) -> int:
        return self._next_seq

    async def publish(self, batch: EventBatch, *, send: bool = True) -> int:
        """Publish ``batch``; returns its sequence number. ``send=False`` only buffers it (a batch
        lost on the way, still replayable), for tests."""
        seq = self._next_seq
        self._next_seq += 1
        payload = encode_batch(batch)
        if send:
            await self._pub.send_multipart((self.topic, seq.to_bytes(SEQ_BYTES, "big"), payload))
        self._buffer.append((seq, payload))
        return seq

    async def _serve_replay(self) -> None:
        assert self._router is not None
        router = self._router
        while True:
            frames = await router.recv_multipart()
            if len(frames) != 3:
                log.warning("kv events publisher: invalid replay request with %d frames", len(frames))
                continue
            identity, _, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await router.send_multipart(
                        (identity, b"", self.topic, seq.to_bytes(SEQ_BYTES, "big"), payload)
                    )
            await router.send_multipart((identity, b"", b"", END_SEQ, b""))

    async def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        if self._router is not None:
            self._router.close(linger=0)
        self._pub.close(linger=0)
