"""Rules that involve more than one key, checked after every key is individually valid."""

from __future__ import annotations

import re

from pulumi_llmd.config.errors import Problem
from pulumi_llmd.config.gateways import (
    GKE_CLASS_PREFIX,
    KGATEWAY_INFERENCE_LINE,
    GatewayProvider,
)
from pulumi_llmd.config.models import Engine, LlmdStackConfig, PlatformName, StackConfig
from pulumi_llmd.config.precise import PrefixCacheMode, pool_env_problems, precise_problems

# How a stack program gets the Hugging Face token (LlmdStack's own callers pass hfToken instead).
STACK_HF_TOKEN_HINT = "run `pulumi config set --secret llmd:hfToken <token>`"


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
    return _dedupe(problems)


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


def stack_problems(config: LlmdStackConfig, *, has_hf_token: bool, hf_token_hint: str) -> list[Problem]:
    """The rules of what LlmdStack lays on a cluster, whichever platform it came from."""
    problems: list[Problem] = []
    if config.prefill.enabled and config.prefill.replicas < 1:
        problems.append(
            Problem(
                "prefill.replicas",
                "must be >= 1 when prefill.enabled is true (P/D disaggregation)"
                f" (got {config.prefill.replicas}); set prefill.enabled: false for a decode-only pool",
            )
        )

    simulated = config.model.engine is Engine.SIMULATOR
    for key, pool in (("prefill", config.prefill), ("decode", config.decode)):
        if key == "prefill" and not config.prefill.enabled:
            continue
        if simulated and pool.nodes_per_replica > 1:
            problems.append(
                Problem(
                    f"{key}.nodesPerReplica",
                    f"must be 1 with model.engine simulator (got {pool.nodes_per_replica})",
                )
            )
        if simulated and pool.accelerators_per_pod() > 0:
            problems.append(
                Problem(
                    f"{key}.accelerator.count",
                    "must be 0 with model.engine simulator (the simulator needs no GPU)"
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
        if config.epp.prefix_cache is PrefixCacheMode.PRECISE:
            problems += pool_env_problems(pool.env, env_key=f"{key}.env", mode_key="epp.prefixCache")
        if pool.nodes_per_replica > 1 and pool.accelerator.count not in (None, pool.tensor_parallel):
            problems.append(
                Problem(
                    f"{key}.accelerator.count",
                    "must equal tensorParallel when nodesPerReplica > 1 (each node runs one tensor-parallel"
                    f" stage) (got {pool.accelerator.count})",
                )
            )

    if config.model.source == "hf" and not simulated and not has_hf_token:
        problems.append(
            Problem(
                "hfToken",
                f"is required for model.uri {config.model.uri}: {hf_token_hint}",
            )
        )
    problems += _epp_tls_problems(config)
    problems += precise_problems(config.model, config.epp, model_key="model", epp_key="epp")
    problems += gateway_problems(config)
    if config.epp.leader_election and config.epp.replicas < 2:
        problems.append(Problem("epp.leaderElection", f"needs epp.replicas >= 2 (got {config.epp.replicas})"))
    return _dedupe(problems)


def _epp_tls_problems(config: LlmdStackConfig) -> list[Problem]:
    epp, gateway = config.epp, config.gateway
    problems: list[Problem] = []
    if epp.tls_secret_name is not None and not epp.secure_serving:
        problems.append(
            Problem("epp.tlsSecretName", "needs epp.secureServing true (the certificate serves the TLS port)")
        )
    if not epp.secure_serving and gateway.pins.dials_epp_with_tls:
        # kgateway builds the ext_proc cluster with TLS (endpointpicker plugin.go, buildExtProcCluster)
        # and agentgateway adds a BackendTLS policy for the EPP (inference_plugin.go), always.
        problems.append(
            Problem(
                "epp.secureServing",
                f"must be true with gateway provider {gateway.provider.value}: it always dials the EPP over "
                "TLS, so a plaintext EPP would fail every request",
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
    flow = config.epp.flow_control
    if flow.enabled and config.epp.config is None:
        # The gateway must wait at least as long as a request may queue in the EPP, or it cuts the
        # request off before flow control answers with its 429/503.
        route = go_seconds(config.gateway.request_timeout)
        for key, ttl in (
            ("defaultRequestTTL", flow.default_request_TTL),
            ("noEndpointRequestTTL", flow.no_endpoint_request_TTL),
        ):
            if ttl is not None and (go_seconds(ttl) == 0 or go_seconds(ttl) >= route):
                problems.append(
                    Problem(
                        f"epp.flowControl.{key}",
                        f"must be shorter than gateway.requestTimeout ({config.gateway.request_timeout}), "
                        f"or queued requests are cut off by the gateway (got {ttl})",
                    )
                )
    problems += _autoscaling_problems(config)
    if config.epp.leader_election and config.epp.replicas < 2:
        problems.append(Problem("epp.leaderElection", f"needs epp.replicas >= 2 (got {config.epp.replicas})"))
    return _dedupe(problems)


def _autoscaling_problems(config: LlmdStackConfig) -> list[Problem]:
    scaling = config.autoscaling
    if not scaling.enabled:
        return []
    problems: list[Problem] = []
    roles = (("prefill", config.prefill, scaling.prefill), ("decode", config.decode, scaling.decode))
    for key, pool, autoscaler in roles:
        if key == "prefill" and not config.prefill.enabled:
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
            problems.append(
                Problem(
                    "autoscaling.enabled",
                    f"is not supported for {key} with nodesPerReplica > 1 (a LeaderWorkerSet); scale it by "
                    f"{key}.replicas",
                )
            )
    return problems


def _kind_problems(config: StackConfig) -> list[Problem]:
    problems: list[Problem] = []
    if config.platform is PlatformName.KIND and config.model.engine is not Engine.SIMULATOR:
        for key, pool in (("prefill", config.prefill), ("decode", config.decode)):
            if pool.accelerators_per_pod() > 0 and not (key == "prefill" and not config.prefill.enabled):
                problems.append(
                    Problem(
                        f"{key}.accelerator.count",
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
