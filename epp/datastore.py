"""The EPP's view of the pool: endpoints, their model-server metrics, its own in-flight counts, and
InferenceObjective priorities.

Everything runs on one asyncio event loop, so there are no locks: discovery replaces the endpoint
set, the scraper swaps whole :class:`EndpointMetrics` objects in, and the director reads snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from epp import metrics as epp_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint as discovery sees it: a pod x target port."""

    name: str
    address: str
    port: int
    metrics_port: int
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def hostport(self) -> str:
        """``ip:port`` as Envoy's ORIGINAL_DST header wants it (IPv6 in brackets)."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """One successful scrape of a model server's /metrics (or the empty never-scraped value)."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0  # 0..1
    running_loras: frozenset[str] = frozenset()
    waiting_loras: frozenset[str] = frozenset()
    max_loras: int = 0
    block_size: int | None = None  # tokens per KV block, from vllm:cache_config_info
    num_gpu_blocks: int | None = None
    updated_at: float = 0.0  # time.monotonic() of the scrape; 0 = never scraped


@dataclass(frozen=True, slots=True)
class RewriteTarget:
    """One target of an InferenceModelRewrite rule; ``weight`` None = unweighted."""

    model: str
    weight: int | None = None


class Endpoint:
    """A schedulable endpoint. Identity is ``hostport``; a changed spec keeps metrics and in-flight."""

    __slots__ = (
        "address",
        "hostport",
        "in_flight",
        "labels",
        "metrics",
        "metrics_port",
        "name",
        "pending",
        "pending_tokens",
        "port",
        "routed",
        "scrape_error",
        "scrape_failures",
    )

    def __init__(self, spec: EndpointSpec) -> None:
        self.name = spec.name
        self.address = spec.address
        self.port = spec.port
        self.metrics_port = spec.metrics_port
        self.labels: Mapping[str, str] = dict(spec.labels)
        self.hostport = spec.hostport
        self.metrics = EndpointMetrics()
        self.in_flight = 0  # requests this EPP sent here that have not completed
        self.routed = 0  # requests this EPP ever sent here (the scraper's "anything new?" check)
        # Of those, the ones that have not yet answered a byte (still queued or in prefill), and
        # their estimated uncached prompt tokens: llm-d's inflight-load-producer releases the
        # tokens at StartOfStream (dataproducer/inflightload/README.md). Current to the request,
        # unlike the scraped queue, which is up to a scrape interval old.
        self.pending = 0
        self.pending_tokens = 0
        self.scrape_failures = 0  # consecutive failed scrapes; 0 after a success
        self.scrape_error: str | None = None

    def update_spec(self, spec: EndpointSpec) -> None:
        self.name = spec.name
        self.metrics_port = spec.metrics_port
        self.labels = dict(spec.labels)

    @property
    def queue_depth(self) -> int:
        """Requests queued here as best known now: the scraped waiting queue, or this EPP's own
        dispatched-but-unanswered count when that is larger (a burst routed since the last scrape
        is not in the scrape yet). Load scorers and detectors read this, so a burst between two
        scrapes spreads instead of herding onto the endpoint that looked emptiest 50 ms ago."""
        waiting = self.metrics.waiting
        pending = self.pending
        return pending if pending > waiting else waiting

    def metrics_fresh(self, now: float, staleness: float) -> bool:
        return self.scrape_failures == 0 and now - self.metrics.updated_at <= staleness

    def __repr__(self) -> str:
        return f"Endpoint({self.name}@{self.hostport})"


Listener = Callable[[], None]


class Datastore:
    def __init__(self) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._snapshot: tuple[Endpoint, ...] = ()
        self._objectives: dict[str, int] = {}
        self._rewrites: dict[str, tuple[RewriteTarget, ...]] = {}
        self._listeners: list[Listener] = []
        self.synced = False  # the first complete endpoint list has arrived
        self.version = 0  # bumped on every endpoint-set change

    # ---- endpoints -------------------------------------------------------------------------
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The current endpoint set (an immutable snapshot; cheap, rebuilt only on change)."""
        return self._snapshot

    def get(self, hostport: str) -> Endpoint | None:
        return self._endpoints.get(hostport)

    def replace_endpoints(self, specs: Iterable[EndpointSpec]) -> None:
        """Make the endpoint set exactly ``specs``; survivors keep metrics and in-flight counts."""
        wanted: dict[str, EndpointSpec] = {}
        for spec in specs:
            wanted[spec.hostport] = spec
        changed = set(wanted) != set(self._endpoints)
        fresh: dict[str, Endpoint] = {}
        for hostport, spec in wanted.items():
            existing = self._endpoints.get(hostport)
            if existing is None:
                fresh[hostport] = Endpoint(spec)
            else:
                if (existing.name, existing.metrics_port, existing.labels) != (
                    spec.name,
                    spec.metrics_port,
                    dict(spec.labels),
                ):
                    changed = True
                existing.update_spec(spec)
                fresh[hostport] = existing
        self._endpoints = fresh
        self.synced = True
        if changed:
            self._snapshot = tuple(fresh.values())
            self.version += 1
            log.info("endpoint set now has %d endpoints", len(fresh))
            for listener in list(self._listeners):
                listener()

    def add_listener(self, listener: Listener) -> None:
        """Called (synchronously) after every change of the endpoint set."""
        self._listeners.append(listener)

    # ---- InferenceObjectives ---------------------------------------------------------------
    def set_objectives(self, priorities: Mapping[str, int]) -> None:
        self._objectives = dict(priorities)

    def upsert_objective(self, name: str, priority: int) -> None:
        self._objectives[name] = priority

    def delete_objective(self, name: str) -> None:
        self._objectives.pop(name, None)

    def priority(self, objective: str | None) -> int:
        """Priority of the named objective; unknown or absent objective is 0 (llm-d's behaviour)."""
        if objective is None:
            return 0
        return self._objectives.get(objective, 0)

    def objectives(self) -> Mapping[str, int]:
        return dict(self._objectives)

    # ---- InferenceModelRewrites --------------------------------------------------------------
    def set_model_rewrites(self, rules: Mapping[str, Sequence[RewriteTarget]]) -> None:
        """Incoming model name (exact match) → the targets it is rewritten to."""
        self._rewrites = {model: tuple(targets) for model, targets in rules.items() if targets}
        # As llm-d's datastore (PreAdmitModelLabels): configured names always keep their own model
        # label on the flow-control series, however many unconfigured names clients sent first.
        epp_metrics.FLOW_LABELS.pin_models(
            [*self._rewrites, *(t.model for targets in self._rewrites.values() for t in targets)]
        )

    def rewrite_targets(self, model: str) -> tuple[RewriteTarget, ...]:
        return self._rewrites.get(model, ())

    def model_rewrites(self) -> Mapping[str, tuple[RewriteTarget, ...]]:
        return dict(self._rewrites)
