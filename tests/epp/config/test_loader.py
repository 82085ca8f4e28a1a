"""EndpointPickerConfig loading: llm-d's samples, auto-defaults, and clear start-up errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from epp.config.loader import DEFAULT_CONFIG, load_config
from epp.config.samples import UPSTREAM_NON_CACHED_TOKENS, pd_config
from epp.plugins.datalayer import CoreMetricsExtractor, MetricsDataSource
from epp.plugins.filters import DecodeFilter, PrefillFilter
from epp.plugins.pickers import MaxScorePicker, RandomPicker
from epp.plugins.prefix import ApproxPrefixCacheProducer, PrefixCacheScorer
from epp.plugins.profile_handlers import (
    DisaggProfileHandler,
    PdProfileHandler,
    PrefixBasedPdDecider,
    SingleProfileHandler,
)
from epp.plugins.saturation import UtilizationDetector
from epp.plugins.scorers import KvCacheUtilizationScorer, QueueScorer
from epp.scheduling.errors import ConfigError
from pulumi_llmd.components.pickerconfig import default_config, disaggregated_config
from tests.support.epp_configs import HEADER, PD_LEGACY, PD_SAMPLE, PLAIN_SAMPLE


def test_default_config_is_llm_d_default() -> None:
    config = load_config(None)
    (profile,) = config.scheduler.profiles.values()
    assert profile.name == "default"
    weights = {type(scorer): weight for scorer, weight in profile.scorers}
    assert weights == {QueueScorer: 2.0, KvCacheUtilizationScorer: 2.0, PrefixCacheScorer: 3.0}
    assert isinstance(profile.picker, MaxScorePicker)
    assert isinstance(config.scheduler.handler, SingleProfileHandler)
    assert isinstance(config.saturation_detector, UtilizationDetector)
    assert config.metrics_source.path == "/metrics" and config.metrics_source.scheme == "http"
    assert isinstance(config.metrics_extractor, CoreMetricsExtractor)
    assert [type(p) for p in config.producers] == [ApproxPrefixCacheProducer]
    assert config.warnings == []


def test_empty_text_means_default() -> None:
    assert set(load_config("  \n").plugins) == set(load_config(None).plugins)


def test_pd_sample_builds_two_profiles_and_disagg_handler() -> None:
    config = load_config(PD_SAMPLE)
    handler = config.scheduler.handler
    assert isinstance(handler, DisaggProfileHandler)
    assert handler.decider is config.plugins["prefix-based-pd-decider"]
    prefill, decode = config.scheduler.profiles["prefill"], config.scheduler.profiles["decode"]
    assert [type(f) for f in prefill.filters] == [PrefillFilter]
    assert [type(f) for f in decode.filters] == [DecodeFilter]
    assert [(s.name, w) for s, w in decode.scorers] == [("prefix-cache-scorer", 2.0), ("queue-scorer", 1.0)]
    producer = config.plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, ApproxPrefixCacheProducer)
    assert producer.max_blocks == 16384 // 64  # tokens / (block of 64 tokens after the clamp)
    scorer = config.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrefixCacheScorer) and scorer.producer is producer


def test_shared_pd_config_is_the_upstream_sample_without_its_explicit_producer() -> None:
    upstream = yaml.safe_load(PD_SAMPLE)
    upstream["plugins"] = [p for p in upstream["plugins"] if p["type"] != "approx-prefix-cache-producer"]
    assert yaml.safe_load(pd_config()) == upstream


def test_shared_pd_config_threshold_and_explicit_data_layer() -> None:
    config = load_config(pd_config(256, http_metrics_source=True))
    decider = config.plugins["prefix-based-pd-decider"]
    assert isinstance(decider, PrefixBasedPdDecider) and decider.non_cached_tokens == 256
    assert config.metrics_source.name == "metrics-data-source"
    assert (config.metrics_source.scheme, config.metrics_source.path) == ("http", "/metrics")
    assert isinstance(config.scheduler.handler, DisaggProfileHandler)
    default = load_config(pd_config()).plugins["prefix-based-pd-decider"]
    assert isinstance(default, PrefixBasedPdDecider)
    assert default.non_cached_tokens == UPSTREAM_NON_CACHED_TOKENS == 16


def test_shared_pd_config_rejects_a_negative_threshold() -> None:
    with pytest.raises(ValueError, match="non_cached_tokens must be >= 0"):
        pd_config(-1)


def test_plain_sample() -> None:
    config = load_config(PLAIN_SAMPLE)
    (profile,) = config.scheduler.profiles.values()
    assert [s.name for s, _ in profile.scorers] == ["prefix-cache-scorer"]
    assert isinstance(profile.filters[0], DecodeFilter)


def test_legacy_api_version_and_pd_profile_handler() -> None:
    config = load_config(PD_LEGACY)
    handler = config.scheduler.handler
    assert isinstance(handler, PdProfileHandler)
    assert handler.decider is not None
    # The scorer's legacy hashing parameters configure the auto-created producer.
    producer = config.plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, ApproxPrefixCacheProducer)
    assert (producer.block_bytes, producer.max_blocks, producer.index.default_capacity) == (64, 256, 1000)
    # Profiles without a picker get max-score-picker.
    assert all(isinstance(p.picker, MaxScorePicker) for p in config.scheduler.profiles.values())


def test_no_profiles_builds_default_profile_with_every_filter_scorer_picker() -> None:
    config = load_config(
        HEADER
        + """
