"""Profile handlers (which profiles run, which is primary) and the P/D deciders."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Self

from epp.datastore import Endpoint
from epp.plugins.prefix import (
    PREFIX_MATCH,
    PrefixCacheScorer,
    PrefixMatch,
    PrefixMatchProducer,
    find_producer,
)
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import (
    Decider,
    Plugin,
    PreRequest,
    ProfileHandler,
    ProfileResult,
    SchedulerProfile,
    SchedulingRequest,
    SchedulingResult,
)
from epp.scheduling.params import Params
from epp.scheduling.registry import register

log = logging.getLogger(__name__)

PREFILLER_HEADER = "x-prefiller-host-port"
DEFAULT_PD_DECIDER = "prefix-based-pd-decider"  # pd-profile-handler's default decider, by name
DATA_PARALLEL_HEADER = "x-data-parallel-host-port"


@register("single-profile-handler")
class SingleProfileHandler(ProfileHandler):
    """Runs the one configured profile; its result is the decision."""

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        params.ignore_all()  # llm-d-router's factory never decodes parameters
        return cls(name)

    def validate_profiles(self, profile_names: Sequence[str]) -> None:
        if len(profile_names) != 1:
            raise ConfigError(
                f"plugin {self.name!r} (type {self.type_name}) runs exactly one profile, "
                f"but {len(profile_names)} are configured: {', '.join(profile_names)}"
            )

    def pick_profiles(
        self,
        request: SchedulingRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> list[SchedulerProfile]:
        return [] if results else list(profiles.values())

    def process_results(
        self, request: SchedulingRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        (name,) = results
        return SchedulingResult(results, name)


@register("prefix-based-pd-decider")
class PrefixBasedPdDecider(Decider):
    """Disaggregate when the prompt tokens NOT already cached on the chosen decode endpoint reach
    ``nonCachedTokens`` (0 disables P/D), and the prompt has at least ``promptTokens`` tokens."""

    def __init__(self, name: str, non_cached_tokens: int, min_prompt_tokens: int, producer: str | None):
        super().__init__(name)
        self.non_cached_tokens = non_cached_tokens
        self.min_prompt_tokens = min_prompt_tokens
        self.producer_name = producer
        self.producer: PrefixMatchProducer | None = None

    def consumes(self) -> frozenset[str]:
        return frozenset({PREFIX_MATCH})

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        return cls(
            name,
            params.integer("nonCachedTokens", 0, minimum=0),
            params.integer("promptTokens", 0, minimum=0),
            params.string("prefixMatchInfoProducerName", "") or None,
        )

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        self.producer = find_producer(plugins, self.producer_name, self)

    def disaggregate(self, request: SchedulingRequest, decode_target: Endpoint) -> bool:
        if self.non_cached_tokens <= 0:
            return False
        assert self.producer is not None, "resolve() not called"
        match: PrefixMatch | None = request.state.get(self.producer.name)
        if match is None or match.prompt_tokens < self.min_prompt_tokens:
            return False
        uncached = match.prompt_tokens - match.cached_tokens(decode_target.hostport)
        return uncached >= self.non_cached_tokens


@register("always-disagg-pd-decider")
class AlwaysDisaggDecider(Decider):
    """Disaggregates every request (prefill on a prefill endpoint, then decode)."""

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        params.ignore_all()  # llm-d-router's factory never decodes parameters
        return cls(name)

    def disaggregate(self, request: SchedulingRequest, decode_target: Endpoint) -> bool:
        return True


DECODE_FIRST, PREFILL_FIRST = "decode-first", "prefill-first"
# disagg-profile-handler's deprecated flat parameters (llm-d-router's
# legacyDisaggProfileHandlerParameters) and the nested form's keys; stageOrder belongs to both.
_FLAT_KEYS = (
    "decodeProfile",
    "prefillProfile",
    "encodeProfile",
    "prefillDeciderPluginName",
    "encodeDeciderPluginName",
    "deciderPluginName",
)
_NESTED_KEYS = ("profiles", "deciders")


def _stage_order(params: Params) -> str:
    """llm-d-router's ParseStageOrder: case, '-' and '_' do not matter; empty is decode-first."""
    text = params.raw("stageOrder")
    if text is None:
        return DECODE_FIRST
    if not isinstance(text, str):
        raise params.error("stageOrder", f"must be {DECODE_FIRST!r} or {PREFILL_FIRST!r}, got {text!r}")
    folded = text.lower().replace("-", "").replace("_", "")
    if folded in ("", "decodefirst", "decode"):
        return DECODE_FIRST
    if folded in ("prefillfirst", "prefill"):
        return PREFILL_FIRST
    raise params.error("stageOrder", f"must be {DECODE_FIRST!r} or {PREFILL_FIRST!r}, got {text!r}")


