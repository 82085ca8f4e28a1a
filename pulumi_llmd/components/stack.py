"""LlmdStack: the whole llm-d-style inference stack on a cluster, from the ``llmd:`` stack-config keys.

Another Python program reuses it with its own cluster (the same keys as ``Pulumi.<stack>.yaml``,
snake_case or camelCase; validated by the same pydantic models)::

    from pulumi_llmd import LlmdStack, LlmdStackArgs

    LlmdStack(
        "inference",
        LlmdStackArgs(model={"name": "m", "uri": "hf://org/m"}, hf_token=token),
        opts=pulumi.ResourceOptions(providers=[my_k8s_provider]),
    )

Programs in other languages get the same component from the multi-language package
(``pulumi package add``; see :mod:`pulumi_llmd.package`). This module is also the one place that maps
the validated stack configuration onto the narrow args of the other components.
"""

# No `from __future__ import annotations`: Pulumi's schema analyzer reads LlmdStack's annotations.
from collections.abc import Mapping
from typing import Any, cast

import pulumi
from pydantic import BaseModel

from pulumi_llmd.components import naming
from pulumi_llmd.components.args import (
    ClusterCrdsArgs,
    EndpointPickerArgs,
    GatewayControlPlaneArgs,
    InferenceGatewayArgs,
    LlmdStackArgs,
    ModelServerPoolArgs,
)
from pulumi_llmd.components.autoscaling import PoolAutoscaling
from pulumi_llmd.components.bodyrouter import BodyRouter
from pulumi_llmd.components.claims import Claim, claim
from pulumi_llmd.components.crds import ClusterCrds, crd_installs
from pulumi_llmd.components.gateway import GatewayControlPlane, InferenceGateway
from pulumi_llmd.components.inputs import (
    BodyRouterArgs,
    ClusterCrdsInputs,
    InferenceMonitoringArgs,
    InferenceNetworkPoliciesArgs,
    LlmdStackInputs,
    PoolAutoscalingArgs,
    RdmaNetworksArgs,
    RoutedModel,
    package_component,
)
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.modelserver import ModelServerPool
from pulumi_llmd.components.monitoring import InferenceMonitoring
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.netpol import InferenceNetworkPolicies
from pulumi_llmd.components.onprem import RdmaNetworks
from pulumi_llmd.components.picker import EndpointPicker
from pulumi_llmd.components.platform import PodNetworking
from pulumi_llmd.config.errors import ConfigError
from pulumi_llmd.config.gateways import GKE_MANAGES_INFERENCE_CRDS_FROM_MINOR, GatewayProvider
from pulumi_llmd.config.inputs import validate_args
from pulumi_llmd.config.models import Engine, FailureMode, LlmdStackConfig, ModelConfig, ServedModel
from pulumi_llmd.config.precise import PrefixCacheMode
from pulumi_llmd.config.rules import body_router_provider, stack_problems

COMPONENT = "LlmdStack"
# How LlmdStack's callers supply the token (the stack program's rule says `pulumi config set` instead).
HF_TOKEN_HINT = "pass hfToken (a secret) to LlmdStack"


def parse_llmd_stack_args(args: Mapping[str, Any]) -> tuple[LlmdStackInputs, pulumi.Input[str] | None]:
    """Validate ``LlmdStack`` args: every bad key at once, as a :class:`ConfigError` naming the key."""
    raw: Any = dict(args) if isinstance(args, Mapping) else args  # validate_args names a non-mapping
    hf_token: pulumi.Input[str] | None = None
    if isinstance(raw, dict):
        for key in ("hf_token", "hfToken"):  # a secret Output: never part of the validated model
            if (value := raw.pop(key, None)) is not None:
                hf_token = value
    stack = validate_args(LlmdStackInputs, raw, component=COMPONENT)
    problems = stack_problems(stack, has_hf_token=hf_token is not None, hf_token_hint=HF_TOKEN_HINT)
    if problems:
        raise ConfigError(problems, subject=f"{COMPONENT} args")
    return stack, hf_token


