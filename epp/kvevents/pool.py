"""Subscriptions that follow the pool: one :class:`KVEventSubscriber` task per endpoint.

The EPP's datastore (or the ``endpoint-notification-source`` plugin in phase 2) calls
:meth:`KVEventSubscriptions.add_endpoint` / :meth:`remove_endpoint` as pods come and go, or hands
over the whole live set with :meth:`endpoints_changed` (the shape of the scheduling framework's
``EndpointSetObserver``). As in llm-d-router (``preciseprefixcache/extractor.go``), the events
address is the endpoint's IP with ``socketPort`` (default 5557) and the replay address its IP with
``replaySocketPort`` (off unless set); a removed endpoint's subscription is cancelled and its index
entries are dropped at once.

Must be used from the event loop thread; :meth:`add_endpoint` and :meth:`remove_endpoint` do not
block (sockets are opened and closed inside the endpoint's task).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable

import zmq.asyncio

from epp import metrics
from epp.kvevents.hashing import BlockHasher
from epp.kvevents.index import KVBlockIndex
from epp.kvevents.subscriber import (
    MAX_MESSAGE_BYTES,
    REPLAY_BUDGET_SECONDS,
    RESTART_AFTER_SECONDS,
    EventSource,
    KVEventSubscriber,
)

log = logging.getLogger(__name__)

DEFAULT_SOCKET_PORT = 5557


def split_hostport(endpoint: str) -> tuple[str, str]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return host.strip("[]"), port


def tcp_address(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class KVEventSubscriptions:
    def __init__(
        self,
        index: KVBlockIndex,
        *,
        socket_port: int = DEFAULT_SOCKET_PORT,
        replay_port: int | None = None,
        topic_filter: str = "kv@",
        hasher: BlockHasher | None = None,
        replay_timeout: float = 2.0,
        replay_budget: float = REPLAY_BUDGET_SECONDS,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        restart_after: float = RESTART_AFTER_SECONDS,
        context: zmq.asyncio.Context | None = None,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.index = index
        self.socket_port = socket_port
        self.replay_port = replay_port
        self.topic_filter = topic_filter
        self.hasher = hasher
        self.replay_timeout = replay_timeout
        self.replay_budget = replay_budget
        self.max_message_bytes = max_message_bytes
        self.restart_after = restart_after
        self.on_batch = on_batch
        self._own_context = context is None
        if context is None:
            context = zmq.asyncio.Context()
            # A subscription takes three sockets (SUB and the monitor's pair, a DEALER while it
            # replays) and a context allows 1,023 unless told otherwise: the 342nd endpoint failed
            # with "Too many open files". Descriptors (RLIMIT_NOFILE) are the limit that remains.
            context.set(zmq.MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT))
        self.context = context
        self._subscribers: dict[str, tuple[KVEventSubscriber, asyncio.Task[None]]] = {}

    def source_for(self, endpoint: str) -> EventSource:
        host, _ = split_hostport(endpoint)
        replay = tcp_address(host, self.replay_port) if self.replay_port else None
        return EventSource(endpoint, tcp_address(host, self.socket_port), replay)

    def add_endpoint(self, endpoint: str, source: EventSource | None = None) -> KVEventSubscriber:
        """Subscribe to ``endpoint``'s events (idempotent; a changed source resubscribes)."""
        source = source or self.source_for(endpoint)
        current = self._subscribers.get(endpoint)
        if current is not None:
            if current[0].source == source and not current[1].done():
                return current[0]
            self.remove_endpoint(endpoint)
        subscriber = KVEventSubscriber(
            source,
            self.index,
            self.context,
            topic_filter=self.topic_filter,
            hasher=self.hasher,
            replay_timeout=self.replay_timeout,
            replay_budget=self.replay_budget,
            max_message_bytes=self.max_message_bytes,
            restart_after=self.restart_after,
            on_batch=self.on_batch,
        )
        task = asyncio.get_running_loop().create_task(subscriber.run(), name=f"kvevents:{endpoint}")
        task.add_done_callback(functools.partial(self._ended, endpoint))
        self._subscribers[endpoint] = (subscriber, task)
        metrics.KVEVENTS_SUBSCRIBERS.set(len(self._subscribers))
        log.info("kv events: subscribed to %s at %s", endpoint, source.events_address)
        return subscriber

    def remove_endpoint(self, endpoint: str) -> None:
        """Unsubscribe and forget everything ``endpoint`` held."""
        entry = self._subscribers.pop(endpoint, None)
        if entry is not None:
            entry[0].stop()  # nothing more reaches the index, even before the tasks see the cancel
            entry[1].cancel()
            log.info("kv events: unsubscribed from %s", endpoint)
        self.index.remove_endpoint(endpoint)
        metrics.kvevents_forget_endpoint(endpoint)
        metrics.KVEVENTS_SUBSCRIBERS.set(len(self._subscribers))
        metrics.KVEVENTS_INDEX_ENTRIES.set(self.index.size)

    def endpoints_changed(self, live: Iterable[str]) -> None:
        live = frozenset(live)
        for endpoint in list(self._subscribers):
            if endpoint not in live:
                self.remove_endpoint(endpoint)
        for endpoint in live - self._subscribers.keys():
            self.add_endpoint(endpoint)
        for endpoint in self.index.endpoints() - live:  # entries of endpoints never subscribed here
            self.index.remove_endpoint(endpoint)

    def subscriber(self, endpoint: str) -> KVEventSubscriber | None:
        entry = self._subscribers.get(endpoint)
        return entry[0] if entry else None

    def endpoints(self) -> frozenset[str]:
        return frozenset(self._subscribers)

    async def close(self) -> None:
        tasks = [task for _, task in self._subscribers.values()]
        for endpoint in list(self._subscribers):
            self.remove_endpoint(endpoint)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_context:
            self.context.destroy(linger=0)

    def _ended(self, endpoint: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # A bug, not a network condition (ZMQ reconnects by itself): keep the pool going, but
            # forget the endpoint's entries since nothing keeps them current any more.
            log.error("kv events: subscriber for %s failed", endpoint, exc_info=error)
            entry = self._subscribers.get(endpoint)
            if entry is not None and entry[1] is task:
                del self._subscribers[endpoint]
                self.index.remove_endpoint(endpoint)
                metrics.KVEVENTS_SUBSCRIBERS.set(len(self._subscribers))
