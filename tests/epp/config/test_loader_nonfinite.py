"""Non-finite numbers (YAML .nan / .inf) in an EndpointPickerConfig are refused by name.

Every range check is a comparison, and NaN fails every comparison, so without an explicit check a
NaN threshold passes validation and then silently disables what it configures (a NaN saturation
never reaches 1.0; a NaN or infinite scorer weight turns every total score into NaN)."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.scheduling.errors import ConfigError

DETECTOR = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: utilization-detector
  parameters: {{{key}: {value}}}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
"""

WEIGHTED = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer, weight: {value}}}]
"""


@pytest.mark.parametrize("value", [".nan", ".inf"])
@pytest.mark.parametrize("key", ["queueDepthThreshold", "kvCacheUtilThreshold", "headroom"])
def test_non_finite_detector_thresholds_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}.*finite"):
        load_config(DETECTOR.format(key=key, value=value))


def test_a_nan_duration_is_refused() -> None:
    with pytest.raises(ConfigError, match="metricsStalenessThreshold"):
        load_config(DETECTOR.format(key="metricsStalenessThreshold", value=".nan"))


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_non_finite_scorer_weights_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="weight of 'queue-scorer' must be a number >= 0 and finite"):
        load_config(WEIGHTED.format(value=value))
