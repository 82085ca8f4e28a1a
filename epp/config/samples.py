"""EndpointPickerConfigs shared by the demo, the end-to-end tests, the benchmarks and (through a test
that ties the two spellings) the stacks: llm-d's prefill/decode sample, and the stacks' default
single-pool profile.

The source is llm-d Router's ``deploy/config/pd-epp-config.yaml``: two profiles (``prefill`` and
``decode``), each a role filter, ``max-score-picker``, ``prefix-cache-scorer`` (weight 2) and
``queue-scorer`` (weight 1), chosen between by ``disagg-profile-handler`` with the
``prefix-based-pd-decider``. Unlike the upstream file it leaves out the explicit
``approx-prefix-cache-producer``: the loader adds one with its defaults when prefix scoring is
configured. The decider's threshold is a parameter because each user tunes it to its prompts.
Tests that check the loader against the upstream file keep their own verbatim copy of it.
"""

from __future__ import annotations

from typing import Any

import yaml

# The upstream sample's threshold: disaggregate when at least 16 prompt tokens are not cached on
# the chosen decode pod.
UPSTREAM_NON_CACHED_TOKENS = 16

_METRICS_SOURCE = "metrics-data-source"
_METRICS_EXTRACTOR = "core-metrics-extractor"


def _profile(name: str, role_filter: str) -> dict[str, Any]:
    return {
        "name": name,
        "plugins": [
            {"pluginRef": role_filter},
            {"pluginRef": "max-score-picker"},
            {"pluginRef": "prefix-cache-scorer", "weight": 2},
            {"pluginRef": "queue-scorer", "weight": 1},
        ],
    }


# The stacks' default profile: llm-d's default (queue 2, KV utilisation 2, prefix 3) plus the
# in-flight scorer llm-d users add against bursts. The load scorers read metrics up to one scrape
# interval old, so a burst of unique prompts all sees the same "least loaded" pod (herding) and
# agentic sessions that share a system prompt all see the same cache hits (packing); the EPP's own
# in-flight counts are current to the request and spread both. BENCHMARKS.md ("saturation") has
# the measurements behind the choice.
IN_FLIGHT_AWARE_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: active-request-scorer
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics, insecureSkipVerify: true}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: active-request-scorer, weight: 2}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""


def pd_config(
    non_cached_tokens: int = UPSTREAM_NON_CACHED_TOKENS, *, http_metrics_source: bool = False
) -> str:
    """The P/D sample as EndpointPickerConfig YAML text.

    ``http_metrics_source`` spells out the data layer (plain-HTTP ``/metrics`` scraped by
    ``metrics-data-source`` into ``core-metrics-extractor``) instead of leaving it to the loader's
    defaults, for readers of a config that is printed or written out.
    """
    if non_cached_tokens < 0:
        raise ValueError(f"non_cached_tokens must be >= 0 (0 disables P/D), got {non_cached_tokens}")
    plugins: list[dict[str, Any]] = [
        {"type": "prefix-cache-scorer"},
        {"type": "queue-scorer"},
        {"type": "prefill-filter"},
        {"type": "decode-filter"},
        {"type": "max-score-picker"},
        {
            "type": "disagg-profile-handler",
            "parameters": {"deciders": {"prefill": "prefix-based-pd-decider"}},
        },
        {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": non_cached_tokens}},
    ]
    document: dict[str, Any] = {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": plugins,
        "schedulingProfiles": [_profile("prefill", "prefill-filter"), _profile("decode", "decode-filter")],
    }
    if http_metrics_source:
        plugins.append({"type": _METRICS_SOURCE, "parameters": {"scheme": "http", "path": "/metrics"}})
        plugins.append({"type": _METRICS_EXTRACTOR})
        document["dataLayer"] = {
            "sources": [{"pluginRef": _METRICS_SOURCE, "extractors": [{"pluginRef": _METRICS_EXTRACTOR}]}]
        }
    return yaml.safe_dump(document, sort_keys=False)
