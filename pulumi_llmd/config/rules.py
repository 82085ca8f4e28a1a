"""Rules that involve more than one key, checked after every key is individually valid."""

from __future__ import annotations

import re
from typing import Literal

from pulumi_llmd.config.errors import Problem
from pulumi_llmd.config.gateways import (
    GKE_CLASS_PREFIX,
    KGATEWAY_INFERENCE_LINE,
    GatewayProvider,
)
from pulumi_llmd.config.models import (
    BodyRouterConfig,
    DecodeConfig,
    Engine,
    EppConfig,
    FailureMode,
    LlmdStackConfig,
    ModelConfig,
    PlatformName,
    PrefillConfig,
    ServedModel,
    StackConfig,
)
from pulumi_llmd.config.precise import PrefixCacheMode, pool_env_problems, precise_problems

# How a stack program gets the Hugging Face token (LlmdStack's own callers pass hfToken instead).
STACK_HF_TOKEN_HINT = "run `pulumi config set --secret llmd:hfToken <token>`"
# Object-name prefix of a model (``<name>`` or ``<name>-<id>``): what llmd:name allows, so every name
# derived from it (``<prefix>-prefill-ingress`` ...) stays a DNS label.
MAX_PREFIX = 40
# Gateway API v1.6.1 HTTPRoute: spec.rules maxItems 16, and a CEL rule caps the matches of all rules
# together at 128 (gateway.networking.k8s.io_httproutes.yaml).
MAX_ROUTE_RULES = 16
MAX_ROUTE_MATCHES = 128


def cross_field_problems(config: StackConfig, *, has_hf_token: bool) -> list[Problem]:
    """Every rule for a whole stack config: the platform's, then :func:`stack_problems`."""
    problems = _platform_section_problems(config)
    if config.gateway.provider is GatewayProvider.GKE and config.platform is not PlatformName.GKE:
        problems.append(
            Problem(
                "gateway.provider",
                f"gke needs llmd:platform gke (GKE's managed Gateway controller); llmd:platform is "
                f"{config.platform.value}: choose agentgateway, istio or kgateway",
            )
        )
    problems += stack_problems(config, has_hf_token=has_hf_token, hf_token_hint=STACK_HF_TOKEN_HINT)
    problems += _kind_problems(config)
    problems += _operator_namespace_problems(config)
    return _dedupe(problems)


def _operator_namespace_problems(config: StackConfig) -> list[Problem]:
    """The on-prem operators' namespaces are created (and owned) by their charts' component, as the
    stack's and the gateway control plane's are by theirs: one namespace for two of them is two Pulumi
    resources for one object (the second create fails, a delete removes the other's objects)."""
    if config.platform is not PlatformName.ONPREM or config.onprem is None:
        return []
    owners = {config.namespace: "the stack (llmd:namespace)"}
    gateway = config.gateway
    if gateway.installs_control_plane and gateway.effective_namespace:
        owners.setdefault(
            gateway.effective_namespace, f"the {gateway.provider.value} control plane (gateway.namespace)"
        )
    problems: list[Problem] = []
    for key, chart in (
        ("gpuOperator", config.onprem.gpu_operator),
        ("networkOperator", config.onprem.network_operator),
    ):
        if not chart.install:
            continue
        if (owner := owners.get(chart.namespace)) is not None:
            problems.append(
                Problem(
                    f"onprem.{key}.namespace",
                    f"is {chart.namespace!r}, the namespace of {owner} too, and each creates and owns its "
                    "namespace: give the operator its own (or set install: false and install it yourself)",
                )
            )
        owners.setdefault(chart.namespace, f"the {key} (onprem.{key}.namespace)")
    return problems


def _platform_section_problems(config: StackConfig) -> list[Problem]:
    problems: list[Problem] = []
    platform = config.platform

    sections: dict[str, object] = {
        "onprem": config.onprem,
        "kind": config.kind,
        "gke": config.gke,
        "eks": config.eks,
    }
    if platform is not PlatformName.KIND and sections[platform.value] is None:
        problems.append(Problem(platform.value, f"is required when llmd:platform is {platform.value}"))
    for key, section in sections.items():
        if section is not None and key != platform.value:
            problems.append(
                Problem(
                    key, f"is set but llmd:platform is {platform.value}: remove it or change the platform"
                )
            )
    return problems


BodyRouterProvider = Literal["istio", "gke", "agentgateway"]


