"""The narrow, validated inputs of each in-cluster component: one pydantic model per component.

A component gets only what it needs, not the whole stack configuration, and its pure manifest
builders take the same model. The models are built from the stack-config models (whole sections such
as :class:`EppConfig`, or single fields reused with :func:`field_of`), so every default, constraint
and description is still defined once, in :mod:`pulumi_llmd.config.models`.

The components of the multi-language package take a ``TypedDict`` mirror of their model
(:mod:`.args`, generated from this module by ``python -m render.component_args --write``) and validate
it into the model; :class:`~.stack.LlmdStack` is the one place that maps a validated
:class:`LlmdStackConfig` onto the other components' args. Providers and dependencies never appear
here: they travel in ``pulumi.ResourceOptions`` (children inherit the parent's providers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import pulumi
from pydantic import Field, field_validator, model_validator

from pulumi_llmd.components import naming
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.platform import NetworkAttachment, PodNetworking
from pulumi_llmd.config.base import ConfigModel
from pulumi_llmd.config.errors import KeyProblem, refuse_repeats
from pulumi_llmd.config.gateways import GatewayProvider, KgatewayDataPlane
from pulumi_llmd.config.inputs import field_of
from pulumi_llmd.config.models import (
    DNS_LABEL,
    RELEASE_TAG,
    BodyRouterConfig,
    CrdsConfig,
    DnsLabel,
    Engine,
    EppConfig,
    EppImplementation,
    GatewayConfig,
    LlmdStackConfig,
    ModelConfig,
    ModelRewriteConfig,
    NetworkPolicyConfig,
    ObjectiveConfig,
    OnPremConfig,
    PoolConfig,
    SidecarConfig,
)
from pulumi_llmd.config.nodes import validate_labels
from pulumi_llmd.config.observability import AutoscalingConfig, MonitoringConfig, TracingConfig
from pulumi_llmd.config.precise import PrefixCacheMode

ComponentT = TypeVar("ComponentT", bound=type[pulumi.ComponentResource])


def package_component(component: ComponentT) -> ComponentT:
    """Mark a component of the multi-language package. Pulumi's analyzer copies the class docstring
    into the schema as every language's description, so it must read as one plain paragraph: this
    joins its lines (Python-specific Args documentation belongs in ``__init__``'s docstring)."""
    component.__doc__ = " ".join((component.__doc__ or "").split())
    return component


# The stack's name, as a prefix of object names ("<instance>-decode", "<instance>-epp-ingress" ...):
# the same limit as llmd:name keeps every derived name a valid DNS label.
Instance = Annotated[str, Field(pattern=DNS_LABEL, max_length=40)]


class LlmdStackInputs(LlmdStackConfig):
    """Everything ``LlmdStack`` lays on a cluster: the stack-config keys of :class:`LlmdStackConfig`
    and what the platform says about pod networking. (The Hugging Face token is a secret Output and
    travels beside this model, never in it.)"""

    pod_networking: PodNetworking = Field(
        default_factory=PodNetworking,
        description="How model-server pods reach the accelerator network and GPU nodes (extended "
        "resources, annotations, env, volumes, node selection, Multus networks); empty on a cluster "
        "without RDMA/EFA.",
    )


class EndpointPickerInputs(ConfigModel):
    """The endpoint picker (EPP) and the InferencePool that names it."""

    pool_name: Instance = Field(
        description="InferencePool name; the EPP's objects are `<poolName>-epp`, and both carry "
        "`app.kubernetes.io/instance: <poolName>`."
    )
    namespace: DnsLabel = Field(description="Namespace of the pool and the EPP.")
    served_models: list[Annotated[str, Field(pattern=r"^[^,]+$")]] = Field(
        min_length=1, description="Model names clients put in requests (the EPP's `--served-models`)."
    )
    selector: dict[str, str] = Field(
        min_length=1,
        description="Labels of the model-server pods the InferencePool selects (its `matchLabels`).",
    )
    # The InferencePool's matchLabels: the API server refuses bad label syntax when the pool is created,
    # after the EPP's objects already exist.
    _selector = field_validator("selector")(validate_labels)
    disaggregated: bool = Field(
        description="Prefill/decode disaggregation: the generated EndpointPickerConfig has P/D profiles."
    )
    settings: EppConfig = Field(default_factory=EppConfig, description="The EPP's own settings.")
    tracing: TracingConfig = Field(
        default_factory=TracingConfig, description="OTLP tracing of the scheduling decision."
    )
    lora: bool = Field(
        default=False,
        description="The pool serves LoRA adapters: the generated EndpointPickerConfig adds the "
        "lora-affinity-scorer.",
    )
    rewrites: list[ModelRewriteConfig] = Field(
        default_factory=list,
        description="Model-name rules of the pool, rendered as one InferenceModelRewrite "
        "(`<poolName>-rewrites`).",
    )
    objectives: list[ObjectiveConfig] = Field(
        default_factory=list, description="Request priorities of the pool, one InferenceObjective each."
    )
    model: ModelConfig | None = Field(
        default=None,
        description="The served model; required with settings.prefixCache precise (the token-producer's "
        "tokenizer, and the block size, hash and seed of the pods' block keys).",
    )
    hf_token_secret: DnsLabel | None = Field(
        default=None,
        description="Secret (key `HF_TOKEN`) the EPP reads to download a gated model's tokenizer from the "
        "Hub (settings.prefixCache precise with tokenizer hub); unset passes no token.",
    )

    @model_validator(mode="after")
    def _objects_the_pool_can_hold(self) -> EndpointPickerInputs:
        # The stack's rules check these for its own args (rules._unique_name_problems,
        # _rewrite_problems); a program building the picker itself gets the same checks. Two objectives
        # of one name are one InferenceObjective registered twice (one URN, one object); a rewrite to
        # a name the pool does not serve sends those requests to a model no pod has.
        refuse_repeats(
            (o.name for o in self.objectives),
            "objectives[{}].name",
            "InferenceObjective names are unique in the namespace",
        )
        refuse_repeats((r.model for r in self.rewrites), "rewrites[{}].model", "one rule per name")
        for index, rewrite in enumerate(self.rewrites):
            for position, target in enumerate(rewrite.targets):
                if target.model not in self.served_models:
                    raise KeyProblem(
                        f"rewrites[{index}].targets[{position}].model",
                        f"{target.model!r} is not one of servedModels ({', '.join(self.served_models)})",
                    )
        return self

    @property
    def epp_name(self) -> str:
        return naming.epp_name(self.pool_name)


class ModelServerPoolInputs(ConfigModel):
    """One role's model servers (vLLM or the bundled simulator)."""

    instance: Instance = Field(
        description="Stack name: the workload is `<instance>-<role>`, labelled "
        "`app.kubernetes.io/instance: <instance>`."
    )
    namespace: DnsLabel = Field(description="Namespace of the pool.")
    role: Role = Field(description="`prefill` or `decode`.")
    model: ModelConfig = Field(description="The served model.")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="This role's pool settings.")
    disaggregated: bool = Field(
        description="Prefill/decode disaggregation: NIXL KV transfer on both roles, and the routing "
        "sidecar in front of vLLM on decode pods."
    )
    sidecar: SidecarConfig = Field(
        default_factory=SidecarConfig,
        description="The P/D routing sidecar; used by decode pools of a disaggregated stack only.",
    )
    pod_networking: PodNetworking = Field(
        default_factory=PodNetworking, description="The platform's pod networking and GPU-node scheduling."
    )
    hf_token_secret: DnsLabel | None = Field(
        default=None,
        description="Secret (key `HF_TOKEN`) with the Hugging Face token vLLM uses for hf:// models; "
        "unset passes no token (public models).",
    )
    autoscaled: bool = Field(
        default=False,
        description="An autoscaler owns the replica count: the workload leaves `replicas` unset, so "
        "updates do not reset what the autoscaler chose (`pool.replicas` is then unused).",
    )
    tracing: TracingConfig = Field(
        default_factory=TracingConfig,
        description="OTLP tracing of the P/D sidecar's prefill and decode legs.",
    )
    implementation: EppImplementation = Field(
        default=EppImplementation.BUNDLED,
        description="Whose P/D sidecar decode pods run: `bundled` (this project's) or `upstream` (llm-d's "
        "disagg sidecar), following the stack's epp.implementation.",
    )
    prefix_cache: Annotated[PrefixCacheMode, field_of(EppConfig, "prefix_cache")]

    @property
    def name(self) -> str:
        return naming.model_server_name(self.instance, self.role)

    @property
    def simulated(self) -> bool:
        return self.model.engine is Engine.SIMULATOR

    @property
    def precise(self) -> bool:
        """The pods publish vLLM KV events for the EPP's precise prefix-cache index."""
        return self.prefix_cache is PrefixCacheMode.PRECISE

    @property
    def has_sidecar(self) -> bool:
        return self.role is Role.DECODE and self.disaggregated

    @property
    def engine_port(self) -> int:
        """Where vLLM (or the simulator) listens in this role's pods."""
        return naming.VLLM_BEHIND_SIDECAR_PORT if self.has_sidecar else naming.MODEL_SERVER_PORT

    @property
    def serving_labels(self) -> dict[str, str]:
        """The InferencePool selector this pool's serving pods carry."""
        return naming.pool_selector(self.instance, self.model.label_value)


