"""EndpointPickerConfig samples shared by the loader and director tests (llm-d's, kept as written)."""

from __future__ import annotations

HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"

# The P/D sample from llm-d Router (deploy/config/pd-epp-config.yaml), as in the reference notes.
PD_SAMPLE = (
    HEADER
    + """
plugins:
- type: approx-prefix-cache-producer
  parameters: {maxPrefixTokensToMatch: 16384, lruCapacityPerServer: 31250}
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 16}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: max-score-picker},
            {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer, weight: 1}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: max-score-picker},
            {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer, weight: 1}]
"""
)

# llm-d's non-P/D sample (deploy/config/epp-config.yaml shape).
PLAIN_SAMPLE = (
    HEADER
    + """
plugins:
- type: decode-filter
- type: max-score-picker
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
"""
)

# The deprecated handler with its SCHED-era parameters.
PD_LEGACY = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: pd-profile-handler
  parameters: {threshold: 100, hashBlockSize: 5, prefixPluginName: prefix}
- name: prefix
  type: prefix-cache-scorer
  parameters: {hashBlockSize: 64, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 1000}
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix, weight: 2}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix, weight: 2}]
"""