def llmd_stack_args(
    config: LlmdStackConfig,
    *,
    pod_networking: PodNetworking | None = None,
    hf_token: pulumi.Input[str] | None = None,
) -> LlmdStackArgs:
    """The ``LlmdStack`` args for a validated stack configuration (its in-cluster keys) on a platform."""
    args: dict[str, Any] = config.model_dump(include=set(LlmdStackConfig.model_fields))
    if pod_networking is not None:
        args["pod_networking"] = pod_networking.model_dump()
    if hf_token is not None:
        args["hf_token"] = hf_token
    return cast(LlmdStackArgs, args)


def needs_hf_token(stack: LlmdStackConfig) -> bool:
    """A model (or one of its adapters) comes from Hugging Face and vLLM serves it: the pods need the
    token Secret."""
    return any(
        served.model.engine is Engine.VLLM
        and (served.model.source == "hf" or any(a.source == "hf" for a in served.model.lora.adapters))
        for served in stack.served()
    )


def serving_roles(model: LlmdStackConfig | ServedModel) -> list[Role]:
    disaggregated = model.disaggregated
    return [Role.PREFILL, Role.DECODE] if disaggregated else [Role.DECODE]


def multi_node_roles(model: ServedModel) -> list[Role]:
    pools = {Role.PREFILL: model.prefill, Role.DECODE: model.decode}
    return [role for role in serving_roles(model) if pools[role].nodes_per_replica > 1]


def _only(stack: LlmdStackConfig, served: ServedModel | None) -> ServedModel:
    """The model a mapping is for: given, or the one model of a single-model stack."""
    if served is not None:
        return served
    models = stack.served()
    if len(models) != 1:
        raise ValueError("a stack with several models needs the model each mapping is for")
    return models[0]


def endpoint_picker_args(stack: LlmdStackConfig, served: ServedModel | None = None) -> EndpointPickerArgs:
    model = _only(stack, served)
    args: EndpointPickerArgs = {
        "pool_name": naming.pool_name(model.prefix),
        "namespace": stack.namespace,
        "served_models": model.model.served_names,
        "selector": naming.pool_selector(model.prefix, model.model.label_value),
        "disaggregated": model.disaggregated,
        "settings": _section(model.epp),
        "tracing": _section(stack.tracing),
    }
    # Only what a model uses, so the args of a model without them stay what they always were.
    if model.model.lora.enabled:
        args["lora"] = True
    if model.model.rewrites:
        args["rewrites"] = [_section(rule) for rule in model.model.rewrites]
    if model.model.objectives:
        args["objectives"] = [_section(objective) for objective in model.model.objectives]
    if model.epp.prefix_cache is PrefixCacheMode.PRECISE:
        # The token-producer's tokenizer and the pods' block keys (docs/precise-prefix.md).
        args["model"] = _section(_model_section(model))
        if needs_hf_token(stack):
            args["hf_token_secret"] = naming.hf_token_secret_name(stack.name)
    return args


def model_server_pool_args(
    stack: LlmdStackInputs, role: Role, served: ServedModel | None = None
) -> ModelServerPoolArgs:
    model = _only(stack, served)
    pool = (
        model.prefill.model_dump(exclude={"enabled"})
        if role is Role.PREFILL
        else model.decode.model_dump(exclude={"sidecar"})
    )
    args: ModelServerPoolArgs = {
        "instance": model.prefix,
        "namespace": stack.namespace,
        "role": role,
        "model": _section(_model_section(model)),
        "pool": cast(Any, pool),
        "disaggregated": model.disaggregated,
        "sidecar": _section(model.decode.sidecar),
        "pod_networking": _section(stack.pod_networking),
        "autoscaled": stack.autoscaling.enabled,
        "tracing": _section(stack.tracing),
        "implementation": model.epp.implementation,
        "prefix_cache": model.epp.prefix_cache,
    }
    if needs_hf_token(stack):
        args["hf_token_secret"] = naming.hf_token_secret_name(stack.name)
    return args