def body_router_provider(provider: GatewayProvider) -> BodyRouterProvider | None:
    """How the body router attaches to the provider's Gateway: ``istio`` (an EnvoyFilter, as
    llm-d-inference-payload-processor's chart does: config/charts/payload-processor/templates/istio.yaml),
    ``gke`` (a GCPRoutingExtension, same chart, gke.yaml), ``agentgateway`` (a PreRouting
    AgentgatewayPolicy with extProc, agentgateway.dev/v1alpha1 as agentgateway v1.4.1 defines it), or
    None for kgateway 2.1: its Envoy data plane runs no ext_proc before routing that we could rely on
    (kgateway-dev/kgateway#11568 is open), and its agentgateway data plane is configured through
    kgateway 2.1's own TrafficPolicy (gateway.kgateway.dev), not agentgateway.dev's AgentgatewayPolicy,
    which arrived with the 2.2 split (shared reference gateways.md, section 1)."""
    if provider is GatewayProvider.ISTIO:
        return "istio"
    if provider is GatewayProvider.GKE:
        return "gke"
    if provider is GatewayProvider.AGENTGATEWAY:
        return "agentgateway"
    return None


def stack_problems(config: LlmdStackConfig, *, has_hf_token: bool, hf_token_hint: str) -> list[Problem]:
    """The rules of what LlmdStack lays on a cluster, whichever platform it came from."""
    problems = _form_problems(config)
    served = config.served()
    if not served:
        return problems
    for model in served:
        problems += _pool_problems(model)
        problems += _epp_tls_problems(model, config)
        problems += precise_problems(
            model.model, model.epp, model_key=model.key, epp_key=model.section_key("epp")
        )
        problems += _flow_control_problems(model, config)
        problems += _lora_problems(model)
        problems += _rewrite_problems(model)
        if needs_token(model.model) and not has_hf_token:
            problems.append(
                Problem(
                    "hfToken", f"is required for {model.model_key('uri')} {model.model.uri}: {hf_token_hint}"
                )
            )
        elif model.model.engine is Engine.VLLM and not has_hf_token:
            for index, adapter in enumerate(model.model.lora.adapters):
                if adapter.source == "hf":
                    problems.append(
                        Problem(
                            "hfToken",
                            f"is required for {model.model_key(f'lora.adapters[{index}].uri')} "
                            f"{adapter.uri}: {hf_token_hint}",
                        )
                    )
    problems += _unique_name_problems(served)
    problems += _autoscaling_problems(config)
    if config.multi_model:
        problems += _multi_model_problems(config, served)
    problems += gateway_problems(config)
    return _dedupe(problems)


def needs_token(model: ModelConfig) -> bool:
    return model.source == "hf" and model.engine is Engine.VLLM


def _form_problems(config: LlmdStackConfig) -> list[Problem]:
    """``llmd:model`` (one model, the pools and picker at the top level) or ``llmd:models`` (each entry
    with its own), never both; the top-level sections of the other form stay unset."""
    if config.model is None and config.models is None:
        return [Problem("model", "is required (one model; or set llmd:models for several)")]
    if config.model is not None and config.models is not None:
        return [Problem("models", "is set together with llmd:model: use one of them")]
    problems: list[Problem] = []
    if config.models is not None:
        # Set keys are indistinguishable from defaults once validated (LlmdStack's args carry every
        # section), so "set" means "differs from the default".
        for key, section, default in (
            ("prefill", config.prefill, PrefillConfig()),
            ("decode", config.decode, DecodeConfig()),
            ("epp", config.epp, EppConfig()),
        ):
            if section != default:
                problems.append(
                    Problem(key, f"is set but llmd:models is used: each models[] entry has its own {key}")
                )
    elif config.body_router != BodyRouterConfig():
        problems.append(
            Problem(
                "bodyRouter", "is set but the stack serves one model (llmd:model); it runs with llmd:models"
            )
        )
    return problems


