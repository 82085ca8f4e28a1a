"""The endpoint picker: RBAC, config, Deployment, Service and the InferencePool that points at it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.k8sobjects import register
from pulumi_llmd.components.pickerconfig import render_epp_config
from pulumi_llmd.config.models import StackConfig

CONFIG_DIR = "/config"
CONFIG_FILE = "epp-config.yaml"
TLS_DIR = "/etc/epp/tls"
CONFIG_CHECKSUM_ANNOTATION = "llm-d.ai/epp-config-sha256"


@dataclass(frozen=True)
class EndpointPickerArgs:
    config: StackConfig
    provider: k8s.Provider
    # The namespace, and the InferencePool CRD install the pool object needs.
    depends_on: tuple[pulumi.Resource, ...] = ()


def epp_labels(config: StackConfig) -> dict[str, str]:
    return {
        **naming.common_labels(config, "endpoint-picker"),
        "app.kubernetes.io/name": naming.epp_name(config),
    }


def epp_selector(config: StackConfig) -> dict[str, str]:
    return {"app.kubernetes.io/instance": config.name, "app.kubernetes.io/name": naming.epp_name(config)}


# InferenceObjective (request priorities) and InferenceModelRewrite (model-name rules) live in
# llm-d.ai now and in the x-k8s group up to GIE v1.5; the EPP watches both groups for both kinds.
OBJECTIVE_GROUPS = ["llm-d.ai", "inference.networking.x-k8s.io"]


def role_rules(config: StackConfig) -> list[dict[str, Any]]:
    """Exactly what the EPP reads, read-only: pods (endpoints), its InferencePool, the
    InferenceObjectives and the InferenceModelRewrites; leases and events only with leader election."""
    read = ["get", "list", "watch"]
    rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": read},
        {"apiGroups": [naming.INFERENCE_POOL_GROUP], "resources": ["inferencepools"], "verbs": read},
        {"apiGroups": OBJECTIVE_GROUPS, "resources": ["inferenceobjectives"], "verbs": read},
        {"apiGroups": OBJECTIVE_GROUPS, "resources": ["inferencemodelrewrites"], "verbs": read},
    ]
    if config.epp.leader_election:
        rules += [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        ]
    return rules


def epp_arguments(config: StackConfig) -> list[str]:
    epp = config.epp
    args = [
        "--pool-name",
        naming.pool_name(config),
        "--pool-namespace",
        config.namespace,
        "--pool-group",
        naming.INFERENCE_POOL_GROUP,
        "--config-file",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--grpc-port",
        str(naming.EPP_GRPC_PORT),
        "--grpc-health-port",
        str(naming.EPP_HEALTH_PORT),
        "--metrics-port",
        str(naming.EPP_METRICS_PORT),
        f"--secure-serving={'true' if epp.secure_serving else 'false'}",
        "--refresh-metrics-interval",
        _seconds(epp.refresh_metrics_interval),
        "--metrics-staleness-threshold",
        _seconds(epp.metrics_staleness_threshold),
        "--served-models",
        config.model.name,
    ]
    if epp.secure_serving:
        args += ["--cert-path", TLS_DIR]
    if epp.leader_election:
        args.append("--ha-enable-leader-election")
    return args


def config_checksum(config: StackConfig) -> str:
    return hashlib.sha256(render_epp_config(config).encode()).hexdigest()


def config_map_manifest(config: StackConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config),
        "data": {CONFIG_FILE: render_epp_config(config)},
    }


def deployment_manifest(config: StackConfig) -> dict[str, Any]:
    name = naming.epp_name(config)
    epp = config.epp
    health = naming.EPP_HEALTH_PORT
    container: dict[str, Any] = {
        "name": "epp",
        "image": epp.image,
        "command": ["python", "-m", "epp"],
        "args": epp_arguments(config),
        "env": [
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [
            {"name": "grpc", "containerPort": naming.EPP_GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": health, "protocol": "TCP"},
            {"name": "metrics", "containerPort": naming.EPP_METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "grpc": {"port": health, "service": "liveness"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        "readinessProbe": {"grpc": {"port": health, "service": "readiness"}, "periodSeconds": 2},
        "resources": {
            "requests": {"cpu": epp.resources.cpu, "memory": epp.resources.memory},
            "limits": {"memory": epp.resources.memory},
        },
        "securityContext": naming.hardened_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            # The root filesystem is read-only; /tmp (HOME in the image) stays writable.
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if epp.secure_serving and epp.tls_secret_name is not None:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": epp.tls_secret_name}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(config),
        "spec": {
            "replicas": epp.replicas,
            # Never run two differently configured pickers side by side during a rollout.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": epp_selector(config)},
            "template": {
                "metadata": {
                    "labels": {**epp_labels(config), **epp_selector(config)},
                    # The EPP reads its config once: a changed ConfigMap must roll the pods.
                    "annotations": {CONFIG_CHECKSUM_ANNOTATION: config_checksum(config)},
                },
                "spec": {
                    "serviceAccountName": name,
                    # Longer than the EPP's 30 s drain so in-flight streams finish on shutdown.
                    "terminationGracePeriodSeconds": 130,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service_manifest(config: StackConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(config),
        "spec": {
            "type": "ClusterIP",
            "selector": epp_selector(config),
            "ports": [
                {
                    "name": "grpc-ext-proc",
                    "port": naming.EPP_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    # gRPC: cleartext HTTP/2 unless the EPP serves TLS.
                    "appProtocol": "https" if config.epp.secure_serving else "kubernetes.io/h2c",
                },
                {
                    "name": "http-metrics",
                    "port": naming.EPP_METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def inference_pool_manifest(config: StackConfig) -> dict[str, Any]:
    return {
        "apiVersion": f"{naming.INFERENCE_POOL_GROUP}/v1",
        "kind": "InferencePool",
        "metadata": {
            "name": naming.pool_name(config),
            "namespace": config.namespace,
            "labels": naming.common_labels(config, "inference-pool"),
        },
        "spec": {
            "selector": {"matchLabels": naming.pool_selector(config)},
            "targetPorts": [{"number": naming.MODEL_SERVER_PORT}],
            "appProtocol": "http",
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": naming.epp_name(config),
                "port": {"number": naming.EPP_GRPC_PORT},
                "failureMode": config.epp.failure_mode.value,
            },
        },
    }


def service_account_manifest(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(config)}


def role_manifest(config: StackConfig) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(config),
        "rules": role_rules(config),
    }


def role_binding_manifest(config: StackConfig) -> dict[str, Any]:
    name = naming.epp_name(config)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(config),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": config.namespace}],
    }


class EndpointPicker(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: EndpointPickerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("llmd:index:EndpointPicker", name, None, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))

        def after(*resources: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=list(resources)))

        account = register(service_account_manifest(config), child)
        role = register(role_manifest(config), child)
        binding = register(role_binding_manifest(config), after(account, role))
        settings = register(config_map_manifest(config), child)
        self.deployment = register(deployment_manifest(config), after(binding, settings))
        self.service = register(service_manifest(config), child)
        # The pool names the Service as its picker; create it once the Service exists.
        self.pool = register(inference_pool_manifest(config), after(self.service))
        self.pool_name = naming.pool_name(config)
        self.register_outputs({"pool_name": self.pool_name, "service_name": naming.epp_name(config)})


def _metadata(config: StackConfig) -> dict[str, Any]:
    return {"name": naming.epp_name(config), "namespace": config.namespace, "labels": epp_labels(config)}


def _seconds(value: float) -> str:
    return f"{value:g}"
