"""Two components in one program whose children would share URNs fail early, naming the arg.

A URN is made of the parents' types and the resource's own name, so two LlmdStacks with the same
`name` (even in different namespaces), or two that both install the CRDs or a gateway control plane,
register children under one URN: the engine stops `pulumi up` with "Duplicate resource URN" partway.
Pulumi's mock monitor lets duplicates through, so these tests count URNs themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from pulumi_llmd.components.args import EndpointPickerArgs, InferenceGatewayArgs, ModelServerPoolArgs
from pulumi_llmd.components.gateway import InferenceGateway, gateway_manifests
from pulumi_llmd.components.inputs import InferenceGatewayInputs
from pulumi_llmd.components.modelserver import ModelServerPool
from pulumi_llmd.components.naming import Role
from pulumi_llmd.components.picker import EndpointPicker
from pulumi_llmd.config import ConfigError
from render.engine import Registration, run_program

SIMULATED: dict[str, Any] = {
    "model": {"name": "m", "uri": "hf://o/m", "engine": "simulator"},
    "prefill": {"accelerator": {"count": 0}},
    "decode": {"accelerator": {"count": 0}},
}
SHARED_OFF: dict[str, Any] = {"crds": {"install": False}, "gateway": {"install": False}}


def run(program: Callable[[], None]) -> list[Registration]:
    registrations, _ = run_program("claims", {}, program=program)
    return registrations


def engine_urns(registrations: list[Registration]) -> list[str]:
    """The URNs the engine would give: its qualified type is every parent's type, outermost first
    (Pulumi's NewURN takes the parent URN's QualifiedType). The mock monitor prefixes only the
    immediate parent's type, which would both hide and invent duplicates here."""
    by_urn = {r.urn: r for r in registrations}

    def qualified(registration: Registration) -> str:
        parent = by_urn.get(registration.parent)
        if parent is None:  # the root stack (or no parent)
            return registration.pulumi_type
        return f"{qualified(parent)}${registration.pulumi_type}"

    return [f"{qualified(r)}::{r.name}" for r in registrations]


def duplicate_urns(registrations: list[Registration]) -> list[str]:
    return sorted(urn for urn, count in Counter(engine_urns(registrations)).items() if count > 1)


def failure(program: Callable[[], None]) -> tuple[ConfigError, list[Registration]]:
    """The ConfigError the program raises, and everything registered in the run (the program stops at
    the error; the run still completes, so what was registered before it can be inspected)."""
    raised: list[ConfigError] = []

    def wrapped() -> None:
        try:
            program()
        except ConfigError as error:
            raised.append(error)

    registrations = run(wrapped)
    assert len(raised) == 1, "the program did not fail"
    return raised[0], registrations


def stacks(*args_of: dict[str, Any]) -> Callable[[], None]:
    from pulumi_llmd import LlmdStack, LlmdStackArgs

    def program() -> None:
        for index, args in enumerate(args_of):
            LlmdStack(f"s{index}", LlmdStackArgs(**{**SIMULATED, **args}))  # type: ignore[typeddict-item]

    return program


def test_two_stacks_with_one_name_in_two_namespaces_name_the_key() -> None:
    error, registrations = failure(stacks({"namespace": "team-a"}, {"namespace": "team-b", **SHARED_OFF}))
    assert [(p.path, p.message.split(" in this program")[0]) for p in error.problems] == [
        ("name", "'llmd' already claimed as name prefix by LlmdStack 's0'")
    ]
    assert "invalid LlmdStack 's1' args" in str(error)
    # Before anything of the second stack is registered.
    assert [r.name for r in registrations if r.pulumi_type == "llmd:index:LlmdStack"] == ["s0"]
    assert not any(r.inputs.get("metadata", {}).get("namespace") == "team-b" for r in registrations)
    assert not duplicate_urns(registrations)


def test_two_stacks_installing_the_cluster_wide_pieces_name_both_keys() -> None:
    error, _ = failure(stacks({"name": "a", "namespace": "a"}, {"name": "b", "namespace": "b"}))
    assert [p.path for p in error.problems] == ["crds.install", "gateway.install"]
    assert "'gateway-api-v1.6.1'" in error.problems[0].message
    assert "set crds.install: false on the others" in error.problems[0].message
    assert "'agentgateway'" in error.problems[1].message


