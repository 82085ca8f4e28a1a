"""Names, labels and ports every component agrees on (the cross-team label/port contract)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

# Pool selector and role labels (llm-d conventions; the EPP's prefill/decode filters read the role).
SERVING_LABEL = "llm-d.ai/inference-serving"
MODEL_LABEL = "llm-d.ai/model"
ROLE_LABEL = "llm-d.ai/role"
# Gateway API's recommended label on in-cluster gateway proxy pods (agentgateway, Istio and kgateway set it).
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
INFERENCE_POOL_GROUP = "inference.networking.k8s.io"

# The InferencePool targetPort: the sidecar on P/D decode pods, vLLM itself everywhere else.
MODEL_SERVER_PORT = 8000
# vLLM on P/D decode pods, behind the sidecar.
VLLM_BEHIND_SIDECAR_PORT = 8200
# vLLM's NIXL handshake ("side channel") port; KV blocks then move over UCX (RDMA or TCP).
NIXL_SIDE_CHANNEL_PORT = 5600
# Ray head port for replicas that span nodes (LeaderWorkerSet).
RAY_PORT = 6379
# Precise prefix routing: vLLM's KV-event PUB socket and its replay ROUTER (vLLM's and llm-d's
# defaults, vllm/config/kv_events.py; the EPP's podDiscoveryConfig socketPort/replaySocketPort).
KV_EVENTS_PORT = 5557
KV_REPLAY_PORT = 5558

# The EPP image's processes (EPP, P/D sidecar) need no root, no writable image, no extra syscalls.
# 65532 is the conventional "nonroot" user of distroless-style images.
NON_ROOT_UID = 65532

# The P/D sidecar's own Prometheus metrics on decode pods (`--metrics-port`).
SIDECAR_METRICS_PORT = 9090
SIDECAR_METRICS_PORT_NAME = "sidecar-metrics"

EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090

# The appProtocol of every ext_proc Service port (the EPP's, the body router's): gRPC is HTTP/2, and
# stays HTTP/2 when the server adds TLS under it. Gateways choose the upstream HTTP version from it
# and add the TLS themselves (kgateway, agentgateway) or by DestinationRule (Istio). Never "https":
# Istio reads that as opaque TLS and dials it over HTTP/1.1 without h2 ALPN, which no gRPC server
# answers (Istio 1.30.3 pkg/config/kube/conversion.go ConvertProtocol; pilot/pkg/networking/core/
# cluster_builder.go setUpstreamProtocol). llm-d-router v0.10.0 declares the EPP's port so
# (config/charts/routerlib/templates/_service.yaml).
EXT_PROC_APP_PROTOCOL = "kubernetes.io/h2c"

# The body router's ports: ext_proc and gRPC health as llm-d-inference-payload-processor's chart
# publishes them (config/charts/payload-processor/values.yaml: port 9004, healthCheckPort 9005).
BODY_ROUTER_GRPC_PORT = 9004
BODY_ROUTER_HEALTH_PORT = 9005
BODY_ROUTER_METRICS_PORT = 9090
# The header the body router sets from the request body and the HTTPRoute rules match: the base model
# that serves the requested name (llm-d-inference-payload-processor's base-model-to-header plugin,
# pkg/plugins/basemodelextractor; llm-d's guides/multi-model-routing matches it the same way). The
# body's model as sent goes into MODEL_HEADER (its body-field-to-header default).
BASE_MODEL_HEADER = "X-Gateway-Base-Model-Name"
MODEL_HEADER = "X-Gateway-Model-Name"


class Role(StrEnum):
    """A model-server pool's role (the `llm-d.ai/role` label the EPP's prefill/decode filters read)."""

    PREFILL = "prefill"
    """Computes the prompt's KV cache and hands it to a decode pod (P/D disaggregation)."""
    DECODE = "decode"
    """Generates tokens; without P/D it serves whole requests."""


# Every name below derives from the stack's instance name (``llmd:name``): two stacks in one
# namespace or cluster never collide, and an object's name says which stack owns it.


def common_labels(instance: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "llmd",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def pool_selector(instance: str, model_label: str) -> dict[str, str]:
    """The InferencePool's matchLabels: every serving model-server pod (both roles) of this stack (or
    model of a multi-model stack) carries these. The instance keeps two stacks that serve one model in
    one namespace apart: by model alone each pool took the other's pods, whose NetworkPolicies admit
    only their own gateway and EPP."""
    return {"app.kubernetes.io/instance": instance, SERVING_LABEL: "true", MODEL_LABEL: model_label}


def pool_name(instance: str) -> str:
    return instance


def epp_name(instance: str) -> str:
    return f"{instance}-epp"


def gateway_name(instance: str) -> str:
    return f"{instance}-gateway"


def model_server_name(instance: str, role: Role) -> str:
    return f"{instance}-{role}"


def hf_token_secret_name(instance: str) -> str:
    return f"{instance}-hf-token"


def body_router_name(instance: str) -> str:
    return f"{instance}-body-router"


def body_router_selector(instance: str) -> dict[str, str]:
    """The body router's pods (its Deployment, Service and PodMonitor select them alike)."""
    return {"app.kubernetes.io/instance": instance, "app.kubernetes.io/name": body_router_name(instance)}


def model_rewrites_name(pool: str) -> str:
    return f"{pool}-rewrites"


def hardened_security_context() -> dict[str, Any]:
    """Container securityContext for the EPP and the P/D sidecar (checked by policy llmd-epp-hardened)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
