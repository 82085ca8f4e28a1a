"""Plugin interfaces of the scheduler, mirroring llm-d's framework (filters, scorers, pickers,
profile handlers, data producers, pre-request hooks, saturation detectors).

A plugin is a small class; its ``type_name`` is the llm-d ``type`` string and its instance ``name``
is the config's ``name`` (defaulting to the type). Scorers return one score in [0, 1] per endpoint,
in the order given, so the profile can add weighted scores without building dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from epp.datastore import Endpoint


@dataclass(slots=True)
class SchedulingRequest:
    request_id: str
    target_model: str
    prompt_text: str
    headers: Mapping[str, str]
    lora_adapter: str | None = None
    priority: int = 0
    now: float = 0.0  # time.monotonic() when scheduling started
    # The request's parsed JSON body (prompt or messages, cache_salt ...), for producers that need
    # more than the prompt text (a tokenizer renders chat messages through the model's template).
    body: Mapping[str, Any] = field(default_factory=dict)
    # Per-request scratch space shared by plugins (e.g. the prefix producer's block hashes and
    # per-endpoint match lengths), keyed by the producing plugin's name.
    state: dict[str, Any] = field(default_factory=dict)


def uncached_prompt_tokens(prompt_text: str, state: Mapping[str, Any], hostports: Sequence[str]) -> list[int]:
    """The prompt tokens each of ``hostports`` must still compute: the prefix producer's prompt
    length less what it expects cached there (its match info in the request state, llm-d's
    PrefixCacheMatchInfo: ``prompt_tokens`` and ``cached_tokens(hostport)``); without a producer,
    llm-d's estimate (4 bytes a token) everywhere. What the director charges an endpoint and what
    ``token-load-scorer`` adds for the request itself (llm-d's inflight-load-producer). Duck-typed,
    not an isinstance check on a runtime Protocol: that cost ~100 us per request, this ~1 us."""
    for value in state.values():
        cached_tokens = getattr(value, "cached_tokens", None)
        if cached_tokens is not None:
            prompt = int(value.prompt_tokens)
            return [max(0, prompt - int(cached_tokens(hostport))) for hostport in hostports]
    return [-(-len(prompt_text.encode()) // 4)] * len(hostports)


@dataclass(frozen=True, slots=True)
class ProfileResult:
    targets: tuple[Endpoint, ...]  # the picker's choice: primary first, then fallbacks
    scores: tuple[float, ...]  # weighted total score of each target


@dataclass(slots=True)
class SchedulingResult:
    results: dict[str, ProfileResult | None]
    primary_profile: str
    headers: dict[str, str] = field(default_factory=dict)
    # "ip:port" destinations when they differ from the primary targets' own (pd-profile-handler's
    # primaryPort sends decode traffic to another port of the picked pod).
    destinations: tuple[str, ...] | None = None

    @property
    def primary(self) -> ProfileResult | None:
        return self.results.get(self.primary_profile)


class Plugin:
    type_name: ClassVar[str] = ""
    # Data keys this plugin's type writes for others to read (llm-d's ``Produces()``), e.g. the
    # prefix producers' per-request match info. The config loader adds the registered default
    # producer of any key a configured plugin consumes and nothing produces.
    produces: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name

    def consumes(self) -> frozenset[str]:
        """Data keys this instance reads (llm-d's ``Consumes()``); may depend on its parameters."""
        return frozenset()

    def producer_parameters(self, key: str) -> Mapping[str, Any]:
        """Parameters this plugin carries for the producer of ``key`` (legacy configs put the
        prefix producer's hashing parameters on the scorer); used when that producer is added by
        default, and reported as ignored when one is configured."""
        return {}

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        """Second construction phase: look up plugins this one refers to by name."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Filter(Plugin):
    def filter(self, request: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    def score(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        raise NotImplementedError


class Picker(Plugin):
    def pick(
        self, request: SchedulingRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> ProfileResult:
        raise NotImplementedError


class DataProducer(Plugin):
    """Runs once per request before scheduling (e.g. prefix-cache match lookup)."""

    def produce(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> None:
        raise NotImplementedError


class Preparer(Plugin):
    """Per-request work that must not run inside the synchronous decision: I/O (a tokenizer
    service) or CPU work handed to a thread (tokenizing a long prompt). The director awaits every
    preparer, producers before their consumers, before it decides, and the decision's producers see
    what the preparers wrote in ``request.state``. Configs without preparers never await anything,
    so their decision path is unchanged.

    ``prepare`` must bound its own time and must not raise for what a request contains (an
    unsupported prompt is simply left unprepared; consumers then skip the request); an exception
    is logged and counted by the director, and the request is still scheduled."""

    async def prepare(self, request: SchedulingRequest) -> None:
        raise NotImplementedError


class Lifecycle(Plugin):
    """A plugin with background work (sockets, tasks, downloads): started before discovery, after
    the config has loaded, and stopped when the EPP stops."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class PreRequest(Plugin):
    """Runs once per request after a successful scheduling decision.

    A hook that only updates the plugin's own state (``deferrable = True``, e.g. the prefix
    index) may run just after the decision has been returned, off the request's critical path,
    as llm-d runs it asynchronously; hooks that shape the decision (headers) run before."""

    deferrable: ClassVar[bool] = False

    def pre_request(self, request: SchedulingRequest, result: SchedulingResult) -> None:
        raise NotImplementedError


class EndpointSetObserver(Plugin):
    """Told when the endpoint set changes, to drop state about endpoints that left."""

    def endpoints_changed(self, live_hostports: frozenset[str]) -> None:
        raise NotImplementedError


class SaturationDetector(Plugin):
    # True when saturation is read from the EPP's own in-flight counts, which fall only when a
    # response ends: such a detector needs the response to pass through the EPP.
    reads_in_flight: ClassVar[bool] = False

    def pool_saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        """0 = idle; >= 1.0 = saturated."""
        raise NotImplementedError

    def is_saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        raise NotImplementedError


class Decider(Plugin):
    """Decides whether a request is disaggregated, given the already-picked decode endpoint."""

    def disaggregate(self, request: SchedulingRequest, decode_target: Endpoint) -> bool:
        raise NotImplementedError


class DataLayerPlugin(Plugin):
    """Configures the metrics scraper; does not take part in scheduling."""


@dataclass(frozen=True, slots=True)
class EndpointEvent:
    """An endpoint added to (``added``) or removed from (not ``added``) the pool. ``rank`` is the
    endpoint's data-parallel rank: its position among the same pod's endpoints by port (llm-d's
    ``GetRankIndex``; 0 for a pod serving on one port)."""

    added: bool
    hostport: str
    address: str
    port: int
    rank: int = 0


class EndpointExtractor(Plugin):
    """Told about every endpoint the pool gains or loses (llm-d's ``EndpointExtractor``), through
    the ``endpoint-notification-source`` it is wired to in ``dataLayer.sources``."""

    def extract_endpoint(self, event: EndpointEvent) -> None:
        raise NotImplementedError


class EndpointNotifier(DataLayerPlugin):
    """Delivers endpoint add/delete events to the extractors wired to it."""

    def attach(self, extractor: EndpointExtractor) -> None:
        raise NotImplementedError


class MetricsSource(DataLayerPlugin):
    """Where to GET each endpoint's Prometheus metrics: ``scheme://ip:metricsPort/path``."""

    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = True
    port: int | None = None  # scrape every endpoint on this port instead of its metrics port
    interval: float | None = None  # seconds between scrapes; None: every --refresh-metrics-interval


class MetricsExtractor(DataLayerPlugin):
    """Which engine's metric names map to queue / running / KV usage / LoRA / cache info."""

    engine: str = "vllm"


class ProfileHandler(Plugin):
    def pick_profiles(
        self,
        request: SchedulingRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> list[SchedulerProfile]:
        """Profiles to run next, given results so far; empty ends the loop."""
        raise NotImplementedError

    def process_results(
        self, request: SchedulingRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        raise NotImplementedError

    def validate_profiles(self, profile_names: Sequence[str]) -> None:
        """Raise ConfigError when the configured profiles do not fit this handler."""


class SchedulerProfile:
    """Filters → weighted scorers → picker, over the candidate endpoints."""

    def __init__(
        self, name: str, filters: list[Filter], scorers: list[tuple[Scorer, float]], picker: Picker
    ) -> None:
        self.name = name
        self.filters = filters
        self.scorers = scorers
        self.picker = picker

    def run(self, request: SchedulingRequest, candidates: Sequence[Endpoint]) -> ProfileResult | None:
        endpoints = list(candidates)
        for endpoint_filter in self.filters:
            endpoints = endpoint_filter.filter(request, endpoints)
            if not endpoints:
                return None
        # Weighted sum with whole-list comprehensions: this is the hot loop of every decision.
        totals: list[float] = [0.0] * len(endpoints)
        for scorer, weight in self.scorers:
            scores = scorer.score(request, endpoints)
            if weight == 1.0:
                totals = [total + score for total, score in zip(totals, scores, strict=True)]
            else:
                totals = [total + weight * score for total, score in zip(totals, scores, strict=True)]
        result = self.picker.pick(request, endpoints, totals)
        return result if result.targets else None

    def __repr__(self) -> str:
        return f"SchedulerProfile({self.name!r})"