def test_two_stacks_in_one_namespace_name_the_namespace() -> None:
    error, _ = failure(stacks({"name": "a", "namespace": "x"}, {"name": "b", "namespace": "x", **SHARED_OFF}))
    assert [p.path for p in error.problems] == ["namespace"]


def test_a_model_prefix_equal_to_another_stacks_name_is_named_by_its_id() -> None:
    entry = {**SIMULATED["model"], "id": "x", "prefill": {"enabled": False}, "decode": SIMULATED["decode"]}
    models = {"name": "a", "namespace": "a", "models": [entry]}  # its objects are a-x-epp, a-x-decode ...

    def program() -> None:
        from pulumi_llmd import LlmdStack, LlmdStackArgs

        LlmdStack("first", LlmdStackArgs(**models))  # type: ignore[typeddict-item]
        LlmdStack("second", LlmdStackArgs(**{**SIMULATED, "name": "a-x", "namespace": "b", **SHARED_OFF}))

    error, _ = failure(program)
    assert [p.path for p in error.problems] == ["name"]
    assert "'a-x' already claimed as name prefix by LlmdStack 'first'" in error.problems[0].message


def test_the_documented_two_stack_program_still_has_distinct_urns() -> None:
    registrations = run(
        stacks({"name": "a", "namespace": "a"}, {"name": "b", "namespace": "b", **SHARED_OFF})
    )
    assert not duplicate_urns(registrations)
    assert sum(r.pulumi_type == "llmd:index:LlmdStack" for r in registrations) == 2


def test_claims_last_one_run() -> None:
    """Every `pulumi up` (every set_mocks) starts afresh: the same stack twice in two runs is fine."""
    program = stacks({"namespace": "team-a"})
    first, second = run(program), run(program)
    assert sorted(engine_urns(first)) == sorted(engine_urns(second))


def picker_args(pool: str, namespace: str) -> EndpointPickerArgs:
    return {
        "pool_name": pool,
        "namespace": namespace,
        "served_models": ["m"],
        "selector": {"app": pool},
        "disaggregated": False,
    }


def test_two_endpoint_pickers_for_one_pool_name_fail_before_registering() -> None:
    def program() -> None:
        EndpointPicker("first", picker_args("pool", "a"))
        EndpointPicker("second", picker_args("pool", "b"))

    error, registrations = failure(program)
    assert [p.path for p in error.problems] == ["poolName"]
    assert [r.name for r in registrations if r.pulumi_type == "llmd:index:EndpointPicker"] == ["first"]
    assert "'pool' already claimed as pool name by EndpointPicker 'first'" in error.problems[0].message

    def distinct() -> None:
        EndpointPicker("first", picker_args("pool-a", "a"))
        EndpointPicker("second", picker_args("pool-b", "a"))

    registrations = run(distinct)
    assert not duplicate_urns(registrations)
    assert sum(r.pulumi_type == "llmd:index:EndpointPicker" for r in registrations) == 2


def pool_args(instance: str, role: Role, namespace: str) -> ModelServerPoolArgs:
    return {
        "instance": instance,
        "namespace": namespace,
        "role": role,
        "model": SIMULATED["model"],
        "pool": {"accelerator": {"count": 0}},
        "disaggregated": True,
    }


def test_two_model_server_pools_for_one_workload_name_the_instance() -> None:
    def program() -> None:
        ModelServerPool("p", pool_args("t", Role.PREFILL, "a"))
        ModelServerPool("d", pool_args("t", Role.DECODE, "a"))  # another role: another workload
        ModelServerPool("d2", pool_args("t", Role.DECODE, "b"))

    error, _ = failure(program)
    assert [p.path for p in error.problems] == ["instance"]
    assert "'t-decode' already claimed as workload by ModelServerPool 'd'" in error.problems[0].message


def test_the_same_pool_name_under_different_parents_is_not_a_collision() -> None:
    """A standalone EndpointPicker and one inside an LlmdStack differ in their parents' types, so their
    URNs differ (and here their namespaces too)."""

    def program() -> None:
        stacks({"name": "pool", "namespace": "a"})()
        EndpointPicker("mine", picker_args("pool", "b"))

    registrations = run(program)
    assert not duplicate_urns(registrations)