def _pool_problems(model: ServedModel) -> list[Problem]:
    problems: list[Problem] = []
    prefill_key = model.section_key("prefill")
    if model.prefill.enabled and model.prefill.replicas < 1:
        problems.append(
            Problem(
                f"{prefill_key}.replicas",
                "must be >= 1 when prefill.enabled is true (P/D disaggregation)"
                f" (got {model.prefill.replicas}); set {prefill_key}.enabled: false for a decode-only pool",
            )
        )
    simulated = model.model.engine is Engine.SIMULATOR
    for role, pool in (("prefill", model.prefill), ("decode", model.decode)):
        if role == "prefill" and not model.prefill.enabled:
            continue
        key = model.section_key(role)
        if simulated and pool.nodes_per_replica > 1:
            problems.append(
                Problem(
                    f"{key}.nodesPerReplica",
                    f"must be 1 with {model.model_key('engine')} simulator (got {pool.nodes_per_replica})",
                )
            )
        if simulated and pool.accelerators_per_pod() > 0:
            problems.append(
                Problem(
                    f"{key}.accelerator.count",
                    f"must be 0 with {model.model_key('engine')} simulator (the simulator needs no GPU)"
                    f" (got {pool.accelerators_per_pod()})",
                )
            )
        surge, unavailable = pool.rollout_strategy()
        if surge == 0 and unavailable == 0:
            problems.append(
                Problem(
                    f"{key}.rollout.maxUnavailable",
                    "must be >= 1 when rollout.maxSurge is 0 (a rollout could neither add nor replace a pod)",
                )
            )
        if model.epp.prefix_cache is PrefixCacheMode.PRECISE:
            problems += pool_env_problems(
                pool.env, env_key=f"{key}.env", mode_key=f"{model.section_key('epp')}.prefixCache"
            )
        if pool.nodes_per_replica > 1 and pool.accelerator.count not in (None, pool.tensor_parallel):
            problems.append(
                Problem(
                    f"{key}.accelerator.count",
                    "must equal tensorParallel when nodesPerReplica > 1 (each node runs one tensor-parallel"
                    f" stage) (got {pool.accelerator.count})",
                )
            )
    epp_key = model.section_key("epp")
    if model.epp.leader_election and model.epp.replicas < 2:
        problems.append(
            Problem(f"{epp_key}.leaderElection", f"needs epp.replicas >= 2 (got {model.epp.replicas})")
        )
    return problems


def _epp_tls_problems(model: ServedModel, config: LlmdStackConfig) -> list[Problem]:
    epp, gateway = model.epp, config.gateway
    epp_key = model.section_key("epp")
    problems: list[Problem] = []
    if epp.tls_secret_name is not None and not epp.secure_serving:
        problems.append(
            Problem(
                f"{epp_key}.tlsSecretName",
                "needs epp.secureServing true (the certificate serves the TLS port)",
            )
        )
    if not epp.secure_serving and gateway.pins.dials_epp_with_tls:
        # kgateway builds the ext_proc cluster with TLS (endpointpicker plugin.go, buildExtProcCluster)
        # and agentgateway adds a BackendTLS policy for the EPP (inference_plugin.go), always.
        problems.append(
            Problem(
                f"{epp_key}.secureServing",
                f"must be true with gateway provider {gateway.provider.value}: it always dials the EPP over "
                "TLS, so a plaintext EPP would fail every request",
            )
        )
    return problems


def _flow_control_problems(model: ServedModel, config: LlmdStackConfig) -> list[Problem]:
    flow = model.epp.flow_control
    if not flow.enabled or model.epp.config is not None:
        return []
    # The gateway must wait at least as long as a request may queue in the EPP, or it cuts the
    # request off before flow control answers with its 429/503.
    problems: list[Problem] = []
    route = go_seconds(config.gateway.request_timeout)
    for key, ttl in (
        ("defaultRequestTTL", flow.default_request_TTL),
        ("noEndpointRequestTTL", flow.no_endpoint_request_TTL),
    ):
        if ttl is not None and (go_seconds(ttl) == 0 or go_seconds(ttl) >= route):
            problems.append(
                Problem(
                    f"{model.section_key('epp')}.flowControl.{key}",
                    f"must be shorter than gateway.requestTimeout ({config.gateway.request_timeout}), "
                    f"or queued requests are cut off by the gateway (got {ttl})",
                )
            )
    return problems