class ModelRoute(ConfigModel):
    """One model behind a shared Gateway: requests whose body names it go to its InferencePool."""

    model: str = Field(
        min_length=1,
        max_length=4096,
        description=f"The base model name the body router puts in `{naming.BASE_MODEL_HEADER}` for every "
        "name this model serves (the value the route rule matches).",
    )
    # Instance, not DnsLabel: the route and the provider's objects name the pool's EPP Service
    # `<poolName>-epp` (EndpointPicker's names), which must stay a 63-character DNS label.
    pool_name: Instance = Field(description="The model's InferencePool.")
    epp_secure_serving: Annotated[bool, field_of(EppConfig, "secure_serving")]


class InferenceGatewayInputs(ConfigModel):
    """The Gateway, the HTTPRoute into an InferencePool, and the provider's objects for that pool."""

    instance: Instance = Field(
        description="Stack name: the Gateway is `<instance>-gateway`, labelled "
        "`app.kubernetes.io/instance: <instance>`."
    )
    namespace: DnsLabel = Field(description="Namespace of the Gateway, the HTTPRoute and the pool.")
    pool_name: Instance = Field(  # as ModelRoute.pool_name: its EPP Service is `<poolName>-epp`
        description="The InferencePool the route sends every request to when modelRoutes is empty; the "
        "route's name too."
    )
    provider: Annotated[GatewayProvider, field_of(GatewayConfig, "provider")]
    class_name: Annotated[str | None, field_of(GatewayConfig, "class_name")]
    kgateway_data_plane: Annotated[KgatewayDataPlane | None, field_of(GatewayConfig, "kgateway_data_plane")]
    listener_port: Annotated[int, field_of(GatewayConfig, "listener_port")]
    request_timeout: Annotated[str, field_of(GatewayConfig, "request_timeout")]
    paths: Annotated[list[str], field_of(GatewayConfig, "paths")]
    epp_secure_serving: Annotated[bool, field_of(EppConfig, "secure_serving")]
    model_routes: list[ModelRoute] = Field(
        default_factory=list,
        description="Several models behind the Gateway: one route rule each, matching "
        f"`{naming.BASE_MODEL_HEADER}` (set by the body router) to the model's pool, with the provider's "
        "objects for each pool.",
    )
    unmatched_to_first: bool = Field(
        default=False,
        description="With modelRoutes, a last rule without a header match sends requests the body router "
        "did not mark (it failed open) to the first model's pool.",
    )

    @model_validator(mode="after")
    def _one_rule_per_model_and_pool(self) -> InferenceGatewayInputs:
        # A second rule matching the same base model would never be used (Gateway API gives the
        # earlier rule precedence), and a second route to one pool would register its provider
        # objects (Istio's DestinationRule, GKE's policies) twice under one URN.
        refuse_repeats((r.model for r in self.model_routes), "modelRoutes[{}].model", "one rule per model")
        refuse_repeats(
            (r.pool_name for r in self.model_routes), "modelRoutes[{}].poolName", "one route per pool"
        )
        return self

    @property
    def gateway_name(self) -> str:
        return naming.gateway_name(self.instance)

    @property
    def epp_service(self) -> str:
        """The pool's EPP Service (`<pool>-epp`, the EndpointPicker's name)."""
        return naming.epp_name(self.pool_name)

    @property
    def backends(self) -> list[tuple[str, bool]]:
        """Every InferencePool the route sends to, with whether its EPP serves TLS."""
        if self.model_routes:
            return [(route.pool_name, route.epp_secure_serving) for route in self.model_routes]
        return [(self.pool_name, self.epp_secure_serving)]

    @property
    def effective_class_name(self) -> str:
        return self._gateway_settings().effective_class_name

    def _gateway_settings(self) -> GatewayConfig:
        return GatewayConfig(
            provider=self.provider, class_name=self.class_name, kgateway_data_plane=self.kgateway_data_plane
        )


