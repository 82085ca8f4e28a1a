"""llm-d-router's structural defaults (config/loader/defaults.go, configloader.go), where this
loader used to mean something else by the same config, or refused what llm-d loads."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.plugins.pickers import MaxScorePicker, RandomPicker
from epp.plugins.saturation import ConcurrencyDetector, UtilizationDetector
from epp.scheduling.errors import ConfigError
from tests.support.epp_configs import HEADER

SCORER = "plugins: [{type: queue-scorer}]\n"


def test_a_profile_without_a_picker_gets_the_configured_picker() -> None:
    """ensureSchedulingLayer appends the configured picker (of any type) to each profile that has
    none and creates a max-score-picker only when none is configured. A lone random-picker was
    ignored here: the profile got a new max-score-picker, so the config routed by score."""
    config = load_config(
        HEADER + "plugins: [{type: queue-scorer}, {type: random-picker, name: rp}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    picker = config.scheduler.profiles["a"].picker
    assert isinstance(picker, RandomPicker) and picker is config.plugins["rp"]
    assert "max-score-picker" not in config.plugins and config.warnings == []
    alone = load_config(
        HEADER + SCORER + "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    assert isinstance(alone.scheduler.profiles["a"].picker, MaxScorePicker)


def test_several_configured_pickers_and_none_named_warns() -> None:
    config = load_config(
        HEADER + "plugins: [{type: queue-scorer}, {type: random-picker}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    assert isinstance(config.scheduler.profiles["a"].picker, RandomPicker)
    assert any("names no picker and 2 are configured" in w for w in config.warnings)


def test_a_weight_on_a_non_scorer_is_ignored_with_a_warning() -> None:
    """llm-d applies weights to scorers only and loads the config; it was refused here."""
    config = load_config(
        HEADER + "plugins: [{type: decode-filter}, {type: queue-scorer}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: decode-filter, weight: 2}, "
        "{pluginRef: queue-scorer, weight: 3}]}]\n"
    )
    profile = config.scheduler.profiles["a"]
    assert [f.name for f in profile.filters] == ["decode-filter"]
    assert [(s.name, w) for s, w in profile.scorers] == [("queue-scorer", 3.0)]
    (warning,) = config.warnings
    assert warning == "scheduling profile 'a': weight of 'decode-filter' ignored: it is not a scorer"


def test_a_listed_detector_is_not_the_saturation_detector_unless_named() -> None:
    """ensureSaturationDetector: no flowControl.saturationDetector means the plugin named
    utilization-detector (created with defaults). A lone concurrency-detector under plugins was
    taken as the saturation detector here, and two detectors were refused."""
    config = load_config(HEADER + "plugins: [{type: queue-scorer}, {type: concurrency-detector}]\n")
    assert isinstance(config.saturation_detector, UtilizationDetector)
    assert config.saturation_detector is config.plugins["utilization-detector"]
    (warning,) = config.warnings
    assert "'concurrency-detector' (type concurrency-detector) is not the saturation detector" in warning
    # A renamed utilization-detector with parameters is not the default one either.
    renamed = load_config(
        HEADER + "plugins: [{type: utilization-detector, name: ud, parameters: {queueDepthThreshold: 3}}]\n"
    )
    assert renamed.saturation_detector is renamed.plugins["utilization-detector"]
    assert renamed.saturation_detector is not renamed.plugins["ud"]
    two = load_config(HEADER + "plugins: [{type: concurrency-detector}, {type: utilization-detector}]\n")
    assert two.saturation_detector is two.plugins["utilization-detector"]
    named = load_config(
        HEADER + "plugins: [{type: concurrency-detector}, {type: utilization-detector}]\n"
        "flowControl: {saturationDetector: {pluginRef: concurrency-detector}}\n"
    )
    assert isinstance(named.saturation_detector, ConcurrencyDetector)
    # An empty reference is the default too (llm-d fills it in before validating).
    empty = load_config(HEADER + SCORER + "flowControl: {saturationDetector: {}}\n")
    assert isinstance(empty.saturation_detector, UtilizationDetector)


def test_the_default_detector_name_taken_by_another_plugin_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"default saturation detector .*'utilization-detector' is not"):
        load_config(HEADER + "plugins: [{type: queue-scorer, name: utilization-detector}]\n")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("plugins: {}\n", "'plugins' must be a list"),
        ("plugins: ''\n", "'plugins' must be a list"),
        ("plugins: 0\n", "'plugins' must be a list"),
        ("schedulingProfiles: {}\n", "'schedulingProfiles' must be a list"),
        ("schedulingProfiles: ''\n", "'schedulingProfiles' must be a list"),
        (SCORER + "schedulingProfiles: [{name: a, plugins: {}}]\n", "'plugins' must be a list"),
        ("featureGates: {}\n", "featureGates must be a list"),
        ("featureGates: ''\n", "featureGates must be a list"),
        ("dataLayer: []\n", "dataLayer must be a mapping"),
        ("dataLayer: ''\n", "dataLayer must be a mapping"),
        ("dataLayer: {sources: {}}\n", "dataLayer.sources must be a list"),
        (
            "plugins: [{type: metrics-data-source}]\n"
            "dataLayer: {sources: [{pluginRef: metrics-data-source, extractors: {}}]}\n",
            r"dataLayer.sources\[0\].extractors must be a list",
        ),
        ("plugins: [{type: queue-scorer, name: 0}]\n", r"plugins\[0\]: 'name' must be a string"),
        ("saturationDetector: []\n", "saturationDetector must be a mapping"),
        ("flowControl: {saturationDetector: ''}\n", "flowControl.saturationDetector must be a mapping"),
    ],
)
def test_an_empty_value_of_the_wrong_type_is_refused_not_taken_as_absent(body: str, expected: str) -> None:
    """``value or []`` took {}, '', 0 and [] for an absent section: ``schedulingProfiles: {}`` built
    the default profile and ``plugins: {}`` no plugins, where llm-d's decoder refuses the type."""
    with pytest.raises(ConfigError, match=expected):
        load_config(HEADER + body)


