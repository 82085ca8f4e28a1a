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


# Adapter affinity next to the load and prefix scorers, at the weight llm-d's documented multi-scorer
# profile gives it (prefix 3, queue 2, kv-cache 2, lora-affinity 1): it breaks ties towards a pod
# already running the adapter without overriding load (llm-d-router docs; the scorer itself is
# pkg/epp/framework/plugins/scheduling/scorer/loraaffinity).
LORA_AFFINITY_WEIGHT = 1


def with_lora_affinity(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the lora-affinity-scorer in every scheduling profile (P/D: both roles need
    the adapter, so both profiles prefer pods running it)."""
    document["plugins"].append({"type": "lora-affinity-scorer"})
    for profile in document["schedulingProfiles"]:
        profile["plugins"].append({"pluginRef": "lora-affinity-scorer", "weight": LORA_AFFINITY_WEIGHT})
    return document


def render_epp_config(settings: EppConfig, *, disaggregated: bool, lora: bool = False) -> str:
    """The YAML text for the EPP ConfigMap: the operator's override, else the generated config (with
    adapter affinity when the pool serves LoRA adapters)."""
    if settings.config is not None:
        return settings.config
    document = disaggregated_config(settings.pd_non_cached_tokens) if disaggregated else default_config()
    if lora:
        document = with_lora_affinity(document)
    return yaml.safe_dump(document, sort_keys=False)