def test_two_crd_installs_of_one_release_name_the_version_key() -> None:
    from pulumi_llmd.components.crds import ClusterCrds

    def program() -> None:
        ClusterCrds("first", {"gateway_api_version": "v1.6.1", "leader_worker_set": False})
        ClusterCrds("second", {"gateway_api_version": "v1.6.1", "leader_worker_set": True})

    error, _ = failure(program)
    # The inference-extension and llm-d-router releases default; LeaderWorkerSet only the second wants.
    paths = ["gatewayApiVersion", "inferenceExtensionVersion", "llmdRouterVersion"]
    assert [p.path for p in error.problems] == paths
    assert (
        "'gateway-api-v1.6.1' already claimed as CRD install by ClusterCrds 'first'"
        in error.problems[0].message
    )


# --- names a component derives with a suffix stay within Kubernetes' limits ------------------------


def gateway_args(pool: str, **extra: Any) -> InferenceGatewayArgs:
    return {"instance": "t", "namespace": "n", "pool_name": pool, "provider": "istio", **extra}  # type: ignore[typeddict-item]


def test_a_gateway_pool_name_too_long_for_its_epp_service_is_named() -> None:
    """The route's backends are EndpointPickers' pools: the Istio DestinationRule dials `<pool>-epp`,
    a Service name (a 63-character DNS label), so the pool name has EndpointPicker's limit of 40."""
    longest = "p" * 40
    (destination,) = [
        m
        for m in gateway_manifests(InferenceGatewayInputs.model_validate(gateway_args(longest)))
        if m["kind"] == "DestinationRule"
    ]
    service = destination["spec"]["host"].split(".")[0]
    assert service == f"{longest}-epp" and len(service) <= 63

    def program() -> None:
        route = {"model": "m", "pool_name": "q" * 41, "epp_secure_serving": True}
        InferenceGateway("g", gateway_args("p" * 41, model_routes=[route]))

    error, registrations = failure(program)
    assert [p.path for p in error.problems] == ["poolName", "modelRoutes[0].poolName"]
    assert all("at most 40 characters" in p.message for p in error.problems)
    assert not registrations


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"bad key!": "v"}, "label key 'bad key!' is not a Kubernetes qualified name"),
        ({"app": "x" * 64}, "label 'app' has an invalid value"),
        ({"app": "-v"}, "label 'app' has an invalid value '-v'"),
    ],
)
def test_an_endpoint_picker_selector_is_label_syntax(selector: dict[str, str], message: str) -> None:
    """The selector becomes the InferencePool's matchLabels, which the API server checks only when the
    pool is created (after the EPP's objects): it is refused with the arg named instead."""
    error, registrations = failure(
        lambda: EndpointPicker("p", {**picker_args("pool", "a"), "selector": selector})
    )
    (problem,) = error.problems
    assert problem.path == "selector" and problem.message.startswith(message)
    assert registrations == []


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        (
            {"objectives": [{"name": "x"}, {"name": "x", "priority": 2}]},
            "objectives[1].name",
            "'x' is also objectives[0].name: InferenceObjective names are unique in the namespace",
        ),
        (
            {"rewrites": [{"model": "r", "targets": [{"model": "nope", "weight": 1}]}]},
            "rewrites[0].targets[0].model",
            "'nope' is not one of servedModels (m)",
        ),
        (
            {"rewrites": [{"model": "r", "targets": [{"model": "m", "weight": 1}]}] * 2},
            "rewrites[1].model",
            "'r' is also rewrites[0].model: one rule per name",
        ),
    ],
)
def test_an_endpoint_pickers_objectives_and_rewrites_are_checked(
    extra: dict[str, Any], path: str, message: str
) -> None:
    """What the stack's rules check for its own pickers holds for a picker a program builds: two
    objectives of one name were one InferenceObjective registered twice (one URN)."""
    args = {**picker_args("pool", "a"), "served_models": ["m"], **extra}
    error, registrations = failure(lambda: EndpointPicker("p", args))  # type: ignore[arg-type]
    assert [(p.path, p.message) for p in error.problems] == [(path, message)]
    assert registrations == []