plugins:
- type: decode-filter
- type: queue-scorer
- type: random-picker
  parameters: {maxNumOfEndpoints: 2}
"""
    )
    (profile,) = config.scheduler.profiles.values()
    assert profile.name == "default"
    assert [type(f) for f in profile.filters] == [DecodeFilter]
    assert [(type(s), w) for s, w in profile.scorers] == [(QueueScorer, 1.0)]
    assert isinstance(profile.picker, RandomPicker) and profile.picker.max_endpoints == 2


def test_data_layer_plugins_configure_scraper() -> None:
    config = load_config(
        HEADER
        + """
plugins:
- type: queue-scorer
- name: src
  type: metrics-data-source
  parameters: {scheme: https, path: /custom/metrics, insecureSkipVerify: false}
- type: core-metrics-extractor
dataLayer:
  sources: [{pluginRef: src, extractors: [{pluginRef: core-metrics-extractor}]}]
"""
    )
    source = config.metrics_source
    assert isinstance(source, MetricsDataSource)
    assert (source.scheme, source.path, source.insecure_skip_verify) == ("https", "/custom/metrics", False)


def test_inflight_load_producer_is_accepted() -> None:
    config = load_config(HEADER + "plugins: [{type: inflight-load-producer}, {type: load-aware-scorer}]\n")
    (profile,) = config.scheduler.profiles.values()
    assert [s.type_name for s, _ in profile.scorers] == ["load-aware-scorer"]


def test_unknown_parameter_keys_fail_as_llm_d_decodes_them_strictly() -> None:
    """llm-d-router decodes plugin parameters with DisallowUnknownFields (StrictDecoder): a
    misspelt key fails start-up, naming the plugin and the key, instead of leaving a default."""
    with pytest.raises(ConfigError) as error:
        load_config(
            HEADER
            + "plugins: [{type: weighted-random-picker, parameters: {threshold: 0.1, hashBlockSize: 5}}]\n"
        )
    assert "plugin 'weighted-random-picker'" in str(error.value) and "'hashBlockSize'" in str(error.value)


def test_llm_d_header_handlers_and_parsers_are_accepted() -> None:
    config = load_config(
        PD_SAMPLE.replace(
            "plugins:\n",
            "plugins:\n- type: prefill-header-handler\n"
            "- type: disagg-headers-handler\n- type: vllmhttp-parser\n",
            1,
        )
    )
    assert {type(p).__name__ for p in config.pre_request} >= {"PrefillHeaderHandler", "DisaggHeadersHandler"}
    assert config.warnings == []


def test_a_parser_reference_to_no_plugin_is_refused() -> None:
    """It was ignored with a warning; llm-d refuses it (see test_loader_upstream_defaults)."""
    with pytest.raises(ConfigError, match=r"requestHandler.parsers\[0\]: pluginRef 'x' names no plugin"):
        load_config(HEADER + "plugins: [{type: queue-scorer}]\nrequestHandler: {parsers: [{pluginRef: x}]}\n")


def test_deprecated_alias_warns() -> None:
    config = load_config(HEADER + "plugins: [{type: by-label-selector, parameters: {matchLabels: {a: b}}}]\n")
    assert any("deprecated" in warning for warning in config.warnings)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("apiVersion: v1\nkind: EndpointPickerConfig\n", "apiVersion must be one of"),
        ("apiVersion: llm-d.ai/v1alpha1\nkind: Other\n", "kind must be EndpointPickerConfig"),
        (
            HEADER + "plugins: [{type: no-such-scorer, name: mine}]\n",
            "plugin 'mine': unknown type 'no-such-scorer'",
        ),
        (
            HEADER + "plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: 0}}]\n",
            "plugin 'max-score-picker' (type max-score-picker): parameter 'maxNumOfEndpoints' must be >= 1",
        ),
        (
            HEADER + "plugins: [{type: load-aware-scorer, parameters: {threshold: many}}]\n",
            "parameter 'threshold' must be an integer, got 'many'",
        ),
        (
            HEADER + "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: a, plugins: [{pluginRef: nope}]}]\n",
            "pluginRef 'nope' names no plugin",
        ),
        (
            HEADER + "plugins: [{type: queue-scorer}, {type: queue-scorer}]\n",
            "duplicate plugin name 'queue-scorer'",
        ),
        (
            HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [{pluginRef: "
            "queue-scorer}]}, {name: b, plugins: [{pluginRef: queue-scorer}]}]\n",
            "2 scheduling profiles need",
        ),
        (
            HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [{pluginRef: "
            "queue-scorer, weight: -1}]}]\n",
            "must be a number >= 0",
        ),
        (
            HEADER
            + "plugins: [{type: random-picker}, {type: max-score-picker}]\nschedulingProfiles: [{name: a, "
            "plugins: [{pluginRef: random-picker}, {pluginRef: max-score-picker}]}]\n",
            "more than one picker",
        ),
        (
            HEADER + "plugins: [{type: core-metrics-extractor, parameters: {defaultEngine: sglang}}]\n",
            "'sglang' is not supported",
        ),
        (
            HEADER
            + "plugins: [{type: utilization-detector, parameters: {metricsStalenessThreshold: soon}}]\n",
            "is not a duration",
        ),
        (
            HEADER + "plugins: [{type: label-selector-filter}]\n",
            "'matchLabels' or 'matchExpressions' is required",
        ),
        (
            HEADER + "plugins: [{type: disagg-profile-handler, parameters: {deciders: {prefill: ghost}}}]\n",
            "deciders.prefill 'ghost' is not a configured decider",
        ),
        (
            HEADER + "plugins: [{type: disagg-profile-handler, parameters: {deciders: {encode: x}}}]\n",
            "encode disaggregation (E/P/D) is not supported",
        ),
        (
            HEADER + "plugins: [{type: always-disagg-pd-decider}, {type: disagg-profile-handler, parameters: "
            "{deciders: {prefill: always-disagg-pd-decider}}}, {type: queue-scorer}]\nschedulingProfiles: "
            "[{name: decode, plugins: [{pluginRef: queue-scorer}]}]\n",
            "needs a scheduling profile named 'prefill'",
        ),
        (
            HEADER + "plugins: [{type: pd-profile-handler, "
            "parameters: {threshold: 10, prefixPluginName: queue-scorer}}, "
            "{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: decode, plugins: [{pluginRef: queue-scorer}]}, "
            "{name: prefill, plugins: [{pluginRef: queue-scorer}]}]\n",
            "is not a configured prefix-cache-scorer",
        ),
        (HEADER + "pluginz: []\n", "unknown top-level field(s): pluginz"),
        ("[1, 2]", "must be a YAML mapping"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_config_errors_name_the_culprit(yaml_text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(yaml_text)
    assert expected in str(caught.value)


# Shapes of EndpointPickerConfigs seen in public llm-d deployments (re-typed, trimmed): each must
# load, with the expected profile handler.
REAL_WORLD = {
    "pd-handler-without-parameters": """
