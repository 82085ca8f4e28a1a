"""The EndpointPickerConfig the EPP loads (``--config-file``), in llm-d's plugin vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from pulumi_llmd.components import naming
from pulumi_llmd.config.models import (
    EppConfig,
    EppFlowControlConfig,
    FlowControlBand,
    FlowControlPriorityBand,
)
from pulumi_llmd.config.precise import PrefixCacheMode

API_VERSION = "llm-d.ai/v1alpha1"
PRECISE_PRODUCER = "precise-prefix-cache-producer"


@dataclass(frozen=True)
class PreciseSettings:
    """What the precise plugins must agree on with the pods (docs/precise-prefix.md, "Block keys"):
    the token-producer's backend parameters and the pods' block size, block hash and hash seed."""

    token_producer: dict[str, Any]
    block_size: int
    hash_algorithm: str
    hash_seed: str


def precise_plugins(precise: PreciseSettings) -> list[dict[str, Any]]:
    """token-producer, endpoint-notification-source, the precise producer and a prefix-cache-scorer
    reading it, with llm-d-router v0.10's names and parameters (speculativeIndexing on, as in its own
    precise-prefix perf config)."""
    return [
        {"type": "token-producer", "parameters": precise.token_producer},
        {"type": "endpoint-notification-source"},
        {
            "type": PRECISE_PRODUCER,
            "parameters": {
                "tokenProcessorConfig": {
                    "blockSizeTokens": precise.block_size,
                    "hashAlgorithm": precise.hash_algorithm,
                    "hashSeed": precise.hash_seed,
                },
                "kvEventsConfig": {
                    "podDiscoveryConfig": {
                        "socketPort": naming.KV_EVENTS_PORT,
                        "replaySocketPort": naming.KV_REPLAY_PORT,
                    }
                },
                "speculativeIndexing": True,
            },
        },
        {"type": "prefix-cache-scorer", "parameters": {"prefixMatchInfoProducerName": PRECISE_PRODUCER}},
    ]


# The endpoint notifications feed the precise producer (subscribe on add, forget on delete).
PRECISE_SOURCE = {
    "pluginRef": "endpoint-notification-source",
    "extractors": [{"pluginRef": PRECISE_PRODUCER}],
}


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


def in_flight_aware_config() -> dict[str, Any]:
    """What the stacks run on a single pool: llm-d's default plus ``active-request-scorer`` (weight
    2) on the EPP's own in-flight counts, which are current where the scraped load metrics lag, so
    bursts of unique prompts do not herd onto one pod and agent sessions sharing a system prompt do
    not pack onto a few (measurements: BENCHMARKS.md, "saturation"). The EPP's copy of it is
    ``epp.config.samples.IN_FLIGHT_AWARE_CONFIG``; a test keeps the two equal."""
    document = default_config()
    document["plugins"].insert(3, {"type": "active-request-scorer"})
    document["schedulingProfiles"][0]["plugins"].append({"pluginRef": "active-request-scorer", "weight": 2})
    return document


def precise_config(precise: PreciseSettings, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stacks' single-pool profile (``base``, by default :func:`in_flight_aware_config`: llm-d's
    default plus the in-flight scorer) with the prefix scorer reading the precise producer instead of
    the approximate one."""
    document = base if base is not None else in_flight_aware_config()
    others = [plugin for plugin in document["plugins"] if plugin["type"] != "prefix-cache-scorer"]
    document["plugins"] = [*precise_plugins(precise), *others]
    document["dataLayer"]["sources"].append(PRECISE_SOURCE)
    return document


def disaggregated_config(non_cached_tokens: int, precise: PreciseSettings | None = None) -> dict[str, Any]:
    """P/D: always pick a decode pod; add a prefill pod when enough of the prompt is not cached there.
    With ``precise``, both profiles' prefix-cache-scorer and the decider read the precise producer
    (prefill pods publish their events too)."""

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

    decider: dict[str, Any] = {"nonCachedTokens": non_cached_tokens}
    if precise is not None:
        decider["prefixMatchInfoProducerName"] = PRECISE_PRODUCER
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "EndpointPickerConfig",
        "plugins": [
            *(precise_plugins(precise) if precise is not None else [{"type": "prefix-cache-scorer"}]),
            {"type": "queue-scorer"},
            {"type": "prefill-filter"},
            {"type": "decode-filter"},
            {"type": "max-score-picker"},
            {"type": "prefix-based-pd-decider", "parameters": decider},
            {
                "type": "disagg-profile-handler",
                "parameters": {"deciders": {"prefill": "prefix-based-pd-decider"}},
            },
        ],
        "schedulingProfiles": [profile("prefill", "prefill-filter"), profile("decode", "decode-filter")],
    }
    if precise is not None:
        document["dataLayer"] = {"sources": [PRECISE_SOURCE]}
    return document


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