def inference_gateway_args(stack: LlmdStackConfig) -> InferenceGatewayArgs:
    gateway = stack.gateway
    args: InferenceGatewayArgs = {
        "instance": stack.name,
        "namespace": stack.namespace,
        "pool_name": naming.pool_name(stack.name),
        "provider": gateway.provider,
        "listener_port": gateway.listener_port,
        "request_timeout": gateway.request_timeout,
        "paths": list(gateway.paths),
        "epp_secure_serving": stack.served()[0].epp.secure_serving,
    }
    if gateway.class_name is not None:
        args["class_name"] = gateway.class_name
    if gateway.kgateway_data_plane is not None:
        args["kgateway_data_plane"] = gateway.kgateway_data_plane
    if stack.multi_model:
        args["model_routes"] = [
            {
                "model": served.model.name,
                "pool_name": naming.pool_name(served.prefix),
                "epp_secure_serving": served.epp.secure_serving,
            }
            for served in stack.served()
        ]
        args["unmatched_to_first"] = stack.body_router.failure_mode is FailureMode.FAIL_OPEN
    return args


def gateway_control_plane_args(stack: LlmdStackConfig) -> GatewayControlPlaneArgs:
    gateway = stack.gateway
    args: GatewayControlPlaneArgs = {"instance": stack.name, "provider": gateway.provider}
    if gateway.version is not None:
        args["version"] = gateway.version
    if gateway.namespace is not None:
        args["namespace"] = gateway.namespace
    if gateway.kgateway_data_plane is not None:
        args["kgateway_data_plane"] = gateway.kgateway_data_plane
    return args


def cluster_crds_args(stack: LlmdStackConfig) -> ClusterCrdsArgs:
    """The CRDs the gateway provider expects: Gateway API at the release it is built against (unless
    the platform owns them, as GKE does), InferencePool, llm-d's InferenceObjective and
    InferenceModelRewrite, LeaderWorkerSet for multi-node pools."""
    crds = stack.crds
    args: ClusterCrdsArgs = {
        "llmd_router_version": crds.llmd_router_version,
        "lws_version": crds.lws_version,
        "leader_worker_set": any(multi_node_roles(served) for served in stack.served()),
    }
    gateway_api = crds.gateway_api_version or stack.gateway.pins.gateway_api_version
    if gateway_api is not None:
        args["gateway_api_version"] = gateway_api
    gke_installs_pool_crd = (
        stack.gateway.provider is GatewayProvider.GKE
        and int(stack.kubernetes_version.split(".")[1]) >= GKE_MANAGES_INFERENCE_CRDS_FROM_MINOR
    )
    # None: GKE installs InferencePool itself (the args type has no None; the model accepts it).
    args["inference_extension_version"] = (
        cast(Any, None) if gke_installs_pool_crd else crds.inference_extension_version
    )
    return args


def network_policies_args(
    stack: LlmdStackConfig, served: ServedModel | None = None
) -> InferenceNetworkPoliciesArgs:
    model = _only(stack, served)
    return InferenceNetworkPoliciesArgs(
        instance=model.prefix,
        namespace=stack.namespace,
        gateway_instance=stack.name if model.multi else None,
        disaggregated=model.disaggregated,
        multi_node_roles=multi_node_roles(model),
        settings=stack.network_policy,
        gateway_provider=stack.gateway.provider,
        prefix_cache=model.epp.prefix_cache,
        implementation=model.epp.implementation,
    )


def body_router_args(stack: LlmdStackConfig) -> BodyRouterArgs:
    provider = body_router_provider(stack.gateway.provider)
    assert provider is not None  # the stack rules refuse llmd:models with other gateway providers
    return BodyRouterArgs(
        instance=stack.name,
        namespace=stack.namespace,
        provider=cast(Any, provider),
        models=[
            RoutedModel(
                model=served.model.name,
                names=served.model.served_names,
                pool_name=naming.pool_name(served.prefix),
            )
            for served in stack.served()
        ],
        settings=stack.body_router,
        network_policy=stack.network_policy if stack.network_policy.enabled else None,
    )


