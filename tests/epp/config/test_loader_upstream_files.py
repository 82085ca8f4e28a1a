"""llm-d-router's own sample EndpointPickerConfigs (deploy/config/*.yaml, copied verbatim into
tests/epp/config/upstream/ with the commit in their first line) load with the meaning llm-d gives
them, or are refused with an error that names the key or the unimplemented type."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config.loader import load_config
from epp.plugins.pickers import MaxScorePicker
from epp.plugins.precise import PrecisePrefixCacheProducer
from epp.plugins.prefix import ApproxPrefixCacheProducer, PrefixCacheScorer
from epp.plugins.profile_handlers import DisaggProfileHandler, SingleProfileHandler
from epp.plugins.saturation import UtilizationDetector
from epp.plugins.unsupported import UNSUPPORTED
from epp.scheduling.errors import ConfigError
from epp.scheduling.registry import known_types
from tests.support.epp_configs import HEADER

UPSTREAM = Path(__file__).parent / "upstream"


def upstream(name: str) -> str:
    return (UPSTREAM / name).read_text()


def test_epp_config_loads_as_llm_d_builds_it() -> None:
    config = load_config(upstream("epp-config.yaml"))
    (profile,) = config.scheduler.profiles.values()
    assert [f.name for f in profile.filters] == ["decode-filter"]
    assert [(s.name, w) for s, w in profile.scorers] == [("prefix-cache-scorer", 2.0)]
    assert isinstance(profile.picker, MaxScorePicker)
    assert isinstance(config.scheduler.handler, SingleProfileHandler)
    assert isinstance(config.saturation_detector, UtilizationDetector)
    assert [type(p) for p in config.producers] == [ApproxPrefixCacheProducer]  # llm-d's default producer
    assert config.warnings == []


def test_pd_samples_load() -> None:
    for name in ("pd-epp-config.yaml", "sim-pd-epp-config.yaml"):
        config = load_config(upstream(name))
        assert isinstance(config.scheduler.handler, DisaggProfileHandler), name
        assert set(config.scheduler.profiles) == {"prefill", "decode"}, name
        assert config.warnings == [], name


def test_estimate_prefix_sample_loads() -> None:
    config = load_config(upstream("epp-estimate-prefix-cache-config.yaml"))
    (profile,) = config.scheduler.profiles.values()
    weights = [(s.name, w) for s, w in profile.scorers]
    assert weights == [("prefix-cache-scorer", 1.0), ("load-aware-scorer", 1.0)]
    assert [type(p) for p in config.producers] == [ApproxPrefixCacheProducer]
    assert config.warnings == []


def test_precise_prefix_sample_loads_with_its_weights_as_floats() -> None:
    config = load_config(upstream("epp-precise-prefix-cache-config.yaml"))
    (profile,) = config.scheduler.profiles.values()
    assert [(s.name, w) for s, w in profile.scorers] == [
        ("prefix-cache-scorer", 2.0),
        ("kv-cache-utilization-scorer", 1.0),
        ("queue-scorer", 1.0),
    ]
    scorer = config.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrefixCacheScorer)
    assert isinstance(config.plugins["precise-prefix-cache-producer"], PrecisePrefixCacheProducer)
    assert config.warnings == []


def test_metrics_logging_interval_is_nanoseconds_as_in_llm_d_samples() -> None:
    """sim-epp-kvcache-config.yaml writes ``metricsLoggingInterval: 60000000000 # 1m in
    nanoseconds`` (a Go time.Duration); it was read as 60e9 seconds and refused as longer than a Go
    duration holds. The sample is now refused only for the centralized kvEventsConfig.zmqEndpoint,
    which docs/precise-prefix.md lists as unsupported."""
    text = upstream("sim-epp-kvcache-config.yaml")
    with pytest.raises(
        ConfigError, match=r"'kvEventsConfig\.zmqEndpoint' \(centralized mode\) is not supported"
    ):
        load_config(text)
    per_pod = text.replace("      zmqEndpoint: tcp://0.0.0.0:5557\n", "      discoverPods: true\n")
    assert "zmqEndpoint" not in per_pod
    assert isinstance(
        load_config(per_pod).plugins["precise-prefix-cache-producer"], PrecisePrefixCacheProducer
    )
    for bad, problem in (("60000000000.5", "whole nanoseconds"), ("-1", "must not be negative|negative")):
        with pytest.raises(ConfigError, match=f"metricsLoggingInterval.*({problem})"):
            load_config(per_pod.replace("60000000000", bad))


@pytest.mark.parametrize(
    ("name", "type_name"),
    [
        ("sim-epp-no-hit-lru.yaml", "no-hit-lru-scorer"),
        ("dp-epp-config.yaml", "data-parallel-profile-handler"),
    ],
)
def test_samples_with_unimplemented_types_name_the_type(name: str, type_name: str) -> None:
    with pytest.raises(
        ConfigError, match=f"type '{type_name}' is an llm-d plugin this EPP does not implement"
    ):
        load_config(upstream(name))


def test_encode_disaggregation_sample_is_refused_by_key() -> None:
    with pytest.raises(ConfigError, match=r"'deciders' encode disaggregation \(E/P/D\) is not supported"):
        load_config(upstream("sim-e-p-d-epp-config.yaml"))


@pytest.mark.parametrize("type_name", sorted(UNSUPPORTED))
def test_every_unimplemented_llm_d_type_says_so_and_why(type_name: str) -> None:
    """Each was an 'unknown type' with the list of every known type, like a typo."""
    assert type_name not in known_types()
    with pytest.raises(ConfigError) as caught:
        load_config(HEADER + f"plugins: [{{type: {type_name}}}]\n")
    message = str(caught.value)
    assert (
        f"type '{type_name}' is an llm-d plugin this EPP does not implement ({UNSUPPORTED[type_name]})"
        in message
    )
    assert "known types" not in message


def test_a_typo_still_lists_the_known_types() -> None:
    with pytest.raises(ConfigError, match="unknown type 'queue-scorr' \\(known types: active-request-scorer"):
        load_config(HEADER + "plugins: [{type: queue-scorr}]\n")


def test_configs_of_the_older_llm_d_inference_scheduler_name_what_changed() -> None:
    """llm-d-inference-scheduler's samples from before the llm-d-router rename use spellings the
    router since refused (vllm.http, now url) or removed (the enableLegacyMetrics gate). Both were
    refused here too, but as an 'unknown parameter' or 'unknown feature gate', as for a typo."""
    with pytest.raises(
        ConfigError, match=r"'vllm\.http' is the old name of 'url' \(llm-d-router renamed it\)"
    ):
        load_config(upstream("scheduler-epp-precise-prefix-cache-config.yaml"))
    text = upstream("scheduler-default-config.yaml")
    with pytest.raises(
        ConfigError, match=r"featureGates\[0\]: 'enableLegacyMetrics' was removed from llm-d-router"
    ):
        load_config(text)
    # Without the gate it loads, its deprecated top-level parser with a warning.
    config = load_config(text.replace("featureGates:\n  - enableLegacyMetrics\n", ""))
    assert config.warnings == ["parser is deprecated, use requestHandler.parsers"]


def test_disagg_handler_stage_order_and_flat_parameters_as_llm_d_reads_them() -> None:
    """disagg_profile_handler.go: stageOrder (decode-first by default, spelled loosely;
    prefill-first without a decider) and the deprecated flat parameters when no nested one is given;
    both were unknown parameters here."""
    text = upstream("pd-epp-config.yaml")
    nested = "    deciders:\n      prefill: prefix-based-pd-decider\n"
    assert nested in text
    for order in ("decode-first", "decode_first", "DecodeFirst", "decode"):
        config = load_config(text.replace(nested, f"    stageOrder: {order}\n" + nested))
        assert isinstance(config.scheduler.handler, DisaggProfileHandler)
    # prefill-first always prefills: llm-d refuses a prefill decider with it.
    with pytest.raises(ConfigError, match="'stageOrder' prefill-first takes no prefill decider"):
        load_config(text.replace(nested, "    stageOrder: prefill-first\n" + nested))
    config = load_config(text.replace(nested, "    stageOrder: Prefill_First\n"))
    assert isinstance(config.scheduler.handler, DisaggProfileHandler)
    with pytest.raises(ConfigError, match="'stageOrder' must be 'decode-first' or 'prefill-first'"):
        load_config(text.replace(nested, "    stageOrder: sideways\n" + nested))
    for flat in (
        "    deciderPluginName: prefix-based-pd-decider\n",
        "    prefillDeciderPluginName: prefix-based-pd-decider\n",
    ):
        config = load_config(
            text.replace(nested, flat + "    decodeProfile: decode\n    prefillProfile: prefill\n")
        )
        handler = config.scheduler.handler
        assert isinstance(handler, DisaggProfileHandler)
        assert handler.decider is config.plugins["prefix-based-pd-decider"]
    with pytest.raises(ConfigError, match="cannot be mixed with the deprecated flat parameter"):
        load_config(text.replace(nested, nested + "    decodeProfile: decode\n"))
