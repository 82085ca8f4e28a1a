"""Prefill and decode model-server pools (vLLM or the bundled simulator).

The manifests are built as plain dicts by pure functions (easy to read, test and validate), then
registered by :class:`ModelServerPool` as a Deployment, or as a LeaderWorkerSet when one replica
spans several nodes (vLLM pipeline parallel over Ray: the leader serves, workers join its Ray head).

Port layout (the cross-team contract): the InferencePool targets 8000 on every serving pod. On P/D
decode pods 8000 is the routing sidecar and vLLM moves to 8200; prefill pods and decode-only pools
run vLLM on 8000 directly.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.k8sobjects import register
from pulumi_llmd.components.platform import PodNetworking
from pulumi_llmd.config.models import Engine, PoolConfig, StackConfig, project_image

Role = Literal["prefill", "decode"]
MODEL_CACHE_PATH = "/model-cache"
DEFAULT_VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.19.1"
SIDECAR_SCRATCH: dict[str, Any] = {"name": "sidecar-tmp", "emptyDir": {"sizeLimit": "64Mi"}}


@dataclass(frozen=True)
class ModelServerPoolArgs:
    config: StackConfig
    role: Role
    pod_networking: PodNetworking
    provider: k8s.Provider
    # Resources the pool must wait for (namespace, token Secret, CRDs, platform operators).
    depends_on: tuple[pulumi.Resource, ...] = ()


def pool_config(config: StackConfig, role: Role) -> PoolConfig:
    return config.prefill if role == "prefill" else config.decode


def has_sidecar(config: StackConfig, role: Role) -> bool:
    return role == "decode" and config.disaggregated


def engine_port(config: StackConfig, role: Role) -> int:
    """Where vLLM (or the simulator) listens in this role's pods."""
    return naming.VLLM_BEHIND_SIDECAR_PORT if has_sidecar(config, role) else naming.MODEL_SERVER_PORT


def pod_labels(config: StackConfig, role: Role, *, serving: bool) -> dict[str, str]:
    labels = {**naming.common_labels(config, "model-server"), naming.ROLE_LABEL: role}
    if serving:
        labels.update(naming.pool_selector(config))
    return labels


def selector_labels(config: StackConfig, role: Role) -> dict[str, str]:
    return {"app.kubernetes.io/instance": config.name, naming.ROLE_LABEL: role}


def model_argument(config: StackConfig) -> str:
    """What vLLM loads: the HF repo id, or the path inside the mounted PVC."""
    location = config.model.uri.split("://", 1)[1]
    if config.model.source == "hf":
        return location
    _claim, _, path = location.partition("/")
    return f"{MODEL_CACHE_PATH}/{path}".rstrip("/")


def vllm_arguments(config: StackConfig, role: Role, *, nixl_backends: tuple[str, ...] = ()) -> list[str]:
    pool = pool_config(config, role)
    args = [
        model_argument(config),
        "--port",
        str(engine_port(config, role)),
        "--served-model-name",
        config.model.name,
        "--tensor-parallel-size",
        str(pool.tensor_parallel),
    ]
    if pool.nodes_per_replica > 1:
        args += [
            "--pipeline-parallel-size",
            str(pool.nodes_per_replica),
            "--distributed-executor-backend",
            "ray",
        ]
    if config.model.max_model_len is not None:
        args += ["--max-model-len", str(config.model.max_model_len)]
    args.append(
        "--enable-prefix-caching" if config.model.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    if config.disaggregated:
        # kv_both on both roles, as llm-d does: the sidecar decides per request who produces the KV.
        transfer: dict[str, Any] = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        if nixl_backends:
            # The platform's fabric decides the transport (e.g. LIBFABRIC on EFA, where UCX has none).
            transfer["kv_connector_extra_config"] = {"backends": list(nixl_backends)}
        args += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]
    args += ["--disable-access-log-for-endpoints", "/health,/metrics,/v1/models"]
    return args + list(pool.extra_args)


