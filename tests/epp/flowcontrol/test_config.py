"""The flowControl section and feature gates, loaded through the EndpointPickerConfig loader as
llm-d loads them: defaults, strict keys, quantities and durations, the detector's new home."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.flowcontrol.config import parse_go_duration, parse_quantity
from epp.flowcontrol.policies import (
    EdfOrderingPolicy,
    FcfsOrderingPolicy,
    GlobalStrictFairnessPolicy,
    PriorityHoldbackPolicy,
    RoundRobinFairnessPolicy,
    StaticUsageLimitPolicy,
)
from epp.plugins.saturation import ConcurrencyDetector, UtilizationDetector
from epp.scheduling.errors import ConfigError
from tests.support.epp_configs import HEADER

ON = HEADER + "featureGates: [flowControl]\nplugins: [{type: queue-scorer}]\n"


def test_gate_on_without_a_section_uses_llm_d_defaults() -> None:
    config = load_config(ON)
    flow = config.flow_control
    assert flow is not None and config.feature_gates["flowControl"] is True
    assert (flow.default_request_ttl, flow.no_endpoint_request_ttl) == (60.0, 60.0)
    assert (flow.max_requests, flow.max_bytes) == (0, 0)
    band = flow.band_for(0)
    assert (band.max_requests, band.max_bytes) == (5000, 1_000_000_000)
    assert isinstance(band.fairness, GlobalStrictFairnessPolicy)
    assert isinstance(band.ordering, FcfsOrderingPolicy)
    assert isinstance(flow.usage_limit, StaticUsageLimitPolicy) and flow.usage_limit.threshold == 1.0
    assert isinstance(flow.detector, UtilizationDetector)
    assert flow.band_for(-3).priority == -3 and flow.band_for(-3).max_requests == 5000
    assert config.warnings == []


def test_gate_off_is_the_default_and_settings_warn_like_llm_d() -> None:
    config = load_config(HEADER + "plugins: [{type: queue-scorer}]\nflowControl: {maxRequests: 10}\n")
    assert config.flow_control is None and config.feature_gates["flowControl"] is False
    (warning,) = config.warnings
    assert (
        "flowControl settings (maxRequests) ignored" in warning and "featureGates: [flowControl]" in warning
    )
    # The detector alone is not a setting the gate governs: no warning.
    quiet = load_config(
        HEADER + "plugins: [{type: concurrency-detector}]\n"
        "flowControl: {saturationDetector: {pluginRef: concurrency-detector}}\n"
    )
    assert quiet.warnings == [] and isinstance(quiet.saturation_detector, ConcurrencyDetector)


def test_full_section_with_bands_and_policies() -> None:
    config = load_config(
        HEADER
        + """
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: round-robin-fairness-policy
- type: edf-ordering-policy
- {type: priority-holdback-policy, name: holdback, parameters: {minCeiling: 0.6}}
- {type: concurrency-detector, parameters: {maxConcurrency: 8}}
flowControl:
  maxRequests: 2k
  maxBytes: 1Gi
  defaultRequestTTL: 1m30s
  noEndpointRequestTTL: 5m
  usageLimitPolicyPluginRef: holdback
  saturationDetector: {pluginRef: concurrency-detector}
  defaultPriorityBand: {maxRequests: 100, fairnessPolicyRef: round-robin-fairness-policy}
  defaultNegativePriorityBand: {maxRequests: 10}
  priorityBands:
  - {priority: 100, orderingPolicyRef: edf-ordering-policy, maxBytes: 500M}
  - {priority: 0, fairnessPolicyRef: round-robin-fairness-policy, maxRequests: "0"}
