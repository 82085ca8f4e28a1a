"""Prometheus metrics of the KV-event subscriber and index (prometheus_client default registry).

Kept in one module so they can be merged into the EPP's metrics module as they are. Per-endpoint
series are removed when the endpoint leaves the pool (:func:`forget_endpoint`).
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

BATCHES = Counter(
    "epp_kvevents_batches_total",
    "KV-event batches applied to the index, by how they arrived (live or replay).",
    ["endpoint", "source"],
)
EVENTS = Counter(
    "epp_kvevents_events_total",
    "KV events applied, by type (BlockStored, BlockRemoved, AllBlocksCleared).",
    ["type"],
)
DROPPED = Counter(
    "epp_kvevents_dropped_total",
    "Frames, batches or events dropped, by reason (malformed payload, unknown event type, "
    "KV-cache group not indexed, duplicate or stale sequence number).",
    ["reason"],
)
UNKNOWN_REMOVALS = Counter(
    "epp_kvevents_unknown_removals_total",
    "BlockRemoved keys the index did not hold (events missed before subscribing or bound-evicted).",
)
GAPS = Counter(
    "epp_kvevents_gaps_total",
    "Sequence gaps detected, by outcome (replayed: filled from the pod's replay buffer; "
    "resynced: the pod's entries were dropped).",
    ["outcome"],
)
MISSED_BATCHES = Counter(
    "epp_kvevents_missed_batches_total", "Batches missing from the sequence when gaps were detected."
)
REPLAYED_BATCHES = Counter("epp_kvevents_replayed_batches_total", "Batches received from replay sockets.")
RESYNCS = Counter(
    "epp_kvevents_resyncs_total",
    "Times an endpoint's index entries were dropped to resynchronise, by reason.",
    ["reason"],
)
RECONNECTS = Counter(
    "epp_kvevents_reconnects_total", "Subscriber connections re-established after a disconnect."
)
HASH_MISMATCHES = Counter(
    "epp_kvevents_hash_mismatch_total",
    "Chain-start BlockStored events whose keys differ from the EPP's own computation from their "
    "token ids: the EPP's hash algorithm, seed or block size does not match the pod's.",
)
LAG_SECONDS = Histogram(
    "epp_kvevents_lag_seconds",
    "Batch age when applied: local time minus the batch timestamp set by vLLM (includes clock skew "
    "between nodes).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INDEX_ENTRIES = Gauge(
    "epp_kvevents_index_entries", "(block, endpoint, medium) entries in the precise prefix index."
)
INDEX_BLOCKS = Gauge("epp_kvevents_index_blocks", "Distinct (block, medium) keys in the index.")
INDEX_EVICTIONS = Counter(
    "epp_kvevents_index_evictions_total", "Entries evicted to keep the index within its memory bound."
)
ENDPOINT_ENTRIES = Gauge(
    "epp_kvevents_endpoint_entries", "Index entries held by each endpoint.", ["endpoint"]
)
SUBSCRIBERS = Gauge("epp_kvevents_subscribers", "Endpoints with an active KV-event subscription.")
LAST_SEQUENCE = Gauge(
    "epp_kvevents_last_sequence", "Last sequence number applied per endpoint.", ["endpoint"]
)


def forget_endpoint(endpoint: str) -> None:
    for gauge in (ENDPOINT_ENTRIES, LAST_SEQUENCE):
        with contextlib.suppress(KeyError):
            gauge.remove(endpoint)
    for source in ("live", "replay"):
        with contextlib.suppress(KeyError):
            BATCHES.remove(endpoint, source)
