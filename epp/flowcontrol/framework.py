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


class OrderedItems:
    """Queue items in ``(key, seq)`` order (a binary heap), where an item leaves from anywhere in O(1).

    Removal (dispatch, client gone, TTL expired) only marks the item and counts it: its entry is
    dropped when it reaches the top, or with every other departed one when they outnumber the live
    entries by more than ``slack`` (the heap is then rebuilt), so nothing accumulates."""

    __slots__ = ("_dead", "_entries", "_slack")

    def __init__(self, slack: int) -> None:
        self._entries: list[tuple[tuple[float, ...], int, QueueItem]] = []
        self._dead = 0
        self._slack = slack

    def push(self, item: QueueItem) -> None:
        heapq.heappush(self._entries, (item.key, item.seq, item))

    def first(self) -> QueueItem | None:
        entries = self._entries
        while entries and entries[0][2].state is not ItemState.QUEUED:
            heapq.heappop(entries)
            self._dead -= 1
        return entries[0][2] if entries else None

    def left(self) -> None:
        """One item (already marked as no longer queued) has left."""
        self._dead += 1
        if self._dead > self._slack and self._dead > len(self._entries) - self._dead:
            self._entries = [entry for entry in self._entries if entry[2].state is ItemState.QUEUED]
            heapq.heapify(self._entries)
            self._dead = 0

    def live(self) -> list[QueueItem]:
        """The queued items, in no particular order."""
        return [entry[2] for entry in self._entries if entry[2].state is ItemState.QUEUED]

    def __len__(self) -> int:
        """Entries held, live or departed (what the no-leak tests bound)."""
        return len(self._entries)


class FlowQueue:
    """The queue of one flow, kept in its band's ordering-policy order; the counts of an item that
    leaves are released at once (:class:`OrderedItems`)."""

    __slots__ = ("_items", "bytes", "fairness_id", "length", "priority")

    def __init__(self, fairness_id: str, priority: int) -> None:
        self.fairness_id = fairness_id
        self.priority = priority
        self._items = OrderedItems(slack=16)
        self.length = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.length

    def push(self, item: QueueItem) -> None:
        self._items.push(item)
        self.length += 1
        self.bytes += item.byte_size

    def peek(self) -> QueueItem | None:
        return self._items.first()

    def discard(self, item: QueueItem) -> None:
        """``item`` (already marked as no longer queued) leaves this queue."""
        self.length -= 1
        self.bytes -= item.byte_size
        self._items.left()

    def items(self) -> list[QueueItem]:
        """The live items, in no particular order."""
        return self._items.live()

    def heap_size(self) -> int:
        """Entries held, live or not (what the no-leak tests bound)."""
        return len(self._items)


class BandView:
    """What a fairness policy sees of one priority band: its flows with something queued."""

    __slots__ = ("_queued", "flow_ids", "flows", "ordering", "priority", "state")

    def __init__(self, priority: int, ordering: OrderingPolicy, state: Any) -> None:
        self.priority = priority
        self.ordering = ordering
        self.flows: dict[str, FlowQueue] = {}
        # The flows' ids in order, kept as flows come and go, and every queued item of the band in
        # the ordering policy's order. Fairness ids come from a client header, so a policy must not
        # walk or sort every flow on each pick: with 5,000 one-request flows that cost 4 s of the
        # event loop to drain (llm-d-router's policies do walk them, in Go).
        self.flow_ids: list[str] = []
        self._queued = OrderedItems(slack=64)
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
        self._queued.push(item)
        return queue

    def discard(self, item: QueueItem) -> None:
        """``item`` (already marked as no longer queued) leaves its flow; an emptied flow goes."""
        queue = self.flows[item.fairness_id]
        queue.discard(item)
        if not len(queue):
            self.remove_flow(item.fairness_id)
        self._queued.left()

    def first_queued(self) -> QueueItem | None:
        """The band's first queued item in the ordering policy's order (the head of its flow)."""
        return self._queued.first()

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