"""
    )
    flow = config.flow_control
    assert flow is not None
    assert (flow.max_requests, flow.max_bytes) == (2000, 2**30)
    assert (flow.default_request_ttl, flow.no_endpoint_request_ttl) == (90.0, 300.0)
    assert isinstance(flow.usage_limit, PriorityHoldbackPolicy)
    assert isinstance(flow.detector, ConcurrencyDetector) and flow.detector is config.saturation_detector
    top = flow.band_for(100)
    assert isinstance(top.ordering, EdfOrderingPolicy) and top.max_bytes == 500_000_000
    assert isinstance(top.fairness, GlobalStrictFairnessPolicy)  # listed bands default to llm-d's defaults
    zero = flow.band_for(0)
    assert isinstance(zero.fairness, RoundRobinFairnessPolicy) and zero.max_requests == 5000  # "0" = default
    assert flow.band_for(7).max_requests == 100 and isinstance(
        flow.band_for(7).fairness, RoundRobinFairnessPolicy
    )
    assert flow.band_for(-1).max_requests == 10
    assert flow.longest_ttl == 300.0


def test_no_endpoint_ttl_follows_default_ttl_and_zero_means_no_bound() -> None:
    flow = load_config(ON + "flowControl: {defaultRequestTTL: 0s}\n").flow_control
    assert flow is not None and flow.no_endpoint_request_ttl == 0.0 and flow.longest_ttl == 0.0


def test_deprecated_top_level_detector_still_works_and_the_new_field_wins() -> None:
    legacy = load_config(
        HEADER
        + "plugins: [{type: concurrency-detector}]\nsaturationDetector: {pluginRef: concurrency-detector}\n"
    )
    assert isinstance(legacy.saturation_detector, ConcurrencyDetector)
    assert any("saturationDetector is deprecated" in w for w in legacy.warnings)
    both = load_config(
        HEADER + "plugins: [{type: concurrency-detector}, {type: utilization-detector}]\n"
        "saturationDetector: {pluginRef: utilization-detector}\n"
        "flowControl: {saturationDetector: {pluginRef: concurrency-detector}}\n"
    )
    assert isinstance(both.saturation_detector, ConcurrencyDetector)
    assert any("flowControl.saturationDetector is used" in w for w in both.warnings)


def test_eviction_is_accepted_with_a_warning() -> None:
    config = load_config(ON + "flowControl: {enableEviction: true}\n")
    assert any("enableEviction ignored" in w for w in config.warnings)


def test_feature_gate_values() -> None:
    assert load_config(HEADER + "featureGates: [flowControl=false]\nplugins: []\n").flow_control is None
    assert load_config(HEADER + "featureGates: ['flowControl=TRUE']\nplugins: []\n").flow_control is not None
    gates = load_config(
        HEADER + "featureGates: [haPopulateNonLeaderDatastore=false]\nplugins: []\n"
    ).feature_gates
    assert gates == {"flowControl": False, "haPopulateNonLeaderDatastore": False}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEADER + "featureGates: [flowKontrol]\n", "featureGates[0]: unknown feature gate 'flowKontrol'"),
        (HEADER + "featureGates: [flowControl=maybe]\n", "is not true or false for gate 'flowControl'"),
        (HEADER + "featureGates: flowControl\n", "featureGates must be a list"),
        (ON + "flowControl: {maxRequest: 10}\n", "flowControl: unknown field(s) maxRequest"),
        (
            ON + "flowControl: {defaultRequestTTL: 60}\n",
            "flowControl.defaultRequestTTL must be a duration string",
        ),
        (ON + "flowControl: {defaultRequestTTL: soon}\n", "flowControl.defaultRequestTTL is not a duration"),
        (ON + "flowControl: {defaultRequestTTL: -5s}\n", "must not be negative"),
        (ON + "flowControl: {maxBytes: lots}\n", "flowControl.maxBytes must be a quantity"),
        (ON + "flowControl: {maxRequests: -1}\n", "flowControl.maxRequests must be non-negative"),
        (
            ON + "flowControl: {priorityBands: [{maxRequests: 5}]}\n",
            "flowControl.priorityBands[0].priority is required",
        ),
        (
            ON + "flowControl: {priorityBands: [{priority: 1}, {priority: 1}]}\n",
            "flowControl.priorityBands[1]: duplicate priority 1",
        ),
        (
            ON + "flowControl: {priorityBands: [{priority: 1, weight: 2}]}\n",
            "priorityBands[0]: unknown field(s) weight",
        ),
        (
            ON + "flowControl: {defaultPriorityBand: {fairnessPolicyRef: queue-scorer}}\n",
            "flowControl.defaultPriorityBand.fairnessPolicyRef: plugin 'queue-scorer' (type queue-scorer) "
            "is not a FairnessPolicy",
        ),
        (
            ON + "flowControl: {priorityBands: [{priority: 2, orderingPolicyRef: lifo}]}\n",
            "flowControl.priorityBands[0].orderingPolicyRef: 'lifo' names no plugin",
        ),
        (
            ON + "flowControl: {usageLimitPolicyPluginRef: ghost}\n",
            "usageLimitPolicyPluginRef: 'ghost' names no plugin",
        ),
        (
            ON + "flowControl: {saturationDetector: {pluginRef: queue-scorer}}\n",
            "is not a configured saturation detector",
        ),
        (
            ON + "flowControl: {saturationDetector: {ref: x}}\n",
            "flowControl.saturationDetector: unknown field(s) ref",
        ),
        (ON + "flowControl: {enableEviction: yes please}\n", "enableEviction must be true or false"),
        (ON + "flowControl: [1]\n", "flowControl must be a mapping"),
    ],
)
def test_bad_flow_control_config_names_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5000, 5000),
        ("5000", 5000),
        ("5k", 5000),
        ("1Ki", 1024),
        ("1.5M", 1_500_000),
        ("1e3", 1000),
        ("500m", 1),
        ("0", 0),
    ],
)
def test_quantities(value: object, expected: int) -> None:
    assert parse_quantity(value, "q") == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("60s", 60.0), ("1m30s", 90.0), ("250ms", 0.25), ("0", 0.0), ("0s", 0.0)]
)
def test_durations(value: str, expected: float) -> None:
    assert parse_go_duration(value, "d") == expected