def with_flow_control(document: dict[str, Any], flow: EppFlowControlConfig) -> dict[str, Any]:
    """``document`` plus llm-d's flow control: the feature gate, the detector and policy plugins it
    names, and the ``flowControl`` section (llm-d-router apix/config/v1alpha1 FlowControlConfig)."""
    if not flow.enabled:
        return document
    detector = flow.saturation_detector
    bands = [
        band
        for band in (flow.default_priority_band, flow.default_negative_priority_band, *flow.priority_bands)
        if band is not None
    ]
    policies = sorted(
        {p for band in bands for p in (band.fairness_policy, band.ordering_policy) if p is not None}
    )
    plugin: dict[str, Any] = {"type": detector.type}
    if detector.parameters():
        plugin["parameters"] = detector.parameters()
    section: dict[str, Any] = {"defaultRequestTTL": flow.default_request_TTL}
    if flow.no_endpoint_request_TTL is not None:
        section["noEndpointRequestTTL"] = flow.no_endpoint_request_TTL
    for key, value in (("maxRequests", flow.max_requests), ("maxBytes", flow.max_bytes)):
        if value is not None:
            section[key] = value
    section["defaultPriorityBand"] = _band(flow.default_priority_band)
    if flow.default_negative_priority_band is not None:
        section["defaultNegativePriorityBand"] = _band(flow.default_negative_priority_band)
    if flow.priority_bands:
        section["priorityBands"] = [_band(band) for band in flow.priority_bands]
    section["saturationDetector"] = {"pluginRef": detector.type}
    # The loader defaults to static-usage-limit-policy at 1.0 (llm-d-router's default), so the
    # plugin and its ref are rendered only when the stack asks for something else.
    usage_plugins: list[dict[str, Any]] = []
    usage: dict[str, Any] = {"type": flow.usage_limit.type}
    if flow.usage_limit.parameters():
        usage["parameters"] = flow.usage_limit.parameters()
    if usage != {"type": "static-usage-limit-policy"}:
        usage_plugins.append(usage)
        section["usageLimitPolicyPluginRef"] = usage["type"]
    profiles = document["schedulingProfiles"]
    if detector.filter:
        profiles = [
            {**profile, "plugins": [{"pluginRef": detector.type}, *profile["plugins"]]}
            for profile in profiles
        ]
    return {
        **document,
        "featureGates": ["flowControl"],
        "plugins": [*document["plugins"], plugin, *({"type": p} for p in policies), *usage_plugins],
        "schedulingProfiles": profiles,
        "flowControl": section,
    }


def _band(band: FlowControlBand) -> dict[str, Any]:
    rendered: dict[str, Any] = (
        {"priority": band.priority} if isinstance(band, FlowControlPriorityBand) else {}
    )
    for key, value in (
        ("maxRequests", band.max_requests),
        ("maxBytes", band.max_bytes),
        ("fairnessPolicyRef", band.fairness_policy),
        ("orderingPolicyRef", band.ordering_policy),
    ):
        if value is not None:
            rendered[key] = value
    return rendered


def render_epp_config(
    settings: EppConfig, *, disaggregated: bool, precise: PreciseSettings | None = None, lora: bool = False
) -> str:
    """The YAML text for the EPP ConfigMap: the operator's override, else the generated config
    (``precise`` is required with ``settings.prefix_cache`` precise), with adapter affinity when the
    pool serves LoRA adapters and flow control when on."""
    if settings.config is not None:
        return settings.config
    if settings.prefix_cache is PrefixCacheMode.PRECISE:
        if precise is None:
            raise ValueError("precise prefix-cache mode needs the model's PreciseSettings")
    else:
        precise = None
    if disaggregated:
        document = disaggregated_config(settings.pd_non_cached_tokens, precise)
    else:
        # A pool with adapters keeps llm-d's default profile: the in-flight scorer (weight 2, a full
        # swing between a pod with one more request and one without) would outweigh adapter affinity
        # (weight 1, 1.0 against 0.8 for a free slot) whenever the pod running the adapter is busier,
        # which is nearly always; measured with it: BENCHMARKS.md, "lora-affinity".
        base = default_config() if lora else in_flight_aware_config()
        document = base if precise is None else precise_config(precise, base)
    if lora:
        document = with_lora_affinity(document)
    return yaml.safe_dump(with_flow_control(document, settings.flow_control), sort_keys=False)
