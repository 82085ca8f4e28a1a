"""The EndpointPickerConfig the EPP loads (``--config-file``), in llm-d's plugin vocabulary."""

from __future__ import annotations

from typing import Any

import yaml

from pulumi_llmd.config.models import EppConfig

API_VERSION = "llm-d.ai/v1alpha1"


def default_config() -> dict[str, Any]:
    """llm-d's default configuration (what the EPP runs when given no file): one profile, three scorers."""
    return {
        "apiVersion": API_VERSION,
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer"},
            {
                "type": "metrics-data-source",
                "parameters": {"scheme": "http", "path": "/metrics", "insecureSkipVerify": True},
            },
            {"type": "core-metrics-extractor"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                ],
            }
        ],
        "dataLayer": {
            "sources": [
                {"pluginRef": "metrics-data-source", "extractors": [{"pluginRef": "core-metrics-extractor"}]}
            ]
        },
    }


def disaggregated_config(non_cached_tokens: int) -> dict[str, Any]:
    """P/D: always pick a decode pod; add a prefill pod when enough of the prompt is not cached there."""

    def profile(name: str, role_filter: str) -> dict[str, Any]:
        return {
            "name": name,
            "plugins": [
                {"pluginRef": role_filter},
                {"pluginRef": "max-score-picker"},
                {"pluginRef": "prefix-cache-scorer", "weight": 2},
                {"pluginRef": "queue-scorer", "weight": 1},
            ],
        }

    return {
        "apiVersion": API_VERSION,
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "prefix-cache-scorer"},
            {"type": "queue-scorer"},
            {"type": "prefill-filter"},
            {"type": "decode-filter"},
            {"type": "max-score-picker"},
            {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": non_cached_tokens}},
            {
                "type": "disagg-profile-handler",
                "parameters": {"deciders": {"prefill": "prefix-based-pd-decider"}},
            },
        ],
        "schedulingProfiles": [profile("prefill", "prefill-filter"), profile("decode", "decode-filter")],
    }


def render_epp_config(settings: EppConfig, *, disaggregated: bool) -> str:
    """The YAML text for the EPP ConfigMap: the operator's override, else the generated config."""
    if settings.config is not None:
        return settings.config
    document = disaggregated_config(settings.pd_non_cached_tokens) if disaggregated else default_config()
    return yaml.safe_dump(document, sort_keys=False)