plugins:
- {type: pd-profile-handler}
- {type: prefill-filter}
- {type: decode-filter}
- {type: active-request-scorer, parameters: {requestTimeout: 20m}}
- {type: max-score-picker}
- {type: random-picker}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: active-request-scorer, weight: 1},
                            {pluginRef: max-score-picker}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: active-request-scorer, weight: 1},
                           {pluginRef: max-score-picker}]}
""",
    "pd-threshold-zero-with-header-handler": """
plugins:
- {type: prefill-header-handler}
- {type: prefill-filter}
- {type: decode-filter}
- {type: max-score-picker}
- {type: queue-scorer}
- {type: prefix-cache-scorer}
- {type: pd-profile-handler, parameters: {threshold: 0}}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer, weight: 1.0},
                            {pluginRef: prefix-cache-scorer, weight: 3.0}, {pluginRef: max-score-picker}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer, weight: 1.0},
                           {pluginRef: prefix-cache-scorer, weight: 3.0}, {pluginRef: max-score-picker}]}
""",
    "pd-decider-plugin-name": """
plugins:
- {type: prefill-header-handler}
- {type: approx-prefix-cache-producer, parameters: {blockSizeTokens: 16, maxPrefixBlocksToMatch: 256,
                                                    lruCapacityPerServer: 256}}