def test_null_sections_are_absent() -> None:
    config = load_config(
        HEADER + "plugins:\nschedulingProfiles:\nfeatureGates:\ndataLayer:\nflowControl:\n"
        "saturationDetector:\n"
    )
    assert "default" in config.scheduler.profiles


def test_newer_data_layer_fields_load() -> None:
    """injectDefaults, crossReplicaSyncerPluginRef and crossReplicaSyncInterval are llm-d-router
    DataLayerConfig fields (apix/config/v1alpha1/endpointpickerconfig_types.go); they were refused
    as unknown fields, so a config that sets them did not start."""
    assert load_config(HEADER + SCORER + "dataLayer: {injectDefaults: true}\n").warnings == []
    off = load_config(HEADER + SCORER + "dataLayer: {injectDefaults: false}\n")
    assert off.metrics_source.name == "metrics-data-source"
    (warning,) = off.warnings
    assert "dataLayer.injectDefaults: false ignored" in warning
    listed = load_config(
        HEADER + "plugins: [{type: metrics-data-source}, {type: core-metrics-extractor}]\n"
        "dataLayer: {injectDefaults: false, sources: [{pluginRef: metrics-data-source, "
        "extractors: [{pluginRef: core-metrics-extractor}]}]}\n"
    )
    assert listed.warnings == []  # llm-d injects nothing here either
    synced = load_config(HEADER + SCORER + "dataLayer: {crossReplicaSyncInterval: 5s}\n")
    assert any("crossReplicaSyncInterval ignored" in w for w in synced.warnings)


@pytest.mark.parametrize(
    ("data_layer", "expected"),
    [
        ("{injectDefaults: 'no'}", "dataLayer.injectDefaults must be true or false, got 'no'"),
        ("{crossReplicaSyncInterval: 5}", "dataLayer.crossReplicaSyncInterval must be a duration string"),
        ("{crossReplicaSyncerPluginRef: [a]}", "dataLayer.crossReplicaSyncerPluginRef must be a plugin name"),
        ("{crossReplicaSyncerPluginRef: nope}", "crossReplicaSyncerPluginRef: 'nope' names no plugin"),
        (
            "{sources: [{pluginRef: metrics-data-source, extractor: [{pluginRef: core-metrics-extractor}]}]}",
            r"dataLayer.sources\[0\]: unknown field\(s\) extractor",
        ),
        (
            "{sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor, "
            "weight: 1}]}]}",
            r"dataLayer.sources\[0\].extractors\[0\]: unknown field\(s\) weight",
        ),
    ],
)
def test_data_layer_fields_are_checked_by_key(data_layer: str, expected: str) -> None:
    """A typo inside a source (``extractor:``) wired nothing, silently; llm-d decodes strictly."""
    plugins = "plugins: [{type: metrics-data-source}, {type: core-metrics-extractor}]\n"
    with pytest.raises(ConfigError, match=expected):
        load_config(HEADER + plugins + f"dataLayer: {data_layer}\n")


