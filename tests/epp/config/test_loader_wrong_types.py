"""Every node of two full configs, replaced by a value of the wrong type, gives a ConfigError or a
config, never another exception: ``dataLayer.sources[0].pluginRef: []`` raised TypeError
(unhashable list) from the injectDefaults check."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.config.loader import load_config
from epp.scheduling.errors import ConfigError

FULL = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: round-robin-fairness-policy
- type: edf-ordering-policy
- {type: priority-holdback-policy, name: holdback, parameters: {minCeiling: 0.6}}
- {type: concurrency-detector, parameters: {maxConcurrency: 8}}
- {type: metrics-data-source, parameters: {scheme: http, path: /metrics}}
- {type: core-metrics-extractor}
- {type: openai-parser}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: concurrency-detector}, {pluginRef: queue-scorer, weight: 2}]
requestHandler: {parsers: [{pluginRef: openai-parser}]}
dataLayer:
  injectDefaults: true
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
flowControl:
  maxRequests: 2k
  defaultRequestTTL: 1m30s
  usageLimitPolicyPluginRef: holdback
  saturationDetector: {pluginRef: concurrency-detector}
  defaultPriorityBand: {maxRequests: 100, fairnessPolicyRef: round-robin-fairness-policy}
  priorityBands:
  - {priority: 100, orderingPolicyRef: edf-ordering-policy, maxBytes: 500M}
"""
PRECISE = (Path(__file__).parent / "upstream" / "epp-precise-prefix-cache-config.yaml").read_text()
WRONG: list[Any] = [[], {"x": 1}, "x"]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from paths(child, (*prefix, key))


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copied = copy.deepcopy(document)
    node = copied
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copied


@pytest.mark.parametrize("text", [FULL, PRECISE], ids=["full", "upstream-precise"])
def test_a_wrong_type_anywhere_is_a_config_error(text: str) -> None:
    document = yaml.safe_load(text)
    load_config(text)  # the unmutated config loads
    for path in paths(document):
        for value in WRONG:
            mutated = yaml.safe_dump(replaced(document, path, value))
            try:
                load_config(mutated)
            except ConfigError:
                pass
            except Exception as exc:
                pytest.fail(f"{'.'.join(map(str, path))} = {value!r}: {type(exc).__name__}: {exc}")
