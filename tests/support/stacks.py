"""Shared helpers: render stacks (once per session; set_mocks is process-global) and locate shared/."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from render.engine import RenderResult, render_registrations, run_program
from tests.support.nv_ipam_schema import IP_POOL
from tests.support.paths import SHARED

SHARED = SHARED
CRDS = SHARED / "crds"
EXAMPLE_STACKS = ("kind", "onprem")

SIM_POOL = {"accelerator": {"count": 0}, "resources": {"cpu": "100m", "memory": "128Mi"}, "shmSize": "64Mi"}


def kind_config(**overrides: Any) -> dict[str, Any]:
    """A small valid kind config (camelCase keys without the llmd: prefix) to vary in tests."""
    config: dict[str, Any] = {
        "platform": "kind",
        "name": "t",
        "model": {"name": "tiny", "uri": "hf://org/tiny", "engine": "simulator"},
        "prefill": dict(SIM_POOL),
        "decode": dict(SIM_POOL),
    }
    config.update(overrides)
    return config


def model_server_spec(config: Any, role: Any, networking: Any = None) -> Any:
    """The validated ModelServerPool inputs LlmdStack derives for one role of a stack config."""
    from pulumi_llmd.components.inputs import ModelServerPoolInputs
    from pulumi_llmd.components.stack import llmd_stack_args, model_server_pool_args, parse_llmd_stack_args

    args = llmd_stack_args(config, pod_networking=networking, hf_token="hf_placeholder")
    stack, _token = parse_llmd_stack_args(args)
    return ModelServerPoolInputs.model_validate(model_server_pool_args(stack, role))


def render_config(
    config: dict[str, Any], secrets: dict[str, str] | None = None, stack: str = "test"
) -> RenderResult:
    """Run the real program under mocks with this config, as Pulumi would hand it over."""
    values = {f"llmd:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    secret_keys = []
    for key, value in (secrets or {}).items():
        values[f"llmd:{key}"] = value
        secret_keys.append(f"llmd:{key}")
    registrations, unanswered = run_program(stack, values, secret_keys)
    return render_registrations(stack, registrations, unanswered)


# Custom resource kinds -> the CRD file (under shared/crds) that defines them.
CRD_FILES = {
    (
        "gateway.networking.k8s.io",
        "Gateway",
    ): "gateway-api-v1.6.1-standard/gateway.networking.k8s.io_gateways.yaml",
    (
        "gateway.networking.k8s.io",
        "HTTPRoute",
    ): "gateway-api-v1.6.1-standard/gateway.networking.k8s.io_httproutes.yaml",
    (
        "inference.networking.k8s.io",
        "InferencePool",
    ): "gie-v1.6.0-inference.networking.k8s.io_inferencepools.yaml",
    (
        "leaderworkerset.x-k8s.io",
        "LeaderWorkerSet",
    ): "lws-v0.10.0-leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    (
        "k8s.cni.cncf.io",
        "NetworkAttachmentDefinition",
    ): "network-attachment-definition-client-v1.7.7-networks-crd.yaml",
    (
        "monitoring.coreos.com",
        "PodMonitor",
    ): "prometheus-operator-v0.93.0/monitoring.coreos.com_podmonitors.yaml",
    (
        "monitoring.coreos.com",
        "ServiceMonitor",
    ): "prometheus-operator-v0.93.0/monitoring.coreos.com_servicemonitors.yaml",
    (
        "monitoring.coreos.com",
        "PrometheusRule",
    ): "prometheus-operator-v0.93.0/monitoring.coreos.com_prometheusrules.yaml",
    ("keda.sh", "ScaledObject"): "keda-v2.20.2/keda.sh_scaledobjects.yaml",
    ("llm-d.ai", "InferenceObjective"): "llm-d-router-v0.10.0-llm-d.ai_inferenceobjectives.yaml",
    ("llm-d.ai", "InferenceModelRewrite"): "llm-d-router-v0.10.0-llm-d.ai_inferencemodelrewrites.yaml",
    (
        "agentgateway.dev",
        "AgentgatewayPolicy",
    ): "agentgateway-v1.4.1/agentgateway.dev_agentgatewaypolicies.yaml",
    ("mellanox.com", "NicClusterPolicy"): "network-operator-v26.4.1/mellanox.com_nicclusterpolicies.yaml",
    ("networking.istio.io", "DestinationRule"): "istio-1.30.3/networking.istio.io_destinationrules.yaml",
    (
        "networking.gke.io",
        "HealthCheckPolicy",
    ): "gke-gateway-api-v1.4.0/networking.gke.io_healthcheckpolicies.yaml",
    (
        "networking.gke.io",
        "GCPBackendPolicy",
    ): "gke-gateway-api-v1.4.0/networking.gke.io_gcpbackendpolicies.yaml",
}
# Kinds the stack renders whose CRD is not among ../shared/crds (checked by shape in their tests):
# Istio's EnvoyFilter and GKE's GCPRoutingExtension (the body router's attachment on those gateways).
UNVALIDATED_KINDS = {("networking.istio.io", "EnvoyFilter"), ("networking.gke.io", "GCPRoutingExtension")}
# Custom kinds whose CRD is not published as a file here: a schema stated in tests/support.
OWN_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {("nv-ipam.nvidia.com", "IPPool"): IP_POOL}
# Gateway API releases whose CRDs are in ../shared/crds. Upstream CRD files are not copied into this
# repository, so Gateways and HTTPRoutes for a provider pinned to an older release (kgateway 2.1:
# v1.4.1, Istio 1.30: v1.5.1) are validated against the newest release available here.
GATEWAY_API_CRDS = {"v1.6.1": CRDS / "gateway-api-v1.6.1-standard"}
NEWEST_GATEWAY_API = "v1.6.1"
CORE_GROUPS = {"", "apps", "rbac.authorization.k8s.io", "networking.k8s.io", "batch", "policy", "autoscaling"}


def api_group(manifest: dict[str, Any]) -> str:
    api_version = str(manifest["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def is_core(manifest: dict[str, Any]) -> bool:
    return api_group(manifest) in CORE_GROUPS


def validate_core(manifest: dict[str, Any], kubernetes_version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifest, f"{kubernetes_version}.0", strict=True)


def crd_schema(manifest: dict[str, Any], gateway_api: str | None = None) -> dict[str, Any]:
    group, version = str(manifest["apiVersion"]).split("/")
    return _crd_schema(group, version, str(manifest["kind"]), gateway_api)


def _crd_file(group: str, kind: str, gateway_api: str | None) -> Path:
    relative = CRD_FILES[(group, kind)]
    if group == "gateway.networking.k8s.io" and gateway_api is not None:
        release = GATEWAY_API_CRDS.get(gateway_api, GATEWAY_API_CRDS[NEWEST_GATEWAY_API])
        return release / relative.split("/", 1)[1]
    return CRDS / relative


@functools.cache
def _crd_schema(group: str, version: str, kind: str, gateway_api: str | None = None) -> dict[str, Any]:
    """The CRD's openAPIV3Schema for the manifest's version, made strict about unknown fields.

    The API server prunes unknown fields silently; in tests a typo must fail instead, so every
    object schema that lists properties (and does not preserve unknown fields) gets
    ``additionalProperties: false``. CEL rules (x-kubernetes-validations) are not evaluated.
    """
    import yaml

    if not CRDS.is_dir():
        # Every caller that validates a custom resource needs ../shared: skip, naming why, rather than
        # fail on a checkout without it (the brief: such tests skip with a clear reason).
        import pytest

        pytest.skip(f"{CRDS} is absent: the upstream CRDs that {kind} is validated against live in ../shared")
    path = _crd_file(group, kind, gateway_api)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large; libyaml is 10x faster
    for document in yaml.load_all(path.read_text(), Loader=loader):
        if document and document.get("kind") == "CustomResourceDefinition":
            for served in document["spec"]["versions"]:
                if served["name"] == version:
                    return _strict(served["schema"]["openAPIV3Schema"], top=True)
    raise LookupError(f"{path} has no version {version}")


def _strict(schema: Any, *, top: bool = False) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            strict[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            strict[key] = _strict(value)
    if isinstance(schema.get("properties"), dict):
        if top:
            # Every object has these, whether or not the CRD's schema spells them out.
            strict["properties"].update(
                {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
            )
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    return strict


@functools.cache
def _validator(group: str, version: str, kind: str, gateway_api: str | None = None) -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(_crd_schema(group, version, kind, gateway_api))


def validate_custom(manifest: dict[str, Any], gateway_api: str | None = None) -> None:
    """Raises jsonschema.ValidationError (the most relevant error) when the object does not fit;
    Gateway API kinds against the CRDs of release ``gateway_api`` when given (else v1.6.1)."""
    import jsonschema

    group, version = str(manifest["apiVersion"]).split("/")
    if (group, str(manifest["kind"])) in OWN_SCHEMAS:
        jsonschema.validate(manifest, OWN_SCHEMAS[(group, str(manifest["kind"]))])
        return
    error = jsonschema.exceptions.best_match(
        _validator(group, version, str(manifest["kind"]), gateway_api).iter_errors(manifest)
    )
    if error is not None:
        raise error


def validate_all(result: RenderResult, kubernetes_version: str, gateway_api: str | None = None) -> int:
    """Validate every rendered Kubernetes object; returns how many custom resources were checked."""
    custom = 0
    for manifest in result.manifests():
        if is_core(manifest):
            validate_core(manifest, kubernetes_version)
        elif (api_group(manifest), str(manifest["kind"])) not in UNVALIDATED_KINDS:
            validate_custom(manifest, gateway_api)
            custom += 1
    return custom