def test_request_handler_parsers_are_checked_as_llm_d_checks_them() -> None:
    """requestHandler and the deprecated top-level parser were ignored with a warning, so a
    reference to a missing plugin or a non-parser loaded here and failed under llm-d
    (llm-d-router pkg/epp/config/loader/testdata_test.go errorParserWrongPlugin{Name,Type}Text)."""
    picker = (
        "plugins: [{type: max-score-picker, name: maxScore}, {type: openai-parser, name: openaiParser}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"requestHandler.parsers\[0\]: pluginRef 'wrongParser' names no plugin"
    ):
        load_config(HEADER + picker + "requestHandler: {parsers: [{pluginRef: wrongParser}]}\n")
    with pytest.raises(ConfigError, match=r"pluginRef 'maxScore' \(type max-score-picker\) is not a parser"):
        load_config(HEADER + picker + "requestHandler: {parsers: [{pluginRef: maxScore}]}\n")
    with pytest.raises(ConfigError, match=r"parser: pluginRef 'nope' names no plugin"):
        load_config(HEADER + picker + "parser: {pluginRef: nope}\n")
    with pytest.raises(
        ConfigError, match="type 'anthropic-parser' is an llm-d plugin this EPP does not implement"
    ):
        load_config(HEADER + picker + "requestHandler: {parsers: [{pluginRef: anthropic-parser}]}\n")
    for bad, expected in (
        ("requestHandler: [a]\n", "requestHandler must be a mapping"),
        ("requestHandler: {parser: []}\n", r"requestHandler: unknown field\(s\) parser"),
        ("requestHandler: {parsers: {}}\n", "requestHandler.parsers must be a list"),
        ("requestHandler: {parsers: [openaiParser]}\n", r"requestHandler.parsers\[0\] must be a mapping"),
        ("requestHandler: {parsers: [{pluginRef: openaiParser, weight: 1}]}\n", r"unknown field\(s\) weight"),
    ):
        with pytest.raises(ConfigError, match=expected):
            load_config(HEADER + picker + bad)


def test_valid_parser_lists_load_without_warnings() -> None:
    named = load_config(
        HEADER + "plugins: [{type: openai-parser, name: p}]\nrequestHandler: {parsers: [{pluginRef: p}]}\n"
    )
    assert named.warnings == []
    # A listed parser type that is not configured is created (ensureParsers).
    created = load_config(HEADER + "requestHandler: {parsers: [{pluginRef: vllmhttp-parser}]}\n")
    assert "vllmhttp-parser" in created.plugins and created.warnings == []
    legacy = load_config(HEADER + "parser: {pluginRef: openai-parser}\n")
    assert legacy.warnings == ["parser is deprecated, use requestHandler.parsers"]


def test_a_non_scheduling_plugin_in_a_profile_is_skipped_with_a_warning() -> None:
    """llm-d's AddPlugins adds a plugin only at the extension points it implements; a producer or
    handler listed in a profile (llm-d-router's router chart lists predicted-latency-producer)
    loads there and was refused here."""
    config = load_config(
        HEADER + "plugins: [{type: prefix-cache-scorer}, {type: approx-prefix-cache-producer}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: approx-prefix-cache-producer}, "
        "{pluginRef: prefix-cache-scorer}]}]\n"
    )
    profile = config.scheduler.profiles["a"]
    assert profile.filters == [] and [s.name for s, _ in profile.scorers] == ["prefix-cache-scorer"]
    (warning,) = config.warnings
    assert "'approx-prefix-cache-producer' (type approx-prefix-cache-producer) is not a filter" in warning


def test_newer_scorer_parameters_load() -> None:
    """llm-d-router's active-request-scorer and token-load-scorer take inFlightLoadProducerName,
    and prefix-cache-scorer matchLengthWeight / matchLengthScaleTokens; all three were refused as
    unknown parameters."""
    config = load_config(
        HEADER + "plugins:\n"
        "- {type: inflight-load-producer}\n"
        "- {type: active-request-scorer, parameters: {inFlightLoadProducerName: inflight-load-producer}}\n"
        "- {type: token-load-scorer, parameters: {inFlightLoadProducerName: inflight-load-producer}}\n"
        "- {type: prefix-cache-scorer, parameters: {matchLengthWeight: 0.5, matchLengthScaleTokens: 1024}}\n"
    )
    assert {"active-request-scorer", "token-load-scorer", "prefix-cache-scorer"} <= set(config.plugins)
    for bad, expected in (
        ("{matchLengthWeight: 1.5}", "'matchLengthWeight' must be <= 1"),
        ("{matchLengthWeight: 0.5, matchLengthScaleTokens: 0}", "'matchLengthScaleTokens' must be > 0"),
    ):
        with pytest.raises(ConfigError, match=expected):
            load_config(HEADER + f"plugins: [{{type: prefix-cache-scorer, parameters: {bad}}}]\n")