def monitoring_args(stack: LlmdStackConfig, served: ServedModel | None = None) -> InferenceMonitoringArgs:
    """One model's monitors, rules and dashboards. With llmd:models, only the first model's also
    watch the one Gateway's proxies and the body router (no two PodMonitors for the same pods)."""
    model = _only(stack, served)
    first = stack.served()[0]
    return InferenceMonitoringArgs(
        instance=model.prefix,
        namespace=stack.namespace,
        pool_name=naming.pool_name(model.prefix),
        disaggregated=model.disaggregated,
        gateway_class=stack.gateway.effective_class_name,
        settings=stack.monitoring,
        gateway_instance=stack.name if model.multi else None,
        watch_gateway=model.key == first.key,
        watch_body_router=stack.multi_model and model.key == first.key,
        implementation=model.epp.implementation,
    )


def autoscaling_args(stack: LlmdStackConfig, served: ServedModel | None = None) -> PoolAutoscalingArgs:
    model = _only(stack, served)
    return PoolAutoscalingArgs(
        instance=model.prefix,
        namespace=stack.namespace,
        disaggregated=model.disaggregated,
        workloads={role: naming.model_server_name(model.prefix, role) for role in serving_roles(model)},
        settings=stack.autoscaling,
    )


def stack_claims(stack: LlmdStackConfig) -> list[Claim]:
    """What a stack's child names derive from (see :mod:`.claims`): its name and each model's prefix
    (`<prefix>-epp`, `<prefix>-decode` ...), its namespace (the Namespace object it owns), the CRD
    installs (named by release) and the gateway control plane (its charts, named by provider)."""
    why_name = "object names (and so URNs) derive from it; give each stack its own name"
    claims = [Claim("name", "name prefix", stack.name, why_name)]
    claims += [
        Claim(served.model_key("id"), "name prefix", served.prefix, why_name)
        for served in stack.served()
        if served.multi
    ]
    claims.append(
        Claim(
            "namespace",
            "namespace",
            stack.namespace,
            "each stack creates (and owns) its namespace; give each stack its own namespace",
        )
    )
    if stack.crds.install:
        claims += [
            Claim(
                "crds.install",
                "CRD install",
                install,
                "CRDs are cluster-wide: let one stack install them and set crds.install: false on the others",
            )
            for install in crd_installs(ClusterCrdsInputs.model_validate(cluster_crds_args(stack)))
        ]
    if stack.gateway.installs_control_plane:
        claims.append(
            Claim(
                "gateway.install",
                "gateway control plane",
                stack.gateway.provider.value,
                "one control plane serves every Gateway of its class: let one stack install it and set "
                "gateway.install: false on the others",
            )
        )
    return claims


def namespace_manifest(stack: LlmdStackConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": stack.namespace, "labels": naming.common_labels(stack.name, "namespace")},
    }