- {type: prefix-cache-scorer}
- {type: prefill-filter}
- {type: decode-filter}
- {type: max-score-picker}
- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 16}}
- {type: pd-profile-handler, parameters: {deciderPluginName: prefix-based-pd-decider}}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer, weight: 2}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 2}]}
""",
    "disagg-weighted-random-pickers": """
plugins:
- {type: vllmhttp-parser}
- {type: prefill-filter}
- {type: decode-filter}
- {type: prefix-cache-scorer}
- {type: active-request-scorer}
- {type: queue-scorer}
- {type: always-disagg-pd-decider}
- {type: disagg-profile-handler, parameters: {deciders: {prefill: always-disagg-pd-decider}}}
- {type: weighted-random-picker, name: prefill-picker}
- {type: weighted-random-picker, name: decode-picker}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer, weight: 3},
                            {pluginRef: active-request-scorer, weight: 2},
                            {pluginRef: queue-scorer, weight: 2}, {pluginRef: prefill-picker}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 3},
                           {pluginRef: active-request-scorer, weight: 2}, {pluginRef: decode-picker}]}
""",
    "scorer-with-legacy-block-size": """
plugins:
- type: prefix-cache-scorer
  parameters: {blockSize: 64, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
schedulingProfiles:
- {name: default, plugins: [{pluginRef: prefix-cache-scorer, weight: 5.0}]}
""",
}


@pytest.mark.parametrize("name", sorted(REAL_WORLD))
def test_real_world_config_shapes_load(name: str) -> None:
    for api_version in ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1"):
        config = load_config(f"apiVersion: {api_version}\nkind: EndpointPickerConfig\n" + REAL_WORLD[name])
        handler = config.scheduler.handler
        if "prefill" in config.scheduler.profiles:
            assert isinstance(handler, DisaggProfileHandler)  # pd-profile-handler is a subclass
            assert handler.decider is not None
        else:
            assert isinstance(handler, SingleProfileHandler)


@pytest.mark.parametrize("non_cached_tokens", [0, 16, 256])
def test_the_stack_renders_the_same_pd_sample(non_cached_tokens: int) -> None:
    # pulumi_llmd/components/pickerconfig builds its P/D config without importing the EPP package (the Pulumi
    # program does not need it); this keeps the two spellings of llm-d's sample from drifting apart.
    def canonical(document: dict[str, Any]) -> dict[str, Any]:
        return {**document, "plugins": sorted(document["plugins"], key=lambda plugin: plugin["type"])}

    rendered = disaggregated_config(non_cached_tokens)
    assert canonical(rendered) == canonical(yaml.safe_load(pd_config(non_cached_tokens)))


def test_the_stack_renders_the_same_default_config() -> None:
    assert default_config() == yaml.safe_load(DEFAULT_CONFIG)


def test_the_stack_profile_is_the_epp_sample_and_loads_with_the_in_flight_scorer() -> None:
    from epp.config.samples import IN_FLIGHT_AWARE_CONFIG
    from epp.plugins.scorers import ActiveRequestScorer
    from pulumi_llmd.components.pickerconfig import in_flight_aware_config

    assert in_flight_aware_config() == yaml.safe_load(IN_FLIGHT_AWARE_CONFIG)
    config = load_config(IN_FLIGHT_AWARE_CONFIG)
    (profile,) = config.scheduler.profiles.values()
    weights = {type(scorer): weight for scorer, weight in profile.scorers}
    assert weights == {
        QueueScorer: 2.0,
        KvCacheUtilizationScorer: 2.0,
        PrefixCacheScorer: 3.0,
        ActiveRequestScorer: 2.0,
    }
    assert config.warnings == []


@pytest.mark.parametrize("parser", ["openai-parser", "vllmhttp-parser"])
def test_parsers_of_the_openai_api_load_without_warnings(parser: str) -> None:
    """The protocol layer parses OpenAI bodies; configs naming llm-d's parsers for them load as is."""
    config = load_config(HEADER + f"plugins: [{{type: {parser}}}, {{type: queue-scorer}}]\n")
    assert config.warnings == []
    assert type(config.plugins[parser]).type_name == parser


def test_a_parser_for_another_api_is_an_unknown_type() -> None:
    with pytest.raises(ConfigError, match="unknown type 'sglang-parser'"):
        load_config(HEADER + "plugins: [{type: sglang-parser}]\n")


@pytest.mark.parametrize("disaggregated", [False, True])
def test_the_stacks_lora_configs_load_with_adapter_affinity_in_every_profile(disaggregated: bool) -> None:
    """What the stack renders for a pool serving LoRA adapters loads without warnings, and every
    profile scores adapter affinity (P/D: both roles need the adapter)."""
    from epp.plugins.scorers import LoraAffinityScorer
    from pulumi_llmd.components.pickerconfig import render_epp_config
    from pulumi_llmd.config.models import EppConfig

    text = render_epp_config(EppConfig(), disaggregated=disaggregated, lora=True)
    config = load_config(text)
    assert config.warnings == []
    for profile in config.scheduler.profiles.values():
        weights = {type(scorer): weight for scorer, weight in profile.scorers}
        assert weights[LoraAffinityScorer] == 1.0


@pytest.mark.parametrize("disaggregated", [False, True])
def test_the_stack_flow_control_section_loads_as_the_stack_means_it(disaggregated: bool) -> None:
    from epp.flowcontrol.policies import (
        EdfOrderingPolicy,
        PriorityHoldbackPolicy,
        RoundRobinFairnessPolicy,
        StaticUsageLimitPolicy,
    )
    from epp.plugins.saturation import ConcurrencyDetector
    from pulumi_llmd.components.pickerconfig import with_flow_control
    from pulumi_llmd.config.models import EppFlowControlConfig

    base = disaggregated_config(16) if disaggregated else default_config()
    # The stack's defaults once switched on: llm-d's detector, round-robin fairness, a short
    # sheddable queue.
    config = load_config(yaml.safe_dump(with_flow_control(base, EppFlowControlConfig(enabled=True))))
    flow = config.flow_control
    assert flow is not None and config.warnings == []
    assert isinstance(flow.detector, UtilizationDetector) and flow.default_request_ttl == 60.0
    assert isinstance(flow.band_for(0).fairness, RoundRobinFairnessPolicy)
    assert flow.band_for(-1).max_requests == 64 and flow.band_for(5).max_requests == 5000
    # Every knob the stack exposes reaches the EPP under llm-d's name.
    custom = EppFlowControlConfig.model_validate(
        {
            "enabled": True,
            "defaultRequestTTL": "2s",
            "noEndpointRequestTTL": "5m",
            "maxRequests": "10k",
            "priorityBands": [{"priority": 10, "maxRequests": "50", "orderingPolicy": "edf-ordering-policy"}],
            "saturationDetector": {"type": "concurrency-detector", "maxConcurrency": 8, "filter": True},
            "usageLimit": {"type": "priority-holdback-policy", "minCeiling": 0.75},
        }
    )
    loaded = load_config(yaml.safe_dump(with_flow_control(base, custom)))
    flow = loaded.flow_control
    assert flow is not None and loaded.warnings == []
    assert (flow.default_request_ttl, flow.no_endpoint_request_ttl, flow.max_requests) == (2.0, 300.0, 10_000)
    assert isinstance(flow.detector, ConcurrencyDetector) and flow.detector.max_concurrency == 8
    assert isinstance(flow.band_for(10).ordering, EdfOrderingPolicy) and flow.band_for(10).max_requests == 50
    assert isinstance(flow.usage_limit, PriorityHoldbackPolicy) and flow.usage_limit.min_ceiling == 0.75
    for profile in loaded.scheduler.profiles.values():
        assert profile.filters[0] is flow.detector  # no pod is sent more than its limit
    static = EppFlowControlConfig.model_validate({"enabled": True, "usageLimit": {"threshold": 0.9}})
    capped = load_config(yaml.safe_dump(with_flow_control(base, static))).flow_control
    assert capped is not None and isinstance(capped.usage_limit, StaticUsageLimitPolicy)
    assert capped.usage_limit.threshold == 0.9
    off = load_config(yaml.safe_dump(with_flow_control(base, EppFlowControlConfig())))
    assert off.flow_control is None and off.warnings == []