def test_match_length_weight_scores_as_llm_d() -> None:
    """scorer/prefix/plugin.go: w x min(1, matched blocks x block tokens / scale)^2 + (1 - w) x ratio."""
    from epp.plugins.prefix import PrefixCacheScorer, PrefixMatch
    from tests.support.epp import endpoint, scheduling_request

    config = load_config(
        HEADER + "plugins: [{type: prefix-cache-scorer, parameters: {matchLengthWeight: 0.5, "
        "matchLengthScaleTokens: 1024}}]\n"
    )
    scorer = config.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrefixCacheScorer) and scorer.producer is not None
    a, b = endpoint("a", "10.0.0.1"), endpoint("b", "10.0.0.2")
    request = scheduling_request()
    request.state[scorer.producer.name] = PrefixMatch(
        hashes=list(range(10)),
        block_tokens=64,
        prompt_tokens=640,
        matched_blocks={a.hostport: 8, b.hostport: 2},
    )
    score_a, score_b = scorer.score(request, [a, b])
    assert score_a == pytest.approx(0.5 * (8 * 64 / 1024) ** 2 + 0.5 * 0.8)
    assert score_b == pytest.approx(0.5 * (2 * 64 / 1024) ** 2 + 0.5 * 0.2)
    plain = load_config(HEADER + "plugins: [{type: prefix-cache-scorer}]\n").plugins["prefix-cache-scorer"]
    assert isinstance(plain, PrefixCacheScorer) and plain.match_length_weight == 0.0  # llm-d's default


@pytest.mark.parametrize(
    ("key", "value", "instead"),
    [
        ("caCertPath", "/ca.pem", "certificates"),
        ("clientCertPath", "/c.pem", "certificates"),
        ("clientKeyPath", "/k.pem", "certificates"),
    ],
)
def test_newer_metrics_source_parameters_are_refused_by_name(key: str, value: str, instead: str) -> None:
    """llm-d-router's metrics-data-source takes these TLS file paths (source/metrics/datasource.go);
    they are not implemented here and were refused as 'unknown parameter(s)', like a typo. (Its port
    and interval are implemented: tests/epp/plugins/test_plugins.py.)"""
    with pytest.raises(
        ConfigError, match=f"parameter '{key}' is llm-d's but not supported by this EPP: .*{instead}"
    ):
        load_config(HEADER + f"plugins: [{{type: metrics-data-source, parameters: {{{key}: '{value}'}}}}]\n")


def test_inflight_load_producer_takes_llm_d_parameters() -> None:
    """producer.go Config: refused as unknown parameters before; estimates stay off here."""
    config = load_config(
        HEADER + "plugins: [{type: inflight-load-producer, parameters: {addEstimatedOutputTokens: false, "
        "outputRatio: 0.5, maxEstimatedOutputTokens: 512, prefixMatchInfoProducerName: p, "
        "syncCrossReplicaState: false}}]\n"
    )
    assert "inflight-load-producer" in config.plugins
    with pytest.raises(ConfigError, match="'addEstimatedOutputTokens' true is not supported"):
        load_config(
            HEADER
            + "plugins: [{type: inflight-load-producer, parameters: {addEstimatedOutputTokens: true}}]\n"
        )
    with pytest.raises(ConfigError, match="'outputRatio' must be >= 0"):
        load_config(HEADER + "plugins: [{type: inflight-load-producer, parameters: {outputRatio: -1}}]\n")


@pytest.mark.parametrize("key", ["engineLabelKey", "engineConfigs", "customMetrics"])
def test_metric_mapping_parameters_are_refused_by_name(key: str) -> None:
    with pytest.raises(ConfigError, match=f"parameter '{key}' is llm-d's but not supported by this EPP"):
        load_config(HEADER + f"plugins: [{{type: core-metrics-extractor, parameters: {{{key}: x}}}}]\n")
