"""Known-good manifests for the policy tests; each test breaks one thing in a copy."""

from __future__ import annotations

import copy
from typing import Any


def model_server() -> dict[str, Any]:
    """A P/D decode Deployment the way the stack should render it: RDMA caps, limits, secret ref."""
    vllm = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.11.0",
        "args": ["--model", "Qwen/Qwen3-0.6B", "--port", "8200"],
        "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "llmd-hf-token", "key": "token"}}},
            {"name": "UCX_TLS", "value": "rc,sm,cuda_ipc"},
            {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": "5600"},
        ],
        "resources": {
            "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1", "rdma/roce_gdr": "1"},
            "limits": {"memory": "64Gi", "nvidia.com/gpu": "1", "rdma/roce_gdr": "1"},
        },
        "securityContext": {"capabilities": {"add": ["IPC_LOCK", "SYS_RAWIO"]}},
    }
    sidecar = {
        "name": "routing-sidecar",
        "image": "ghcr.io/example/pulumi-llmd-epp@sha256:" + "a" * 64,
        "command": ["python", "-m", "sidecar"],
        "args": ["--port", "8000", "--model-server-port", "8200"],
        "restartPolicy": "Always",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llmd-decode", "namespace": "llm-d"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"llm-d.ai/role": "decode"}},
            "template": {
                "metadata": {
                    "labels": {
                        "llm-d.ai/inference-serving": "true",
                        "llm-d.ai/model": "qwen3-0-6b",
                        "llm-d.ai/role": "decode",
                        "app.kubernetes.io/component": "model-server",
                    }
                },
                "spec": {"initContainers": [sidecar], "containers": [vllm]},
            },
        },
    }


def epp() -> dict[str, Any]:
    container = {
        "name": "epp",
        "image": "ghcr.io/example/pulumi-llmd-epp:0.1.0",
        "command": ["python", "-m", "epp"],
        "args": ["--pool-name", "llmd", "--pool-namespace", "llm-d"],
        "env": [{"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llmd-epp", "namespace": "llm-d"},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "llmd-epp"}},
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/name": "llmd-epp",
                        "app.kubernetes.io/component": "endpoint-picker",
                    }
                },
                "spec": {"containers": [container]},
            },
        },
    }


def leader_worker_set() -> dict[str, Any]:
    pod = model_server()["spec"]["template"]
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "llmd-decode", "namespace": "llm-d"},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "leaderTemplate": copy.deepcopy(pod),
                "workerTemplate": copy.deepcopy(pod),
            },
        },
    }


def container(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """The named container (or init container) of a Deployment, for mutation in a copy."""
    spec = manifest["spec"]["template"]["spec"]
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        if c["name"] == name:
            return c
    raise KeyError(name)