def hf_token_secret_manifest(instance: str, namespace: str, token: pulumi.Input[str]) -> dict[str, Any]:
    """The token reaches pods only through this Secret (env valueFrom), and stays a Pulumi secret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": naming.hf_token_secret_name(instance),
            "namespace": namespace,
            "labels": naming.common_labels(instance, "model-server"),
        },
        "type": "Opaque",
        "stringData": {"HF_TOKEN": pulumi.Output.secret(token)},
    }


@package_component
class LlmdStack(pulumi.ComponentResource):
    """The llm-d inference stack on an existing Kubernetes cluster: its namespace, the Gateway API,
    InferencePool and InferenceObjective CRDs, the gateway provider's control plane (agentgateway, Istio
    or kgateway; GKE's is managed), the endpoint picker (EPP, this project's or llm-d's) with its
    InferencePool, the prefill and decode vLLM pools with the P/D routing sidecar, the Gateway and
    HTTPRoute with the provider's policies, and NetworkPolicies; with several models (models), each its
    own pools, EPP and InferencePool behind the one Gateway, and a body router that routes each request
    by the model its body names. Its inputs are the keys of the `llmd:` stack configuration (model or
    models, prefill, decode, epp, bodyRouter, gateway, crds,
    networkPolicy, name, namespace) plus podNetworking and hfToken; pass the Kubernetes provider in the
    resource options' providers, and anything the stack must wait for (GPU nodes) in dependsOn."""

    namespace: str
    """Namespace of the stack's objects."""
    gateway_name: str
    """The Gateway serving the OpenAI API (`<name>-gateway`)."""
    pool_name: str
    """The InferencePool (`<name>`; with models, the first model's `<name>-<id>`)."""
    epp_service_name: str
    """The endpoint picker's Service (`<name>-epp`; with models, the first model's)."""
    workloads: dict[str, str]
    """Model-server workload name per role (`prefill`, `decode`); with models, per `<id>/<role>`."""
    pool_names: dict[str, str]
    """The InferencePool of each served model, by model name."""

    def __init__(self, name: str, args: LlmdStackArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """Args (:class:`~pulumi_llmd.components.args.LlmdStackArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.LlmdStackInputs` and the stack rules): the in-cluster
        keys of the ``llmd:`` stack config with the same shape (``name``, ``namespace``,
        ``kubernetes_version``, ``model`` or ``models``, ``body_router``, ``gateway``, ``crds``,
        ``prefill``, ``decode``, ``epp``, ``network_policy``), plus ``pod_networking`` (what the platform
        says about RDMA/EFA and GPU nodes) and ``hf_token`` (a secret, for hf:// models served by vLLM).

        The Kubernetes provider comes through ``opts`` (``providers=[provider]``; children inherit it),
        as does ``depends_on`` (e.g. GPU node pools or operators), which every child waits for. Object
        names derive from ``name``: ``<name>-decode``, ``<name>-prefill``, ``<name>-epp``,
        ``<name>-gateway``, InferencePool ``<name>``; with ``models``, each model's from ``<name>-<id>``
        (``<name>-<id>-decode`` ...), and the body router is ``<name>-body-router``. Raises
        :class:`ConfigError` naming every bad key.
        """
        stack, hf_token = parse_llmd_stack_args(args)
        claim(self, "llmd:index:LlmdStack", name, opts, stack_claims(stack))
        super().__init__("llmd:index:LlmdStack", name, None, opts)

        namespace = register(namespace_manifest(stack), child_options(self, opts))
        self.namespace_resource = namespace

        crds: list[pulumi.Resource] = []
        if stack.crds.install:
            crds.append(ClusterCrds(f"{name}-crds", cluster_crds_args(stack), opts=child_options(self, opts)))
        gateway_controller: list[pulumi.Resource] = []
        if stack.gateway.installs_control_plane:
            control_plane = GatewayControlPlane(
                f"{name}-{stack.gateway.provider.value}",
                gateway_control_plane_args(stack),
                opts=child_options(self, opts, *crds),
            )
            gateway_controller.append(control_plane)

        # Model servers wait for their namespace, the token Secret and Multus networks they use, and
        # (for LeaderWorkerSets) the LWS install.
        multi_node = any(multi_node_roles(served) for served in stack.served())
        model_prerequisites: list[pulumi.Resource] = [namespace, *(crds if multi_node else [])]
        token_secret: list[pulumi.Resource] = []
        if needs_hf_token(stack) and hf_token is not None:
            token = hf_token_secret_manifest(stack.name, stack.namespace, hf_token)
            token_secret.append(register(token, child_options(self, opts, namespace)))
            model_prerequisites += token_secret
        if attachments := stack.pod_networking.network_attachments:
            networks = RdmaNetworks(
                f"{name}-rdma-networks",
                RdmaNetworksArgs(instance=stack.name, namespace=stack.namespace, attachments=attachments),
                opts=child_options(self, opts, namespace),
            )
            model_prerequisites.append(networks)

        self.pickers: dict[str, EndpointPicker] = {}
        self.model_pools: dict[str, dict[Role, ModelServerPool]] = {}
        for served in stack.served():
            picker_args = endpoint_picker_args(stack, served)
            # Single-model stacks keep their component names (and so their objects' URNs).
            picker = EndpointPicker(
                naming.epp_name(served.prefix),
                picker_args,
                # In precise mode the EPP may read the token Secret (tokenizer download).
                opts=child_options(
                    self, opts, namespace, *crds, *(token_secret if "hf_token_secret" in picker_args else [])
                ),
            )
            self.pickers[served.model.name] = picker
            self.model_pools[served.model.name] = {
                role: ModelServerPool(
                    naming.model_server_name(served.prefix, role),
                    model_server_pool_args(stack, role, served),
                    opts=child_options(self, opts, *model_prerequisites),
                )
                for role in serving_roles(served)
            }
        first = stack.served()[0]
        self.epp = self.pickers[first.model.name]
        self.pools = self.model_pools[first.model.name]
        route_after: list[pulumi.Resource] = [namespace, *crds, *gateway_controller, *self.pickers.values()]
        if stack.multi_model:
            self.body_router: BodyRouter | None = BodyRouter(
                naming.body_router_name(stack.name),
                body_router_args(stack),
                opts=child_options(self, opts, namespace, *crds, *gateway_controller),
            )
            route_after.append(self.body_router)
        else:
            self.body_router = None
        self.gateway = InferenceGateway(
            naming.gateway_name(stack.name),
            inference_gateway_args(stack),
            opts=child_options(self, opts, *route_after),
        )
        monitoring = stack.monitoring
        for served in stack.served():
            # Stack-wide components of the single-model form keep the names they always had
            # (<component name>-...); with llmd:models each model has its own, <name>-<id>-....
            prefix = served.prefix if served.multi else name
            if monitoring.enabled or monitoring.dashboards.enabled:
                InferenceMonitoring(
                    f"{prefix}-monitoring",
                    monitoring_args(stack, served),
                    opts=child_options(self, opts, namespace),
                )
            if stack.autoscaling.enabled:
                PoolAutoscaling(
                    f"{prefix}-autoscaling",
                    autoscaling_args(stack, served),
                    opts=child_options(self, opts, *self.model_pools[served.model.name].values()),
                )
            if stack.network_policy.enabled:
                InferenceNetworkPolicies(
                    f"{prefix}-network-policies",
                    network_policies_args(stack, served),
                    opts=child_options(self, opts, namespace),
                )

        self.namespace = stack.namespace
        self.gateway_name = self.gateway.gateway_name
        self.pool_name = self.epp.pool_name
        self.epp_service_name = self.epp.service_name
        if stack.multi_model:
            self.workloads = {
                f"{served.id}/{role}": pool.workload_name
                for served in stack.served()
                for role, pool in self.model_pools[served.model.name].items()
            }
        else:
            self.workloads = {str(role): pool.workload_name for role, pool in self.pools.items()}
        self.pool_names = {name: picker.pool_name for name, picker in self.pickers.items()}
        self.register_outputs(
            {
                "namespace": self.namespace,
                "gatewayName": self.gateway_name,
                "poolName": self.pool_name,
                "eppServiceName": self.epp_service_name,
                "workloads": self.workloads,
                "poolNames": self.pool_names,
            }
        )


def _model_section(served: ServedModel) -> ModelConfig:
    """A models[] entry carries its pools and picker; the components take the model alone."""
    return ModelConfig.model_validate(served.model.model_dump(include=set(ModelConfig.model_fields)))


def _section(model: BaseModel) -> Any:
    """A validated section as the plain dict the next component's args take (and validate again)."""
    return model.model_dump()