class GatewayControlPlaneInputs(ConfigModel):
    """A gateway provider's control plane (charts) with InferencePool support on."""

    instance: Instance = Field(description="Stack name, for the `app.kubernetes.io/instance` label.")
    provider: Annotated[GatewayProvider, field_of(GatewayConfig, "provider")]
    version: Annotated[str | None, field_of(GatewayConfig, "version")]
    namespace: Annotated[str | None, field_of(GatewayConfig, "namespace")]
    kgateway_data_plane: Annotated[KgatewayDataPlane | None, field_of(GatewayConfig, "kgateway_data_plane")]

    def _gateway_settings(self) -> GatewayConfig:
        return GatewayConfig(
            provider=self.provider,
            version=self.version,
            namespace=self.namespace,
            kgateway_data_plane=self.kgateway_data_plane,
        )

    @property
    def effective_version(self) -> str | None:
        return self._gateway_settings().effective_version

    @property
    def effective_namespace(self) -> str | None:
        return self._gateway_settings().effective_namespace

    @property
    def effective_data_plane(self) -> KgatewayDataPlane:
        return self._gateway_settings().effective_data_plane

    @property
    def effective_class_name(self) -> str:
        return self._gateway_settings().effective_class_name


class ClusterCrdsInputs(ConfigModel):
    """Cluster-wide CRDs from their release assets (retained on delete)."""

    gateway_api_version: str | None = Field(
        default=None,
        pattern=RELEASE_TAG,
        description="Gateway API release (standard channel) to install; unset installs none (the platform "
        "owns them, as GKE does).",
    )
    inference_extension_version: Annotated[str | None, field_of(CrdsConfig, "inference_extension_version")]
    llmd_router_version: Annotated[str | None, field_of(CrdsConfig, "llmd_router_version")]
    lws_version: Annotated[str, field_of(CrdsConfig, "lws_version")]
    leader_worker_set: bool = Field(
        description="Also install LeaderWorkerSet (CRD and controller): pools with nodesPerReplica > 1 "
        "need it."
    )