@register("disagg-profile-handler")
class DisaggProfileHandler(ProfileHandler):
    """Runs the decode profile (primary); if the prefill decider approves for the picked decode
    endpoint, runs the prefill profile too and names its pick in ``x-prefiller-host-port``. If no
    prefill endpoint is found the request still goes to decode, which then prefills locally.
    ``stageOrder: prefill-first`` runs the prefill profile first for every request (no decider),
    then decode. The deprecated flat parameters (``decodeProfile``, ``prefillProfile``,
    ``prefillDeciderPluginName`` or ``deciderPluginName``) are accepted instead of
    ``profiles``/``deciders``, not mixed with them."""

    def __init__(
        self,
        name: str,
        decode_profile: str,
        prefill_profile: str,
        decider_name: str | None,
        stage_order: str = DECODE_FIRST,
    ):
        super().__init__(name)
        self.decode_profile = decode_profile
        self.prefill_profile = prefill_profile
        self.decider_name = decider_name
        self.decider: Decider | None = None
        self.stage_order = stage_order

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        stage_order = _stage_order(params)
        given = params.keys()
        flat = [key for key in _FLAT_KEYS if key in given]
        if flat:
            # llm-d-router disagg_profile_handler.go DisaggProfileHandlerConfigParser: the nested
            # schema is tried first, then the legacy flat one; a mix of both fits neither.
            nested = [key for key in _NESTED_KEYS if key in given]
            if nested:
                raise params.error(
                    nested[0],
                    f"cannot be mixed with the deprecated flat parameter {flat[0]!r}; use one format",
                )
            for role in ("encodeProfile", "encodeDeciderPluginName"):
                if params.has(role):
                    raise params.error(role, "encode disaggregation (E/P/D) is not supported by this EPP")
            log.warning("%s: flat parameters are deprecated; use profiles.* and deciders.*", name)
            decode = params.string("decodeProfile", "") or "decode"
            prefill = params.string("prefillProfile", "") or "prefill"
            # prefillDeciderPluginName wins over the older deciderPluginName (toDisaggParams).
            decider = params.string("deciderPluginName", "") or None
            decider = params.string("prefillDeciderPluginName", "") or decider
        else:
            profiles = params.mapping("profiles")
            deciders = params.mapping("deciders")
            for key, mapping in (("profiles", profiles), ("deciders", deciders)):
                for role, value in mapping.items():
                    if role == "encode":
                        raise params.error(key, "encode disaggregation (E/P/D) is not supported by this EPP")
                    if role not in ("decode", "prefill"):
                        raise params.error(key, f"has unknown role {role!r} (expected decode, prefill)")
                    if not isinstance(value, str) or not value:
                        raise params.error(
                            key, f"{role!r} must name a {'profile' if key == 'profiles' else 'plugin'}"
                        )
            decode = profiles.get("decode", "decode")
            prefill = profiles.get("prefill", "prefill")
            decider = deciders.get("prefill")
        if stage_order == PREFILL_FIRST and decider is not None:
            raise params.error("stageOrder", f"{PREFILL_FIRST} takes no prefill decider (it always prefills)")
        return cls(name, decode, prefill, decider, stage_order)

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        if self.decider_name is None:
            if self.stage_order == DECODE_FIRST:
                log.warning("%s: no deciders.prefill configured; requests are never disaggregated", self.name)
            return
        decider = plugins.get(self.decider_name)
        if not isinstance(decider, Decider):
            raise ConfigError(
                f"plugin {self.name!r} (type {self.type_name}): deciders.prefill {self.decider_name!r} "
                "is not a configured decider plugin"
            )
        self.decider = decider

    def validate_profiles(self, profile_names: Sequence[str]) -> None:
        runs_prefill = self.decider is not None or self.stage_order == PREFILL_FIRST
        wanted = [self.decode_profile] + ([self.prefill_profile] if runs_prefill else [])
        for profile in wanted:
            if profile not in profile_names:
                raise ConfigError(
                    f"plugin {self.name!r} (type {self.type_name}) needs a scheduling profile named "
                    f"{profile!r}; configured: {', '.join(profile_names)}"
                )

    def pick_profiles(
        self,
        request: SchedulingRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> list[SchedulerProfile]:
        if self.stage_order == PREFILL_FIRST:
            # llm-d-router disagg_profile_handler.go pickPrefillFirst: prefill, then decode (which
            # runs even when no prefill endpoint was found: it then prefills locally).
            if self.decode_profile in results:
                return []
            if self.prefill_profile in profiles and self.prefill_profile not in results:
                return [profiles[self.prefill_profile]]
            return [profiles[self.decode_profile]]
        if self.decode_profile not in results:
            return [profiles[self.decode_profile]]
        decode = results[self.decode_profile]
        if (
            self.prefill_profile not in results
            and decode is not None
            and self.decider is not None
            and self.decider.disaggregate(request, decode.targets[0])
        ):
            return [profiles[self.prefill_profile]]
        return []

    def process_results(
        self, request: SchedulingRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        result = SchedulingResult(results, self.decode_profile)
        prefill = results.get(self.prefill_profile)
        if prefill is not None and results.get(self.decode_profile) is not None:
            result.headers[PREFILLER_HEADER] = prefill.targets[0].hostport
        return result


class _UncachedBytesDecider(Decider):
    """The deprecated handler's own rule: disaggregate when the prompt bytes not cached on the
    decode endpoint reach ``threshold`` (upstream measured this in characters, not tokens)."""

    def __init__(self, name: str, threshold: int) -> None:
        super().__init__(name)
        self.threshold = threshold
        self.producer: PrefixMatchProducer | None = None

    def disaggregate(self, request: SchedulingRequest, decode_target: Endpoint) -> bool:
        assert self.producer is not None, "resolve the producer first"
        match: PrefixMatch | None = request.state.get(self.producer.name)
        if match is None:
            return True
        return match.prompt_bytes - match.cached_bytes(decode_target.hostport) >= self.threshold


@register("pd-profile-handler")
class PdProfileHandler(DisaggProfileHandler):
    """llm-d's deprecated P/D handler, in both of its parameter generations:

    * ``deciderPluginName``: a decider plugin decides (llm-d's later form). Its default there is
      the plugin named ``prefix-based-pd-decider``: with neither ``deciderPluginName`` nor
      ``threshold`` given, a decider of that name, if configured, decides;
    * ``threshold``: disaggregate when the prompt bytes not cached on the chosen decode endpoint
      reach ``threshold``; ``0`` (or neither parameter and no such decider) means always
      disaggregate (as upstream: the check is skipped).
      ``hashBlockSize`` is accepted for compatibility; the prefix producer's block size governs
      the cached-length estimate, so scoring and this decision always agree.

    ``primaryPort`` (data parallelism): the decode targets are sent to that port of the chosen
    pod and ``x-data-parallel-host-port`` carries the endpoint that was picked.
    """

    def __init__(
        self,
        name: str,
        decode_profile: str,
        prefill_profile: str,
        *,
        threshold: int,
        prefix_plugin: str | None,
        decider_name: str | None,
        primary_port: int | None,
        producer_name: str | None = None,
        default_decider: bool = False,
    ) -> None:
        super().__init__(name, decode_profile, prefill_profile, decider_name)
        # Neither deciderPluginName nor threshold given: a plugin named DEFAULT_PD_DECIDER decides.
        self.default_decider = default_decider
        self.threshold = threshold
        self.prefix_plugin = prefix_plugin
        self.producer_name = producer_name
        self.primary_port = primary_port
        if decider_name is None:
            self.decider = (
                _UncachedBytesDecider(f"{name}/threshold", threshold)
                if threshold > 0
                else AlwaysDisaggDecider(f"{name}/always")
            )

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        threshold = params.integer("threshold", 0, minimum=0)
        defaults = not params.has("threshold") and not params.has("deciderPluginName")
        params.integer("hashBlockSize", 64, minimum=1)
        params.string("prefixPluginType", "prefix-cache-scorer")
        decider_name = params.string("deciderPluginName", "") or None
        if decider_name is not None and params.has("threshold"):
            raise params.error("threshold", "and 'deciderPluginName' are alternatives; give one")
        primary_port = params.integer("primaryPort", 0, minimum=0, maximum=65535) or None
        return cls(
            name,
            params.string("decodeProfile", "decode"),
            params.string("prefillProfile", "prefill"),
            threshold=threshold,
            prefix_plugin=params.string("prefixPluginName", "") or None,
            decider_name=decider_name,
            primary_port=primary_port,
            # llm-d-router pd_profile_handler.go PdProfileHandlerParameters: the producer whose
            # prefix-match info the handler reads.
            producer_name=params.string("prefixMatchInfoProducerName", "") or None,
            default_decider=defaults,
        )

    def resolve(self, plugins: Mapping[str, Plugin]) -> None:
        if self.default_decider and isinstance(plugins.get(DEFAULT_PD_DECIDER), Decider):
            # llm-d-router pd_profile_handler.go: DeciderPluginName defaults to
            # defaultDeciderPluginName, the plugin named prefix-based-pd-decider.
            self.decider_name = DEFAULT_PD_DECIDER
        if self.decider_name is not None:
            super().resolve(plugins)
            return
        if not isinstance(self.decider, _UncachedBytesDecider):
            return  # always disaggregate: no prefix data needed
        producer_name = self.producer_name
        if producer_name is None and self.prefix_plugin is not None:
            scorer = plugins.get(self.prefix_plugin)
            if not isinstance(scorer, PrefixCacheScorer):
                raise ConfigError(
                    f"plugin {self.name!r} (type {self.type_name}): prefixPluginName "
                    f"{self.prefix_plugin!r} is not a configured prefix-cache-scorer"
                )
            scorer.resolve(plugins)
            assert scorer.producer is not None
            producer_name = scorer.producer.name
        self.decider.producer = find_producer(plugins, producer_name, self)

    def consumes(self) -> frozenset[str]:
        # Only the legacy threshold decider reads prefix data; a named decider declares its own.
        needs_prefix = self.decider_name is None and self.threshold > 0
        return frozenset({PREFIX_MATCH}) if needs_prefix else frozenset()

    def process_results(
        self, request: SchedulingRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        result = super().process_results(request, results)
        decode = results.get(self.decode_profile)
        if self.primary_port is not None and decode is not None:
            result.headers[DATA_PARALLEL_HEADER] = decode.targets[0].hostport
            result.destinations = tuple(_with_port(t.address, self.primary_port) for t in decode.targets)
        return result


@register("prefill-header-handler")
class PrefillHeaderHandler(PreRequest):
    """Sets ``x-prefiller-host-port`` from the prefill profile's pick (llm-d's P/D configs list
    it next to the profile handler; the disagg handlers also set the header themselves)."""

    def __init__(self, name: str, prefill_profile: str) -> None:
        super().__init__(name)
        self.prefill_profile = prefill_profile

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router disagg_headers_handler.go disaggHeadersHandlerParameters also names the
        # encode profile (default "encode") whose picks go in the encoder header. This EPP runs no
        # encode profile (E/P/D is refused), so the name is checked and has nothing to name.
        params.string("encodeProfile", "encode")
        return cls(name, params.string("prefillProfile", "prefill"))

    def pre_request(self, request: SchedulingRequest, result: SchedulingResult) -> None:
        prefill = result.results.get(self.prefill_profile)
        if prefill is not None and result.primary is not None:
            result.headers[PREFILLER_HEADER] = prefill.targets[0].hostport


@register("disagg-headers-handler")
class DisaggHeadersHandler(PrefillHeaderHandler):
    """The same header step under the name newer llm-d configs use."""


def _with_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
