"""Names and limits of the endpoint-picker protocol (Gateway API Inference Extension, ext_proc).

Kept in one place so the stream state machine, the tests and the Envoy harness agree on spelling.
"""

from __future__ import annotations

# The picked endpoint(s), "ip:port[,ip:port...]": set as a request header AND as dynamic metadata.
DESTINATION_ENDPOINT = "x-gateway-destination-endpoint"
# Metadata namespace the proxy's load balancer reads the destination from.
LB_METADATA_NAMESPACE = "envoy.lb"
# Where the proxy reports which endpoint actually served the request (response path).
DESTINATION_ENDPOINT_SERVED = "x-gateway-destination-endpoint-served"
# Subset hint from the proxy: filter metadata namespace and key (value: list of "ip:port").
SUBSET_HINT_NAMESPACE = "envoy.lb.subset_hint"
DESTINATION_ENDPOINT_SUBSET = "x-gateway-destination-endpoint-subset"

DROPPED_REASON = "x-llm-d-request-dropped-reason"
# Opt-in debugging (smoke tests): a request carrying DEBUG_ENDPOINT: true gets SERVED_BY in its
# response, naming the endpoint that answered ("endpoint=ip:port", plus "prefill=ip:port" under P/D).
DEBUG_ENDPOINT = "x-llm-d-debug-endpoint"
SERVED_BY = "x-llm-d-served-by"
PREFILL_ENDPOINT = "x-prefiller-host-port"
REQUEST_ID = "x-request-id"

# Current spelling first, legacy alias second.
OBJECTIVE_HEADERS = ("x-llm-d-inference-objective", "x-gateway-inference-objective")
FAIRNESS_ID_HEADERS = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
DEFAULT_FAIRNESS_ID = "default-flow"

# Headers that steer where a request goes. Only the EPP may set them: a client-sent copy is removed
# (or overwritten) on every request, otherwise a client could pick any host or prefill target.
STEERING_HEADERS = frozenset(
    {
        DESTINATION_ENDPOINT,
        DESTINATION_ENDPOINT_SERVED,
        DESTINATION_ENDPOINT_SUBSET,
        "x-gateway-destination-endpoint-scores",
        "x-prefiller-host-port",
        "x-encoder-hosts-ports",
        "x-data-parallel-host-port",
        "x-kv-cache-source-host-port",
    }
)

# Headers the protocol layer consumes itself: they never reach the Director's header map.
CONSUMED_HEADERS = frozenset({*STEERING_HEADERS, *OBJECTIVE_HEADERS, *FAIRNESS_ID_HEADERS, "content-length"})

# Upper bound of one streamed body mutation (the reference EPP uses the same figure, below Envoy's
# default 64 KiB gRPC frame budget once protobuf framing is added).
BODY_CHUNK_BYTES = 62_000

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
