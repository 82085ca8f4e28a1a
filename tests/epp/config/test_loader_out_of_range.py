"""Numbers beyond what llm-d's Go types hold are refused by name, not with a traceback.

YAML integers are unbounded in Python: ``1e400`` written as digits made ``float()`` raise
OverflowError (a traceback, and a crash loop) in every float parameter, scorer weight and
quantity; an infinite or 10^11-hour duration was accepted where Go's ``time.ParseDuration``
says "invalid duration"; and a 2^63 integer was accepted where Go's int64 decoding fails.
A non-list ``extractors`` under a metrics source was a TypeError."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.scheduling.errors import ConfigError
from tests.epp.config.test_loader_nonfinite import WEIGHTED

HUGE = "1" + "0" * 400  # an integer no float64 holds

PLUGIN = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: {type}
  parameters: {{{key}: {value}}}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
"""


FLOW = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
flowControl: {{{key}: {value}}}
"""


@pytest.mark.parametrize(
    ("type_name", "key"),
    [
        ("utilization-detector", "queueDepthThreshold"),  # Params.number
        ("utilization-detector", "metricsStalenessThreshold"),  # Params.duration
        ("active-request-scorer", "requestTimeout"),
        ("approx-prefix-cache-producer", "lruCapacityPerServer"),  # Params.integer
    ],
)
def test_a_huge_integer_parameter_is_refused_by_name(type_name: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"parameter '{key}'"):
        load_config(PLUGIN.format(type=type_name, key=key, value=HUGE))


def test_an_integer_beyond_int64_is_refused() -> None:
    with pytest.raises(ConfigError, match="'lruCapacityPerServer' must be <= 9223372036854775807"):
        load_config(
            PLUGIN.format(type="approx-prefix-cache-producer", key="lruCapacityPerServer", value=2**63)
        )


@pytest.mark.parametrize("value", [".inf", "'100000000000h'", "1.0e+300"])
def test_a_duration_beyond_go_duration_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"'metricsStalenessThreshold'.*duration"):
        load_config(PLUGIN.format(type="utilization-detector", key="metricsStalenessThreshold", value=value))


def test_the_longest_go_duration_is_accepted() -> None:
    config = load_config(
        PLUGIN.format(type="utilization-detector", key="metricsStalenessThreshold", value="'2562047h'")
    )
    assert config.saturation_detector.name == "utilization-detector"


def test_a_huge_scorer_weight_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="weight of 'queue-scorer'"):
        load_config(WEIGHTED.format(value=HUGE))


@pytest.mark.parametrize("value", [HUGE, "'1e400'", "'1e999999999'", "'10E'"])
def test_a_quantity_beyond_int64_is_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match=r"flowControl\.maxBytes"):
        load_config(FLOW.format(key="maxBytes", value=value))


def test_a_priority_band_beyond_int64_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"flowControl\.priorityBands\[0\]\.priority must be an integer \(int64\)"
    ):
        load_config(FLOW.format(key="priorityBands", value=f"[{{priority: {2**63}}}]"))


def test_a_flow_control_ttl_beyond_go_duration_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"flowControl\.defaultRequestTTL"):
        load_config(FLOW.format(key="defaultRequestTTL", value="'100000000000h'"))


@pytest.mark.parametrize("value", ["7", "true", "core-metrics-extractor"])
def test_metrics_source_extractors_must_be_a_list(value: str) -> None:
    text = f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: metrics-data-source
- type: core-metrics-extractor
dataLayer:
  sources: [{{pluginRef: metrics-data-source, extractors: {value}}}]
"""
    with pytest.raises(ConfigError, match=r"dataLayer.sources\[0\].extractors must be a list"):
        load_config(text)