def gateway_problems(config: LlmdStackConfig) -> list[Problem]:
    """Combinations of gateway keys a provider cannot serve (every unset key follows the provider)."""
    gateway, crds = config.gateway, config.crds
    provider = gateway.provider
    pins = gateway.pins
    problems: list[Problem] = []
    if gateway.kgateway_data_plane is not None and provider is not GatewayProvider.KGATEWAY:
        problems.append(
            Problem(
                "gateway.kgatewayDataPlane",
                f"applies to provider kgateway only (provider is {provider.value})",
            )
        )
    if provider is GatewayProvider.GKE:
        for key, value in (("version", gateway.version), ("namespace", gateway.namespace)):
            if value is not None:
                problems.append(
                    Problem(
                        f"gateway.{key}",
                        "must be unset with provider gke (GKE runs its own gateway controller)",
                    )
                )
        if crds.gateway_api_version is not None:
            problems.append(
                Problem(
                    "crds.gatewayApiVersion",
                    "must be unset with gateway provider gke: GKE installs and upgrades the Gateway API CRDs",
                )
            )
        if not gateway.effective_class_name.startswith(GKE_CLASS_PREFIX):
            problems.append(
                Problem(
                    "gateway.className",
                    f"must be a GKE managed class ({GKE_CLASS_PREFIX}…, e.g. "
                    "gke-l7-regional-external-managed or gke-l7-rilb) with provider gke "
                    f"(got {gateway.effective_class_name!r})",
                )
            )
    elif gateway.effective_class_name.startswith(GKE_CLASS_PREFIX):
        problems.append(
            Problem(
                "gateway.className",
                f"{gateway.effective_class_name!r} is GKE's managed class: set gateway.provider gke "
                "to use it",
            )
        )
    version = gateway.version
    if version is not None:
        if provider is GatewayProvider.KGATEWAY and not version.startswith(KGATEWAY_INFERENCE_LINE):
            problems.append(
                Problem(
                    "gateway.version",
                    f"must be a kgateway {KGATEWAY_INFERENCE_LINE}x release (got {version}): later lines "
                    "dropped inference support; set gateway.provider agentgateway instead",
                )
            )
        if provider is GatewayProvider.ISTIO and version.startswith("v"):
            problems.append(
                Problem(
                    "gateway.version", f"is an Istio chart version without the v, e.g. 1.30.3 (got {version})"
                )
            )
        if provider in (GatewayProvider.AGENTGATEWAY, GatewayProvider.KGATEWAY) and not version.startswith(
            "v"
        ):
            problems.append(
                Problem(
                    "gateway.version",
                    f"is a {provider.value} chart tag with the v, e.g. v1.4.1 (got {version})",
                )
            )
    if pins.gateway_api_minors is not None and crds.gateway_api_version is not None:
        low, high = pins.gateway_api_minors
        minor = int(crds.gateway_api_version.split(".")[1])
        if not low <= minor <= high:
            problems.append(
                Problem(
                    "crds.gatewayApiVersion",
                    f"must be a Gateway API v1.{low}.x release with gateway provider {provider.value} "
                    f"(got {crds.gateway_api_version})"
                    if low == high
                    else f"must be Gateway API v1.{low}-v1.{high} with gateway provider {provider.value}",
                )
            )
    if pins.kubernetes_minors is not None:
        low, high = pins.kubernetes_minors
        minor = int(config.kubernetes_version.split(".")[1])
        if not low <= minor <= high:
            problems.append(
                Problem(
                    "kubernetesVersion",
                    f"must be 1.{low}-1.{high} with gateway provider {provider.value} (its documented range; "
                    f"got {config.kubernetes_version})",
                )
            )
    if config.network_policy.enabled and not pins.in_cluster_proxies:
        # The policies admit the gateway's proxy pods by label; a cloud-managed gateway has no pods in
        # the cluster, so with them on every request would be dropped.
        problems.append(
            Problem(
                "networkPolicy.enabled",
                f"must be false with gateway provider {provider.value} (its proxies are Google's load "
                "balancers, not pods the policies can select)",
            )
        )
    if gateway.installs_control_plane and gateway.effective_namespace == config.namespace:
        # LlmdStack and GatewayControlPlane each register (and own) a Namespace object; two Pulumi
        # resources for one namespace make `pulumi up` fail on the second create ("already exists"),
        # and deleting either would delete the namespace under the other.
        problems.append(
            Problem(
                "gateway.namespace" if gateway.namespace is not None else "namespace",
                f"is {config.namespace!r} for both the stack and the {provider.value} control plane, which "
                "each create their own namespace: use another one for either (or set gateway.install: "
                "false and install the control plane yourself)",
            )
        )
    return problems


