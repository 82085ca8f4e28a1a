"""The body router of a multi-model stack: a Deployment of ``python -m bbr`` and how the Gateway calls it.

The Gateway can match headers, not bodies, and an OpenAI request names its model in the body. The
router is an ext_proc server the Gateway calls before it picks a route: it reads the body's
``model``, looks it up in the routing table this component renders (every base model with its
adapters and rewrite names) and sets ``X-Gateway-Base-Model-Name`` to the base model, which the
HTTPRoute's per-model rules match (:mod:`.gateway`); an unknown model gets a 404 from the router.
This is what llm-d's guides/multi-model-routing does with llm-d-inference-payload-processor (the
successor of GIE's body-based router), with the adapter table rendered by the stack instead of read
from labelled ConfigMaps.

How each Gateway provider calls it (``llmd:gateway.provider``; kgateway 2.1 is refused, see
:func:`pulumi_llmd.config.rules.body_router_provider`):

* ``istio``: an EnvoyFilter inserting the ext_proc filter first in the Gateway's HTTP filters, and a
  DestinationRule dialling the router's TLS without verification, as the payload processor's chart
  does (config/charts/payload-processor/templates/istio.yaml);
* ``gke``: a GCPRoutingExtension on the Gateway (same chart, templates/gke.yaml) and a
  HealthCheckPolicy for the router's gRPC health port;
* ``agentgateway``: an AgentgatewayPolicy with a PreRouting ``extProc`` (agentgateway.dev/v1alpha1,
  ``traffic.phase: PreRouting`` exists to influence routing), and one on the router's Service for
  TLS without verification.

Failure modes match the EPP's: FailClose (default) answers the client with an error while the router
is down; FailOpen lets the request through without the header, and the route's last rule sends it to
the first model's pool (whose EPP answers 404 for other models' names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pulumi
import yaml

from pulumi_llmd.components import naming
from pulumi_llmd.components.inputs import BodyRouterArgs
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.netpol import gateway_pods
from pulumi_llmd.config.gateways import GatewayProvider
from pulumi_llmd.config.inputs import model_args
from pulumi_llmd.config.models import FailureMode

CONFIG_DIR = "/config"
CONFIG_FILE = "routes.yaml"
TLS_DIR = "/etc/bbr/tls"
CONFIG_CHECKSUM_ANNOTATION = "llm-d.ai/body-router-config-sha256"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc.body-router"

Router = BodyRouterArgs


def router_labels(router: Router) -> dict[str, str]:
    return {**naming.common_labels(router.instance, "body-router"), "app.kubernetes.io/name": router.name}


def router_selector(router: Router) -> dict[str, str]:
    return naming.body_router_selector(router.instance)


def routing_table(router: Router) -> str:
    """The router's ``--config-file``: each base model (the header value its route matches) with every
    name that reaches it, in config order."""
    document = {
        "header": naming.BASE_MODEL_HEADER,
        "modelHeader": naming.MODEL_HEADER,
        "models": [{"model": model.model, "names": list(model.names)} for model in router.models],
    }
    return yaml.safe_dump(document, sort_keys=False)


def config_map_manifest(router: Router) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(router),
        "data": {CONFIG_FILE: routing_table(router)},
    }


def router_arguments(router: Router) -> list[str]:
    settings = router.settings
    args = [
        "--config-file",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--grpc-port",
        str(naming.BODY_ROUTER_GRPC_PORT),
        "--grpc-health-port",
        str(naming.BODY_ROUTER_HEALTH_PORT),
        "--metrics-port",
        str(naming.BODY_ROUTER_METRICS_PORT),
        f"--secure-serving={'true' if settings.secure_serving else 'false'}",
    ]
    if settings.secure_serving and settings.tls_secret_name is not None:
        args += ["--cert-path", TLS_DIR, "--enable-cert-reload"]
    return args


def deployment_manifest(router: Router) -> dict[str, Any]:
    settings = router.settings
    health = naming.BODY_ROUTER_HEALTH_PORT
    container: dict[str, Any] = {
        "name": "body-router",
        "image": settings.image,
        "command": ["python", "-m", "bbr"],
        "args": router_arguments(router),
        "ports": [
            {"name": "grpc", "containerPort": naming.BODY_ROUTER_GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": health, "protocol": "TCP"},
            {"name": "metrics", "containerPort": naming.BODY_ROUTER_METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "grpc": {"port": health, "service": "liveness"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        "readinessProbe": {"grpc": {"port": health, "service": "readiness"}, "periodSeconds": 2},
        "resources": {
            "requests": {"cpu": settings.resources.cpu, "memory": settings.resources.memory},
            "limits": {"memory": settings.resources.memory},
        },
        "securityContext": naming.hardened_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": router.name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if settings.secure_serving and settings.tls_secret_name is not None:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": settings.tls_secret_name}})
    checksum = hashlib.sha256(routing_table(router).encode()).hexdigest()
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(router),
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": router_selector(router)},
            # Stateless: surge a new pod before an old one goes, so the Gateway always has a router.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": {**router_labels(router), **router_selector(router)},
                    # The router reads its table once: a changed table rolls the pods.
                    "annotations": {CONFIG_CHECKSUM_ANNOTATION: checksum},
                },
                "spec": {
                    "automountServiceAccountToken": False,  # it never talks to the Kubernetes API
                    # Longer than the router's drain, so open ext_proc streams finish on shutdown.
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service_manifest(router: Router) -> dict[str, Any]:
    # HTTP/2 with or without TLS, as for the EPP (naming.EXT_PROC_APP_PROTOCOL: "https" here made
    # Istio dial the router over HTTP/1.1). GKE's load balancer speaks HTTP/2 (over TLS) to the
    # extension by the appProtocol HTTP2, which the payload processor's chart sets on every provider.
    grpc_protocol = "HTTP2" if router.provider == "gke" else naming.EXT_PROC_APP_PROTOCOL
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(router),
        "spec": {
            "type": "ClusterIP",
            "selector": router_selector(router),
            "ports": [
                {
                    "name": "grpc-ext-proc",
                    "port": naming.BODY_ROUTER_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": grpc_protocol,
                },
                {
                    "name": "grpc-health",
                    "port": naming.BODY_ROUTER_HEALTH_PORT,
                    "targetPort": "grpc-health",
                    "protocol": "TCP",
                },
                {
                    "name": "http-metrics",
                    "port": naming.BODY_ROUTER_METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def _gateway_ref(router: Router) -> dict[str, str]:
    return {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": router.gateway_name}


def istio_manifests(router: Router) -> list[dict[str, Any]]:
    """An ext_proc filter first in the Gateway's chain (before the router filter picks a route), in
    FULL_DUPLEX_STREAMED body mode like the EPP; only the request is sent (the router does nothing
    with responses)."""
    service_host = f"{router.name}.{router.namespace}.svc.cluster.local"
    filter_config = {
        "name": EXT_PROC_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "failure_mode_allow": router.settings.failure_mode is FailureMode.FAIL_OPEN,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "FULL_DUPLEX_STREAMED",
                "request_trailer_mode": "SEND",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            "grpc_service": {
                "envoy_grpc": {"cluster_name": f"outbound|{naming.BODY_ROUTER_GRPC_PORT}||{service_host}"}
            },
        },
    }
    manifests: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": _metadata(router),
            "spec": {
                "targetRefs": [_gateway_ref(router)],
                "configPatches": [
                    {
                        "applyTo": "HTTP_FILTER",
                        "match": {
                            "context": "GATEWAY",
                            "listener": {
                                "filterChain": {
                                    "filter": {"name": "envoy.filters.network.http_connection_manager"}
                                }
                            },
                        },
                        "patch": {"operation": "INSERT_FIRST", "value": filter_config},
                    }
                ],
            },
        }
    ]
    if router.settings.secure_serving:
        manifests.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": _metadata(router),
                "spec": {
                    "host": service_host,
                    "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": True}},
                },
            }
        )
    return manifests


def gke_manifests(router: Router) -> list[dict[str, Any]]:
    extension: dict[str, Any] = {
        "name": "body-router",
        "authority": f"{router.name}.{router.namespace}.svc",
        "timeout": "1s",
        "supportedEvents": ["RequestHeaders", "RequestBody", "RequestTrailers"],
        "requestBodySendMode": "FullDuplexStreamed",
        "backendRef": {
            "group": "",
            "kind": "Service",
            "name": router.name,
            "port": naming.BODY_ROUTER_GRPC_PORT,
        },
    }
    if router.settings.failure_mode is FailureMode.FAIL_OPEN:
        # Service Extensions' failOpen: on a failed or timed-out call the request continues.
        extension["failOpen"] = True
    return [
        {
            "apiVersion": "networking.gke.io/v1",
            "kind": "GCPRoutingExtension",
            "metadata": _metadata(router),
            "spec": {
                "targetRefs": [_gateway_ref(router)],
                "extensionChains": [{"name": "body-router", "extensions": [extension]}],
            },
        },
        {
            "apiVersion": "networking.gke.io/v1",
            "kind": "HealthCheckPolicy",
            "metadata": _metadata(router),
            "spec": {
                "default": {
                    "config": {
                        "type": "GRPC",
                        "grpcHealthCheck": {
                            "portSpecification": "USE_FIXED_PORT",
                            "port": naming.BODY_ROUTER_HEALTH_PORT,
                            "grpcServiceName": "readiness",
                        },
                    }
                },
                "targetRef": {"group": "", "kind": "Service", "name": router.name},
            },
        },
    ]


def agentgateway_manifests(router: Router) -> list[dict[str, Any]]:
    failure = "FailOpen" if router.settings.failure_mode is FailureMode.FAIL_OPEN else "FailClosed"
    manifests: list[dict[str, Any]] = [
        {
            "apiVersion": "agentgateway.dev/v1alpha1",
            "kind": "AgentgatewayPolicy",
            "metadata": _metadata(router),
            "spec": {
                "targetRefs": [_gateway_ref(router)],
                "traffic": {
                    "phase": "PreRouting",
                    "extProc": {
                        "backendRef": {
                            "group": "",
                            "kind": "Service",
                            "name": router.name,
                            "port": naming.BODY_ROUTER_GRPC_PORT,
                        },
                        "failureMode": failure,
                        "processingOptions": {
                            "requestHeaderMode": "Send",
                            "requestBodyMode": "FullDuplexStreamed",
                            "requestTrailerMode": "Send",
                            "responseHeaderMode": "Skip",
                            "responseBodyMode": "None",
                            "responseTrailerMode": "Skip",
                        },
                    },
                },
            },
        }
    ]
    if router.settings.secure_serving:
        metadata = _metadata(router)
        metadata["name"] = f"{router.name}-tls"
        manifests.append(
            {
                "apiVersion": "agentgateway.dev/v1alpha1",
                "kind": "AgentgatewayPolicy",
                "metadata": metadata,
                "spec": {
                    "targetRefs": [{"group": "", "kind": "Service", "name": router.name}],
                    "backend": {"tls": {"insecureSkipVerify": "All", "alpnProtocols": ["h2"]}},
                },
            }
        )
    return manifests


def attachment_manifests(router: Router) -> list[dict[str, Any]]:
    if router.provider == "istio":
        return istio_manifests(router)
    if router.provider == "gke":
        return gke_manifests(router)
    return agentgateway_manifests(router)


def network_policy_manifest(router: Router) -> dict[str, Any] | None:
    """Only the Gateway's proxies reach the router's ext_proc port (and allowed namespaces its metrics)."""
    if router.network_policy is None:
        return None
    rules: list[dict[str, Any]] = [
        {
            "from": [gateway_pods(GatewayProvider(router.provider), router.instance)],
            "ports": [{"protocol": "TCP", "port": naming.BODY_ROUTER_GRPC_PORT}],
        }
    ]
    if labels := router.network_policy.metrics_namespace_labels:
        rules.append(
            {
                "from": [{"namespaceSelector": {"matchLabels": dict(labels)}}],
                "ports": [{"protocol": "TCP", "port": naming.BODY_ROUTER_METRICS_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{router.name}-ingress",
            "namespace": router.namespace,
            "labels": naming.common_labels(router.instance, "network-policy"),
        },
        "spec": {
            "podSelector": {"matchLabels": router_selector(router)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def disruption_budget_manifest(router: Router) -> dict[str, Any] | None:
    """Voluntary evictions (node drains, cluster upgrades) take one router replica at a time, as the
    EPP's budget does for its replicas (picker.disruption_budget_manifest): every request of a
    multi-model stack passes the router, and with failureMode FailClose (the default) a drain that
    evicted all replicas at once would fail them all. One replica has nothing to keep: no budget."""
    if router.settings.replicas < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(router),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": router_selector(router)}},
    }


def body_router_manifests(router: Router) -> list[dict[str, Any]]:
    manifests = [config_map_manifest(router), deployment_manifest(router), service_manifest(router)]
    if (budget := disruption_budget_manifest(router)) is not None:
        manifests.append(budget)
    manifests += attachment_manifests(router)
    if (policy := network_policy_manifest(router)) is not None:
        manifests.append(policy)
    return manifests


class BodyRouter(pulumi.ComponentResource):
    """The body router of a multi-model stack (``<instance>-body-router``): its routing table
    (ConfigMap), Deployment and Service (with a PodDisruptionBudget at 2+ replicas), the provider's
    objects that make the Gateway call it before routing, and its NetworkPolicy.

    Args (:class:`~pulumi_llmd.components.inputs.BodyRouterArgs`, Python only): ``instance``,
    ``namespace``, the ``provider`` (istio, gke or agentgateway), the routing table ``models`` (each
    base model with the names that reach it), the ``bodyRouter`` section as ``settings``, and the
    ``networkPolicy`` section when policies are on. Provider and ``depends_on`` come through ``opts``.
    """

    def __init__(
        self, name: str, args: BodyRouterArgs | Mapping[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        args = model_args(BodyRouterArgs, args, component="BodyRouter")
        body_router_manifests(args)  # every manifest builds (or refuses) before anything registers
        super().__init__("llmd:index:BodyRouter", name, None, opts)
        child = child_options(self, opts)
        config = register(config_map_manifest(args), child)
        self.deployment = register(deployment_manifest(args), child_options(self, opts, config))
        self.service = register(service_manifest(args), child)
        if (budget := disruption_budget_manifest(args)) is not None:
            register(budget, child)
        # The Gateway starts calling the router once these exist: after its Service.
        self.attachments = [
            register(manifest, child_options(self, opts, self.service))
            for manifest in attachment_manifests(args)
        ]
        if (policy := network_policy_manifest(args)) is not None:
            register(policy, child)
        self.service_name = args.name
        self.register_outputs({"serviceName": self.service_name})


def _metadata(router: Router) -> dict[str, Any]:
    return {"name": router.name, "namespace": router.namespace, "labels": router_labels(router)}