def engine_container(
    config: StackConfig, role: Role, networking: PodNetworking, *, leader: bool
) -> dict[str, Any]:
    pool = pool_config(config, role)
    port = engine_port(config, role)
    simulated = config.model.engine is Engine.SIMULATOR
    port_name = "vllm-http" if has_sidecar(config, role) else "http"
    nixl_backends = networking.nixl_backends

    if simulated:
        sim_role = role if config.disaggregated else "both"
        command = ["python", "-m", "simulator"]
        args = ["--host", "0.0.0.0", "--port", str(port), "--model", config.model.name, "--role", sim_role]
    elif pool.nodes_per_replica > 1:
        # Ray head first, then vLLM in the foreground so the container lives as long as the server.
        serve = shlex.join(["vllm", "serve", *vllm_arguments(config, role, nixl_backends=nixl_backends)])
        command = ["/bin/sh", "-c"]
        args = [f"ray start --head --port={naming.RAY_PORT} && exec {serve}"]
    else:
        command = ["vllm", "serve"]
        args = vllm_arguments(config, role, nixl_backends=nixl_backends)

    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(pool.env.items())]
    if not simulated:
        env += model_source_env(config)
    if config.disaggregated:
        env += [
            {"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(naming.NIXL_SIDE_CHANNEL_PORT)},
        ]
        # Keep-alive must outlast the sidecar's pooled idle connections (15 s), to the prefill pods
        # and to the decode pod's own vLLM alike: uvicorn's default 5 s lets it close a connection
        # the sidecar is about to reuse, and on the decode leg that fails the client's request.
        env.append({"name": "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "value": "120"})
    env += [{"name": k, "value": v} for k, v in sorted(networking.env.items()) if k not in pool.env]

    ports = [{"name": port_name, "containerPort": port, "protocol": "TCP"}]
    if config.disaggregated:
        ports.append({"name": "nixl", "containerPort": naming.NIXL_SIDE_CHANNEL_PORT, "protocol": "TCP"})
    if pool.nodes_per_replica > 1 and leader:
        ports.append({"name": "ray", "containerPort": naming.RAY_PORT, "protocol": "TCP"})

    container: dict[str, Any] = {
        "name": "engine",
        "image": pool.image or (project_image("simulator") if simulated else DEFAULT_VLLM_IMAGE),
        "command": command,
        "args": args,
        "env": env,
        "ports": ports,
        "resources": _engine_resources(pool, networking, simulated=simulated),
        "volumeMounts": _engine_mounts(config, networking),
    }
    if leader:
        container.update(_engine_probes(port_name))
    # vLLM keeps its image's user (root, for its caches) but never gains privileges beyond that.
    security: dict[str, Any] = {"allowPrivilegeEscalation": False}
    if networking.capabilities:
        security["capabilities"] = {"add": sorted(networking.capabilities)}
    container["securityContext"] = security
    return container


def ray_worker_container(config: StackConfig, role: Role, networking: PodNetworking) -> dict[str, Any]:
    worker = engine_container(config, role, networking, leader=False)
    worker["command"] = ["/bin/sh", "-c"]
    # LWS injects LWS_LEADER_ADDRESS (the leader pod's stable DNS name) into every pod of a group.
    worker["args"] = [f'ray start --address="$LWS_LEADER_ADDRESS:{naming.RAY_PORT}" --block']
    worker["ports"] = [p for p in worker["ports"] if p["name"] == "nixl"]
    return worker


def sidecar_container(config: StackConfig) -> dict[str, Any]:
    """The P/D routing sidecar, as a native sidecar (init container that keeps running)."""
    sidecar = config.decode.sidecar
    return {
        "name": "routing-sidecar",
        "image": sidecar.image,
        "restartPolicy": "Always",
        "command": ["python", "-m", "sidecar"],
        "args": [
            "--port",
            str(naming.MODEL_SERVER_PORT),
            "--model-server-port",
            str(naming.VLLM_BEHIND_SIDECAR_PORT),
            "--kv-connector",
            sidecar.kv_connector,
        ],
        "ports": [{"name": "http", "containerPort": naming.MODEL_SERVER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": naming.MODEL_SERVER_PORT}, "periodSeconds": 5},
        "resources": {
            "requests": {"cpu": sidecar.resources.cpu, "memory": sidecar.resources.memory},
            "limits": {"memory": sidecar.resources.memory},
        },
        "securityContext": naming.hardened_security_context(),
        # The root filesystem is read-only; /tmp (HOME in the image) stays writable.
        "volumeMounts": [{"name": SIDECAR_SCRATCH["name"], "mountPath": "/tmp"}],
    }


def model_source_env(config: StackConfig) -> list[dict[str, Any]]:
    if config.model.source != "hf":
        return []
    return [
        {"name": "HF_HOME", "value": MODEL_CACHE_PATH},
        {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": naming.hf_token_secret_name(config), "key": "HF_TOKEN"}},
        },
    ]


def pod_spec(
    config: StackConfig, role: Role, networking: PodNetworking, *, leader: bool = True
) -> dict[str, Any]:
    pool = pool_config(config, role)
    simulated = config.model.engine is Engine.SIMULATOR
    engine = (
        engine_container(config, role, networking, leader=True)
        if leader
        else ray_worker_container(config, role, networking)
    )
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # model servers never talk to the Kubernetes API
        "terminationGracePeriodSeconds": 120,
        "containers": [engine],
        "volumes": _volumes(config, pool, networking, simulated=simulated),
    }
    if has_sidecar(config, role) and leader:
        spec["initContainers"] = [sidecar_container(config)]
        spec["volumes"].append(dict(SIDECAR_SCRATCH))
    if networking.node_selector:
        spec["nodeSelector"] = dict(sorted(networking.node_selector.items()))
    if networking.tolerations:
        spec["tolerations"] = list(networking.tolerations)
    return spec


def pod_template(
    config: StackConfig, role: Role, networking: PodNetworking, *, leader: bool = True
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"labels": pod_labels(config, role, serving=leader)}
    if networking.annotations:
        metadata["annotations"] = dict(sorted(networking.annotations.items()))
    return {"metadata": metadata, "spec": pod_spec(config, role, networking, leader=leader)}


def pool_manifest(config: StackConfig, role: Role, networking: PodNetworking) -> dict[str, Any]:
    """The Deployment (one node per replica) or LeaderWorkerSet (several) of one role."""
    pool = pool_config(config, role)
    name = naming.model_server_name(config, role)
    metadata = {
        "name": name,
        "namespace": config.namespace,
        "labels": pod_labels(config, role, serving=False),
    }
    if pool.nodes_per_replica == 1:
        template = pod_template(config, role, networking)
        template["metadata"]["labels"].update(selector_labels(config, role))
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": pool.replicas,
                "selector": {"matchLabels": selector_labels(config, role)},
                # A model server takes minutes to load; never drop below the configured capacity.
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": template,
            },
        }
    leader = pod_template(config, role, networking, leader=True)
    worker = pod_template(config, role, networking, leader=False)
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": metadata,
        "spec": {
            "replicas": pool.replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": pool.nodes_per_replica,
                # One lost pod breaks the Ray group: restart the whole group together.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def disruption_budget_manifest(config: StackConfig, role: Role) -> dict[str, Any]:
    """Node drains take one model-server pod at a time: capacity (and warm KV caches) go down
    gradually instead of all at once."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": naming.model_server_name(config, role),
            "namespace": config.namespace,
            "labels": pod_labels(config, role, serving=False),
        },
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(config, role)}},
    }


class ModelServerPool(pulumi.ComponentResource):
    """One role's model servers (Deployment or LeaderWorkerSet) and their disruption budget."""

    def __init__(
        self, name: str, args: ModelServerPoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("llmd:index:ModelServerPool", name, None, opts)
        manifest = pool_manifest(args.config, args.role, args.pod_networking)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        self.workload = register(manifest, child)
        self.disruption_budget = register(disruption_budget_manifest(args.config, args.role), child)
        self.kind = manifest["kind"]
        self.workload_name = manifest["metadata"]["name"]
        self.register_outputs({"kind": self.kind, "name": self.workload_name})


def _engine_probes(port_name: str) -> dict[str, Any]:
    """Startup allows a long model load (up to 60 min); after that /health and /v1/models must answer."""
    return {
        "startupProbe": {
            "httpGet": {"path": "/v1/models", "port": port_name},
            "initialDelaySeconds": 15,
            "periodSeconds": 30,
            "timeoutSeconds": 5,
            "failureThreshold": 120,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": port_name},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/v1/models", "port": port_name},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
    }


def _engine_resources(pool: PoolConfig, networking: PodNetworking, *, simulated: bool) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": pool.resources.cpu, "memory": pool.resources.memory}
    limits: dict[str, str] = {"memory": pool.resources.memory}
    accelerators = pool.accelerators_per_pod()
    if accelerators > 0:
        requests[pool.accelerator.resource] = str(accelerators)
        limits[pool.accelerator.resource] = str(accelerators)
    if not simulated:
        # Extended resources (RDMA/EFA) must be requested and limited equally.
        for resource, count in sorted(networking.resources.items()):
            requests[resource] = count
            limits[resource] = count
    return {"requests": requests, "limits": limits}


def _engine_mounts(config: StackConfig, networking: PodNetworking) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": "shm", "mountPath": "/dev/shm"}]
    if config.model.engine is Engine.VLLM:
        mount: dict[str, Any] = {"name": "model-cache", "mountPath": MODEL_CACHE_PATH}
        if config.model.source == "pvc":
            mount["readOnly"] = True
        mounts.append(mount)
    return mounts + list(networking.volume_mounts)


def _volumes(
    config: StackConfig, pool: PoolConfig, networking: PodNetworking, *, simulated: bool
) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": pool.shm_size}}
    ]
    if not simulated:
        if config.model.source == "hf":
            volumes.append({"name": "model-cache", "emptyDir": {"sizeLimit": config.model.cache_size}})
        else:
            claim = config.model.uri.split("://", 1)[1].split("/", 1)[0]
            volumes.append(
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            )
    return volumes + list(networking.volumes)