def _lora_problems(model: ServedModel) -> list[Problem]:
    lora = model.model.lora
    problems: list[Problem] = []
    for index, adapter in enumerate(lora.adapters):
        if adapter.uri is None and not lora.runtime_loading:
            problems.append(
                Problem(
                    model.model_key(f"lora.adapters[{index}].uri"),
                    "is required unless lora.runtimeLoading is true (a static adapter is loaded from it at "
                    "start-up)",
                )
            )
    if lora.resolver_dir is not None and not lora.runtime_loading:
        problems.append(
            Problem(
                model.model_key("lora.resolverDir"),
                "needs lora.runtimeLoading: true (vLLM resolves adapters only with runtime updates on)",
            )
        )
    if lora.max_cpu_loras is not None and lora.max_cpu_loras < (lora.max_loras or 1):
        problems.append(
            Problem(
                model.model_key("lora.maxCpuLoras"),
                f"must be >= lora.maxLoras ({lora.max_loras or 1}), as vLLM requires"
                f" (got {lora.max_cpu_loras})",
            )
        )
    if not lora.enabled and (lora.max_loras or lora.max_lora_rank or lora.max_cpu_loras):
        problems.append(
            Problem(
                model.model_key("lora"),
                "sets LoRA limits but no adapters and no runtimeLoading: vLLM would run without LoRA",
            )
        )
    return problems


def _rewrite_problems(model: ServedModel) -> list[Problem]:
    problems: list[Problem] = []
    targets_allowed = {model.model.name, *model.model.adapter_names}
    seen: dict[str, int] = {}
    for index, rule in enumerate(model.model.rewrites):
        key = model.model_key(f"rewrites[{index}]")
        if rule.model in seen:
            problems.append(
                Problem(f"{key}.model", f"{rule.model!r} already has a rule (rewrites[{seen[rule.model]}])")
            )
        seen.setdefault(rule.model, index)
        weighted = [target.weight is not None for target in rule.targets]
        if any(weighted) and not all(weighted):
            problems.append(
                Problem(
                    f"{key}.targets",
                    "set weight on every target or on none (llm-d never sends traffic to the unweighted "
                    "targets of a weighted rule)",
                )
            )
        for position, target in enumerate(rule.targets):
            if target.model not in targets_allowed:
                problems.append(
                    Problem(
                        f"{key}.targets[{position}].model",
                        f"{target.model!r} is neither {model.model_key('name')} nor one of its lora.adapters "
                        f"({', '.join(sorted(targets_allowed))})",
                    )
                )
    return problems


def _unique_name_problems(served: list[ServedModel]) -> list[Problem]:
    """Every name a request may carry picks one model (the body router routes by it, and the pools'
    pickers would each accept it), and every objective is one object in the namespace."""
    problems: list[Problem] = []
    owners: dict[str, str] = {}
    objectives: dict[str, str] = {}
    for model in served:
        names = [(model.model_key("name"), model.model.name)]
        names += [
            (model.model_key(f"lora.adapters[{i}].name"), a.name)
            for i, a in enumerate(model.model.lora.adapters)
        ]
        for key, name in names:
            if name in owners:
                problems.append(
                    Problem(
                        key,
                        f"{name!r} is already served by {owners[name]}: model and adapter names must be"
                        " unique",
                    )
                )
            owners.setdefault(name, key)
        for index, rule in enumerate(model.model.rewrites):
            owner = owners.get(rule.model)
            if owner is not None and not owner.startswith(f"{model.key}."):
                problems.append(
                    Problem(
                        model.model_key(f"rewrites[{index}].model"),
                        f"{rule.model!r} is served by {owner}: a rewrite may take in only names of its own"
                        " model",
                    )
                )
            owners.setdefault(rule.model, model.model_key(f"rewrites[{index}].model"))
        for index, objective in enumerate(model.model.objectives):
            key = model.model_key(f"objectives[{index}].name")
            if objective.name in objectives:
                problems.append(
                    Problem(
                        key,
                        f"{objective.name!r} is also {objectives[objective.name]}: InferenceObjective names"
                        " are unique in the namespace",
                    )
                )
            objectives.setdefault(objective.name, key)
    return problems