# --- components used only inside LlmdStack or a platform (Python-only args) ----------------------


class _StackPods:
    """What the policies and the monitors derive from a stack's pools (both args classes have the
    two fields)."""

    if TYPE_CHECKING:
        disaggregated: bool
        implementation: EppImplementation

    @property
    def sidecar_metrics(self) -> bool:
        """P/D decode pods serve the sidecar's own metrics (`llmd_sidecar_*` on `sidecar-metrics`, 9090):
        only this project's sidecar does; llm-d's (implementation upstream) declares no such port
        (modelserver.sidecar_container), so nothing may scrape it or be let in to it."""
        return self.disaggregated and self.implementation is EppImplementation.BUNDLED

    @property
    def roles(self) -> list[Role]:
        return [Role.PREFILL, Role.DECODE] if self.disaggregated else [Role.DECODE]


class InferenceNetworkPoliciesArgs(_StackPods, ConfigModel):
    """Ingress policies for the EPP and the model-server pools of one stack."""

    instance: Instance = Field(
        description="Stack name, or a model's prefix in a multi-model stack (object names and selectors "
        "derive from it)."
    )
    namespace: DnsLabel = Field(description="Namespace of the stack.")
    gateway_instance: Instance | None = Field(
        default=None,
        description="The stack name whose Gateway (`<name>-gateway`) may reach the pods; unset: instance.",
    )
    disaggregated: bool = Field(description="Prefill and decode pools exist and talk to each other.")
    multi_node_roles: list[Role] = Field(
        default_factory=list, description="Roles whose replicas span nodes (Ray/NCCL inside a group)."
    )
    settings: NetworkPolicyConfig = Field(
        default_factory=NetworkPolicyConfig, description="The networkPolicy section."
    )
    gateway_provider: Annotated[GatewayProvider, field_of(GatewayConfig, "provider")]
    prefix_cache: Annotated[PrefixCacheMode, field_of(EppConfig, "prefix_cache")]
    implementation: Annotated[EppImplementation, field_of(EppConfig, "implementation")]


class RoutedModel(ConfigModel):
    """A model as the body router knows it: the names that reach its pool."""

    model: str = Field(min_length=1, description="The base model: the route key the router sets.")
    names: list[str] = Field(
        min_length=1, description="Every name a request body may carry for it (model, adapters, rewrites)."
    )
    pool_name: DnsLabel = Field(description="Its InferencePool.")


