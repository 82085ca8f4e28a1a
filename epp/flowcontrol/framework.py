"""Flow-control plugin interfaces and the queue structures they act on.

llm-d's dispatch hierarchy (llm-d-router ``pkg/epp/framework/interface/flowcontrol``): a request
belongs to a *flow* = (fairness id, priority). Flows of one priority form a *band*. Each dispatch
takes the highest-priority band whose usage limit the pool's saturation is below (tier 1), lets the
band's **fairness policy** pick one of its flows (tier 2), and dispatches the head of that flow's
queue, whose order the band's **ordering policy** defines (tier 3). A **usage-limit policy** turns
the pool saturation into a ceiling per band.

Everything runs on the EPP's one event loop, so nothing here locks.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from epp.scheduling.framework import Plugin


class ItemState(Enum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    FINALIZED = "finalized"  # left the queue without being dispatched (rejected, expired, cancelled)


@dataclass(eq=False, slots=True)
class QueueItem:
    """One request waiting for flow control's decision."""

    request_id: str
    fairness_id: str
    priority: int
    byte_size: int
    received_at: float  # when the request's headers arrived (clock of the controller)
    enqueued_at: float
    seq: int  # arrival order at the controller: the FCFS order and every tie-break
    ttl: float  # queue-wait budget while the pool has endpoints; 0 = none
    headers: Mapping[str, str]
    model_name: str = ""
    target_model_name: str = ""
    labels: tuple[str, str, str] = ("", "", "")  # bounded (fairness_id, model, target) series labels
    state: ItemState = ItemState.QUEUED
    outcome: Any = None  # the controller's Outcome once the item left the queue
    key: tuple[float, ...] = ()  # the ordering policy's sort key, computed once at enqueue
    deadline: float = float("inf")  # when the item expires in the current regime
    future: asyncio.Future[None] | None = None
    gauged: bool = False  # counted in the queue gauges (not if dispatched within its enqueue)


class FlowQueue:
    """The queue of one flow, kept in its band's ordering-policy order (a binary heap).

    Removal of an item from the middle (client gone, TTL expired) is O(1): the item is marked
    and its counts are released at once; the heap entry is dropped when it reaches the head, or
    when such entries outnumber the live ones (the heap is then rebuilt), so nothing accumulates.
    """

    __slots__ = ("_dead", "_heap", "bytes", "fairness_id", "length", "priority")

    def __init__(self, fairness_id: str, priority: int) -> None:
        self.fairness_id = fairness_id
        self.priority = priority
        self._heap: list[tuple[tuple[float, ...], int, QueueItem]] = []
        self._dead = 0
        self.length = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.length

    def push(self, item: QueueItem) -> None:
        heapq.heappush(self._heap, (item.key, item.seq, item))
        self.length += 1
        self.bytes += item.byte_size

    def peek(self) -> QueueItem | None:
        heap = self._heap
        while heap and heap[0][2].state is not ItemState.QUEUED:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][2] if heap else None

    def discard(self, item: QueueItem) -> None:
        """``item`` (already marked as no longer queued) leaves this queue."""
        self.length -= 1
        self.bytes -= item.byte_size
        self._dead += 1
        if self._dead > 16 and self._dead > self.length:
            self._heap = [entry for entry in self._heap if entry[2].state is ItemState.QUEUED]
            heapq.heapify(self._heap)
            self._dead = 0

    def items(self) -> list[QueueItem]:
        """The live items, in no particular order."""
        return [entry[2] for entry in self._heap if entry[2].state is ItemState.QUEUED]

    def heap_size(self) -> int:
        """Entries held, live or not (what the no-leak tests bound)."""
        return len(self._heap)


class BandView:
    """What a fairness policy sees of one priority band: its flows with something queued."""

    __slots__ = ("_dead", "_queued", "flow_ids", "flows", "ordering", "priority", "state")

    def __init__(self, priority: int, ordering: OrderingPolicy, state: Any) -> None:
        self.priority = priority
        self.ordering = ordering
        self.flows: dict[str, FlowQueue] = {}
        # The flows' ids in order, kept as flows come and go, and every queued item of the band in
        # the ordering policy's order (a heap; items that left are dropped when they reach the top,
        # or all at once when they outnumber the live ones). Fairness ids come from a client header,
        # so a policy must not walk or sort every flow on each pick: with 5,000 one-request flows
        # that cost 4 s of the event loop to drain (llm-d-router's policies do walk them, in Go).
        self.flow_ids: list[str] = []
        self._queued: list[tuple[tuple[float, ...], int, QueueItem]] = []
        self._dead = 0
        self.state = state  # the band's own fairness-policy state (e.g. a round-robin cursor)

    def add_flow(self, queue: FlowQueue) -> None:
        self.flows[queue.fairness_id] = queue
        bisect.insort(self.flow_ids, queue.fairness_id)

    def remove_flow(self, fairness_id: str) -> None:
        del self.flows[fairness_id]
        del self.flow_ids[bisect.bisect_left(self.flow_ids, fairness_id)]

    def push(self, item: QueueItem) -> FlowQueue:
        """Queue ``item`` (its ``key`` set) in its flow, creating the flow if it has none."""
        queue = self.flows.get(item.fairness_id)
        if queue is None:
            queue = FlowQueue(item.fairness_id, item.priority)
            self.add_flow(queue)
        queue.push(item)
        heapq.heappush(self._queued, (item.key, item.seq, item))
        return queue

    def discard(self, item: QueueItem) -> None:
        """``item`` (already marked as no longer queued) leaves its flow; an emptied flow goes."""
        queue = self.flows[item.fairness_id]
        queue.discard(item)
        if not len(queue):
            self.remove_flow(item.fairness_id)
        self._dead += 1
        if self._dead > 64 and self._dead > len(self._queued) - self._dead:
            self._queued = [entry for entry in self._queued if entry[2].state is ItemState.QUEUED]
            heapq.heapify(self._queued)
            self._dead = 0

    def first_queued(self) -> QueueItem | None:
        """The band's first queued item in the ordering policy's order (the head of its flow)."""
        heap = self._queued
        while heap and heap[0][2].state is not ItemState.QUEUED:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][2] if heap else None

    def heap_size(self) -> int:
        """Entries held, live or not (what the no-leak tests bound)."""
        return len(self._queued)


class OrderingPolicy(Plugin):
    """Orders the requests within one flow: the smallest key is dispatched first."""

    def key(self, item: QueueItem) -> tuple[float, ...]:
        raise NotImplementedError


class FairnessPolicy(Plugin):
    """Chooses which flow of a band gets the next dispatch. One plugin instance serves many bands;
    per-band state comes from :meth:`new_state` and is passed back to :meth:`pick`."""

    def new_state(self) -> Any:
        return None

    def pick(self, band: BandView) -> FlowQueue | None:
        """A flow with at least one queued item, or None when the band is empty."""
        raise NotImplementedError


class UsageLimitPolicy(Plugin):
    """Turns pool saturation into an admission ceiling per priority: a band dispatches only while
    the saturation is below its ceiling (1.0 = dispatch until the detector calls the pool full)."""

    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        """One ceiling per priority, ``priorities`` highest first."""
        raise NotImplementedError