def _multi_model_problems(config: LlmdStackConfig, served: list[ServedModel]) -> list[Problem]:
    problems: list[Problem] = []
    ids: dict[str, str] = {}
    labels: dict[str, str] = {}
    for model in served:
        id_key = model.model_key("id")
        if model.prefix in ids:
            problems.append(
                Problem(
                    id_key,
                    f"gives the object prefix {model.prefix!r} of {ids[model.prefix]}: set distinct ids",
                )
            )
        ids.setdefault(model.prefix, id_key)
        if len(model.prefix) > MAX_PREFIX:
            problems.append(
                Problem(
                    id_key,
                    f"makes the object prefix {model.prefix!r} {len(model.prefix)} characters long; with"
                    f" llmd:name {config.name!r} at most {MAX_PREFIX} fit (set a shorter id)",
                )
            )
        label = model.model.label_value
        if label in labels:
            problems.append(
                Problem(
                    model.model_key("label"),
                    f"{label!r} is also the llm-d.ai/model label of {labels[label]}: the two pools would"
                    " select each other's pods",
                )
            )
        labels.setdefault(label, model.model_key("label"))
    if body_router_provider(config.gateway.provider) is None:
        problems.append(
            Problem(
                "gateway.provider",
                f"is {config.gateway.provider.value}, which cannot run the body router before routing;"
                " llmd:models needs agentgateway, istio or gke (kgateway 2.1's Envoy data plane has no"
                " supported pre-routing ext_proc, kgateway-dev/kgateway#11568, and its agentgateway data"
                " plane takes kgateway's own TrafficPolicy, not agentgateway's AgentgatewayPolicy)",
            )
        )
    # One HTTPRoute rule per model (and a catch-all when the router fails open), each matching every
    # gateway.paths entry: Gateway API v1.6.1's HTTPRoute allows 16 rules and 128 matches in all.
    rules = len(served) + (1 if config.body_router.failure_mode is FailureMode.FAIL_OPEN else 0)
    matches = rules * len(config.gateway.paths)
    if rules > MAX_ROUTE_RULES:
        problems.append(
            Problem(
                "models",
                f"has {len(served)} models: the HTTPRoute would need {rules} rules, Gateway API allows"
                f" {MAX_ROUTE_RULES}",
            )
        )
    elif matches > MAX_ROUTE_MATCHES:
        problems.append(
            Problem(
                "gateway.paths",
                f"has {len(config.gateway.paths)} paths: with {rules} route rules that is {matches} matches,"
                f" Gateway API allows {MAX_ROUTE_MATCHES} per HTTPRoute (list fewer paths or serve fewer"
                " models)",
            )
        )
    router = config.body_router
    if router.tls_secret_name is not None and not router.secure_serving:
        problems.append(Problem("bodyRouter.tlsSecretName", "is set but bodyRouter.secureServing is false"))
    return problems


def _autoscaling_problems(config: LlmdStackConfig) -> list[Problem]:
    """``llmd:autoscaling`` applies to every model's pools alike (each model gets its own autoscalers)."""
    scaling = config.autoscaling
    if not scaling.enabled:
        return []
    problems: list[Problem] = []
    for model in config.served():
        roles = (("prefill", model.prefill, scaling.prefill), ("decode", model.decode, scaling.decode))
        for key, pool, autoscaler in roles:
            if key == "prefill" and not model.prefill.enabled:
                continue
            if autoscaler.min_replicas > autoscaler.max_replicas:
                problems.append(
                    Problem(
                        f"autoscaling.{key}.minReplicas",
                        f"must be <= autoscaling.{key}.maxReplicas (got {autoscaler.min_replicas} > "
                        f"{autoscaler.max_replicas})",
                    )
                )
            if pool.nodes_per_replica > 1:
                section = model.section_key(key)
                problems.append(
                    Problem(
                        "autoscaling.enabled",
                        f"is not supported for {section} with nodesPerReplica > 1 (a LeaderWorkerSet);"
                        f" scale it by {section}.replicas",
                    )
                )
    return problems


def _kind_problems(config: StackConfig) -> list[Problem]:
    problems: list[Problem] = []
    if config.platform is not PlatformName.KIND:
        return problems
    for model in config.served():
        if model.model.engine is Engine.SIMULATOR:
            continue
        for role, pool in (("prefill", model.prefill), ("decode", model.decode)):
            if pool.accelerators_per_pod() > 0 and not (role == "prefill" and not model.prefill.enabled):
                problems.append(
                    Problem(
                        f"{model.section_key(role)}.accelerator.count",
                        f"must be 0 on platform kind (no GPUs) (got {pool.accelerators_per_pod()})",
                    )
                )
    return problems


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_seconds(text: str) -> float:
    """A Go duration the models' patterns admit ("300s", "1m30s", "500ms", "0") in seconds."""
    return sum(float(n) * _GO_UNITS[u] for n, u in re.findall(r"([0-9.]+)(ns|us|ms|s|m|h)", text))


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for problem in problems:
        if (problem.path, problem.message) not in seen:
            seen.add((problem.path, problem.message))
            unique.append(problem)
    return unique
