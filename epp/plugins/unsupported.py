"""llm-d-router plugin types this EPP does not implement, with why or what to use instead.

A config naming one fails at start-up, as any unknown type does, but the error says the type is
llm-d's and not implemented here (rather than listing every known type, as for a typo), and
docs/plugins.md lists them (generated from this table). The list is llm-d-router's registry
(``cmd/epp/runner/runner.go`` at ebab68792, August 2026) minus the types registered here; test-only
types (``header-based-testing-filter``, ``destination-endpoint-served-verifier``) are left out.
"""

from __future__ import annotations

from epp.scheduling.registry import register_unsupported

_PARSER = "this EPP parses the OpenAI completions/chat API only (openai-parser, vllmhttp-parser)"
_MULTICLUSTER = "multi-cluster routing is not implemented"
_LATENCY = "latency prediction (the latency predictor sidecar) is not implemented"
_SESSION = "session affinity is not implemented"
_TOPOLOGY = "topology-aware routing is not implemented"

UNSUPPORTED: dict[str, str] = {
    "agent-identity": "agent identity headers are not implemented",
    "always-disagg-multimodal-decider": "encode disaggregation (E/P/D) is not supported",
    "anthropic-parser": _PARSER,
    "burst-prefix-cache-producer": "use approx-prefix-cache-producer",
    "context-length-aware": "context-length-aware scoring is not implemented",
    "data-parallel-profile-handler": "data-parallel routing (one pod, several ranks) is not implemented",
    "dcgm-data-source": "GPU (DCGM) metrics are not collected",
    "dcgm-extractor": "GPU (DCGM) metrics are not collected",
    "disaggregatedset-rollout-screener": "rollout screening is not implemented",
    "endpoint-attribute-filter": "endpoint-attribute routing is not implemented",
    "endpoint-attribute-scorer": "endpoint-attribute routing is not implemented",
    "file-discovery": "use the EPP's --endpoints-file flag",
    "header-label-affinity-scorer": "header-to-label affinity is not implemented",
    "header-profile-handler": "use single-profile-handler or disagg-profile-handler",
    "k8s-notification-source": "Kubernetes object notifications are not implemented",
    "latency-scorer": _LATENCY,
    "latency-slo-admitter": _LATENCY,
    "mm-embeddings-cache-producer": "multimodal embeddings caching is not implemented",
    "mm-embeddings-cache-scorer": "multimodal embeddings caching is not implemented",
    "models-data-extractor": "served models come from --served-models, not /v1/models polling",
    "models-data-source": "served models come from --served-models, not /v1/models polling",
    "multicluster-approx-prefix-cache-producer": _MULTICLUSTER,
    "multicluster-file-discovery": _MULTICLUSTER,
    "multicluster-kv-cache-utilization-scorer": _MULTICLUSTER,
    "multicluster-metrics-data-source": _MULTICLUSTER,
    "multicluster-metrics-extractor": _MULTICLUSTER,
    "multicluster-prefix-cache-scorer": _MULTICLUSTER,
    "multicluster-queue-scorer": _MULTICLUSTER,
    "multicluster-session-affinity-filter": _MULTICLUSTER,
    "no-hit-lru-scorer": "cold-request spreading by LRU is not implemented",
    "p2p-source-producer": "cross-replica data sharing is not implemented",
    "passthrough-parser": _PARSER,
    "precise-prefix-cache-scorer": (
        "deprecated upstream: configure precise-prefix-cache-producer and prefix-cache-scorer with "
        "prefixMatchInfoProducerName: precise-prefix-cache-producer"
    ),
    "predicted-latency-producer": _LATENCY,
    "prefix-cache-affinity-filter": "prefix-cache affinity gating is not implemented",
    "priority-then-time-eviction-order-policy": "in-flight eviction is not implemented",
    "probabilistic-admitter": "probabilistic admission is not implemented; flow control gates on saturation",
    "program-aware-fairness": "use round-robin-fairness-policy",
    "request-attribute-reporter": "request attribute reporting is not implemented",
    "session-affinity-filter": _SESSION,
    "session-affinity-scorer": _SESSION,
    "session-id-producer": _SESSION,
    "sglanghttp-parser": _PARSER,
    "sheddable-eviction-filter": "in-flight eviction is not implemented",
    "slo-headroom-tier-filter": _LATENCY,
    "soft-reflective-ceiling-policy": "use static-usage-limit-policy or priority-holdback-policy",
    "topology-affinity-filter": _TOPOLOGY,
    "topology-affinity-scorer": _TOPOLOGY,
    "topology-extractor": _TOPOLOGY,
    "utilization-filter": (
        "not implemented; concurrency-detector listed in a profile filters endpoints at their limit"
    ),
    "vertexai-parser": _PARSER,
    "vllmgrpc-parser": _PARSER,
}

register_unsupported(UNSUPPORTED)