class BodyRouterArgs(ConfigModel):
    """The body router of a multi-model stack and how its Gateway calls it."""

    instance: Instance = Field(description="Stack name: the router is `<instance>-body-router`.")
    namespace: DnsLabel = Field(description="Namespace of the stack.")
    provider: Literal["istio", "gke", "agentgateway"] = Field(
        description="How the Gateway calls the router (see pulumi_llmd.config.rules.body_router_provider)."
    )
    models: list[RoutedModel] = Field(min_length=1, description="The routing table, in config order.")
    settings: BodyRouterConfig = Field(
        default_factory=BodyRouterConfig, description="The bodyRouter section."
    )
    network_policy: NetworkPolicyConfig | None = Field(
        default=None, description="The networkPolicy section when policies are on (None: no policy)."
    )

    @model_validator(mode="after")
    def _a_table_the_router_loads(self) -> BodyRouterArgs:
        # The router refuses these tables at startup (bbr/table.py RoutingTable), so its pods would
        # crash-loop; refuse them here, naming the entry (the stack's rules keep its own tables valid).
        owners: dict[str, int] = {}
        for index, routed in enumerate(self.models):
            if routed.model not in routed.names:
                raise KeyProblem(
                    f"models[{index}].names", f"must include the model itself ({routed.model!r})"
                )
            for position, name in enumerate(routed.names):
                if name != name.strip():
                    raise KeyProblem(f"models[{index}].names[{position}]", f"{name!r} has surrounding spaces")
                if name in owners and owners[name] != index:
                    raise KeyProblem(
                        f"models[{index}].names[{position}]",
                        f"{name!r} is also a name of models[{owners[name]}]: a name routes to one model",
                    )
                owners[name] = index
        return self

    @property
    def name(self) -> str:
        return naming.body_router_name(self.instance)

    @property
    def gateway_name(self) -> str:
        return naming.gateway_name(self.instance)


class RdmaNetworksArgs(ConfigModel):
    """The Multus networks of the platform's pod networking, in the stack's namespace."""

    instance: Instance = Field(description="Stack name, for labels.")
    namespace: DnsLabel = Field(description="Namespace of the stack.")
    attachments: list[NetworkAttachment] = Field(description="The NetworkAttachmentDefinitions.")


class OnPremAcceleratorsArgs(ConfigModel):
    """The NVIDIA GPU and Network Operators of an on-prem cluster."""

    instance: Instance = Field(description="Stack name, for labels.")
    onprem: OnPremConfig = Field(description="The onprem section.")


class InferenceMonitoringArgs(_StackPods, ConfigModel):
    """The Prometheus Operator monitors and rules, and the Grafana dashboards, of one stack."""

    instance: Instance = Field(description="Stack name (object names, the `llmd_stack` label).")
    namespace: DnsLabel = Field(description="Namespace of the stack.")
    pool_name: Instance = Field(description="The InferencePool (its EPP is `<poolName>-epp`).")
    disaggregated: bool = Field(description="Prefill and decode pools with the P/D sidecar.")
    gateway_class: Annotated[str, field_of(GatewayConfig, "class_name")]
    settings: MonitoringConfig = Field(
        default_factory=MonitoringConfig, description="The monitoring section."
    )
    gateway_instance: Instance | None = Field(
        default=None,
        description="The stack whose Gateway (`<name>-gateway`) this watches; unset: instance (with "
        "llmd:models, instance is a model's prefix and the Gateway the stack's).",
    )
    watch_gateway: bool = Field(
        default=True, description="Render the Gateway proxies' PodMonitor (one model of a multi-model stack)."
    )
    watch_body_router: bool = Field(
        default=False,
        description="Render the body router's PodMonitor (`<gatewayInstance>-body-router`; one model of a "
        "multi-model stack).",
    )
    implementation: Annotated[EppImplementation, field_of(EppConfig, "implementation")]

    @property
    def gateway_stack(self) -> str:
        """The `llmd_stack` value of the Gateway proxies' (and the body router's) series: the stack
        owning them, so every model's dashboard of a multi-model stack reads the one monitor's series."""
        return self.gateway_instance or self.instance


class PoolAutoscalingArgs(ConfigModel):
    """The autoscalers of one stack's model-server pools (KEDA ScaledObjects or HPAs)."""

    instance: Instance = Field(description="Stack name (object names, the `llmd_stack` label).")
    namespace: DnsLabel = Field(description="Namespace of the stack.")
    disaggregated: bool = Field(description="Prefill and decode pools, scaled independently.")
    workloads: dict[Role, str] = Field(description="The Deployment of each role (what is scaled).")
    settings: AutoscalingConfig = Field(description="The autoscaling section.")
