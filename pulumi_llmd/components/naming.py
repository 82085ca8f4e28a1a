"""Names, labels and ports every component agrees on (the cross-team label/port contract)."""

from __future__ import annotations

from typing import Any

from pulumi_llmd.config.models import StackConfig

# Pool selector and role labels (llm-d conventions; the EPP's prefill/decode filters read the role).
SERVING_LABEL = "llm-d.ai/inference-serving"
MODEL_LABEL = "llm-d.ai/model"
ROLE_LABEL = "llm-d.ai/role"
# Gateway API's recommended label on in-cluster gateway proxy pods (kgateway sets it).
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

# The EPP image's processes (EPP, P/D sidecar) need no root, no writable image, no extra syscalls.
# 65532 is the conventional "nonroot" user of distroless-style images.
NON_ROOT_UID = 65532

EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090


def common_labels(config: StackConfig, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "llmd",
        "app.kubernetes.io/instance": config.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def pool_selector(config: StackConfig) -> dict[str, str]:
    """The InferencePool's matchLabels: every serving model-server pod (both roles) carries these."""
    return {SERVING_LABEL: "true", MODEL_LABEL: config.model.label_value}


def pool_name(config: StackConfig) -> str:
    return config.name


def epp_name(config: StackConfig) -> str:
    return f"{config.name}-epp"


def gateway_name(config: StackConfig) -> str:
    return f"{config.name}-gateway"


def model_server_name(config: StackConfig, role: str) -> str:
    return f"{config.name}-{role}"


def hf_token_secret_name(config: StackConfig) -> str:
    return f"{config.name}-hf-token"


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
