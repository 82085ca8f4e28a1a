"""Rules that involve more than one key, checked after every key is individually valid."""

from __future__ import annotations

import re

from pulumi_llmd.config.errors import Problem
from pulumi_llmd.config.models import Engine, PlatformName, StackConfig

# GatewayClasses whose data plane runs outside the cluster (GKE's Gateway controller).
MANAGED_GATEWAY_CLASS_PREFIXES = ("gke-l7-",)


def cross_field_problems(config: StackConfig, *, has_hf_token: bool) -> list[Problem]:
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
                f"is required for model.uri {config.model.uri}: run"
                " `pulumi config set --secret llmd:hfToken <token>`",
            )
        )
    if config.epp.secure_serving and config.epp.tls_secret_name is None:
        problems.append(
            Problem("epp.tlsSecretName", "is required when epp.secureServing is true (the EPP's certificate)")
        )
    if config.network_policy.enabled and config.gateway.class_name.startswith(MANAGED_GATEWAY_CLASS_PREFIXES):
        # The policies admit the gateway's proxy pods by label; a cloud-managed gateway has no pods in
        # the cluster, so with them on every request would be dropped.
        problems.append(
            Problem(
                "networkPolicy.enabled",
                f"must be false with the managed gateway class {config.gateway.class_name!r}"
                " (its proxies are not pods the policies can select)",
            )
        )
    flow = config.epp.flow_control
    if flow.enabled and config.epp.config is None:
        # The gateway must wait at least as long as a request may queue in the EPP, or it cuts the
        # request off before flow control answers with its 429/503.
        route = go_seconds(config.gateway.request_timeout)
        for key, ttl in (
            ("defaultRequestTTL", flow.default_request_ttl),
            ("noEndpointRequestTTL", flow.no_endpoint_request_ttl),
        ):
            if ttl is not None and (go_seconds(ttl) == 0 or go_seconds(ttl) >= route):
                problems.append(
                    Problem(
                        f"epp.flowControl.{key}",
                        f"must be shorter than gateway.requestTimeout ({config.gateway.request_timeout}), "
                        f"or queued requests are cut off by the gateway (got {ttl})",
                    )
                )
    if config.epp.leader_election and config.epp.replicas < 2:
        problems.append(Problem("epp.leaderElection", f"needs epp.replicas >= 2 (got {config.epp.replicas})"))
    if platform is PlatformName.KIND and not simulated:
        for key, pool in (("prefill", config.prefill), ("decode", config.decode)):
            if pool.accelerators_per_pod() > 0 and not (key == "prefill" and not config.prefill.enabled):
                problems.append(
                    Problem(
                        f"{key}.accelerator.count",
                        f"must be 0 on platform kind (no GPUs) (got {pool.accelerators_per_pod()})",
                    )
                )
    return _dedupe(problems)


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
