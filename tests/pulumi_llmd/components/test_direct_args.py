"""Python programs may build the Python-only components (BodyRouter, InferenceNetworkPolicies,
InferenceMonitoring, PoolAutoscaling, RdmaNetworks, OnPremAccelerators) themselves: with a dict of
args, as the package components take, or their pydantic model. A bad one must fail with a ConfigError
naming the arg before anything is registered (it used to be an AttributeError after the component
itself was registered)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pulumi_llmd.components.autoscaling import PoolAutoscaling
from pulumi_llmd.components.bodyrouter import BodyRouter
from pulumi_llmd.components.inputs import InferenceNetworkPoliciesArgs
from pulumi_llmd.components.monitoring import InferenceMonitoring
from pulumi_llmd.components.netpol import InferenceNetworkPolicies
from pulumi_llmd.components.onprem import OnPremAccelerators, RdmaNetworks
from pulumi_llmd.config import ConfigError
from render.engine import Registration, run_program

POLICIES: dict[str, Any] = {
    "instance": "t",
    "namespace": "n",
    "disaggregated": True,
    "gatewayProvider": "istio",
    "prefixCache": "approximate",
    "implementation": "bundled",
}


def outcome(build: Callable[[], object]) -> tuple[Exception | None, list[Registration]]:
    raised: list[Exception] = []

    def program() -> None:
        try:
            build()
        except Exception as error:
            raised.append(error)

    registrations, _ = run_program("direct", {}, program=program)
    return (raised[0] if raised else None), registrations


@pytest.mark.parametrize(
    ("component", "build", "paths"),
    [
        ("PoolAutoscaling", lambda: PoolAutoscaling("a", {"instance": "t", "namespace": "n"}), None),
        ("BodyRouter", lambda: BodyRouter("b", {"instance": "t", "namespace": "n"}), None),
        ("RdmaNetworks", lambda: RdmaNetworks("r", {"instance": "t", "namespace": "n"}), ["attachments"]),
        ("OnPremAccelerators", lambda: OnPremAccelerators("o", {"instance": "t"}), ["onprem"]),
        (
            "InferenceNetworkPolicies",
            lambda: InferenceNetworkPolicies("p", {**POLICIES, "disaggregated": "sometimes"}),
            ["disaggregated"],
        ),
        (
            "InferenceMonitoring",
            lambda: InferenceMonitoring("m", {"instance": "t", "namespace": "n", "poolName": "t"}),
            None,
        ),
        # The provider is refused by the policy builder itself: also before anything registers.
        (
            "InferenceNetworkPolicies",
            lambda: InferenceNetworkPolicies("p", {**POLICIES, "gatewayProvider": "gke"}),
            None,
        ),
    ],
)
def test_bad_args_are_a_config_error_before_anything_is_registered(
    component: str, build: Callable[[], object], paths: list[str] | None
) -> None:
    error, registrations = outcome(build)
    assert isinstance(error, ConfigError), error
    assert f"invalid {component} args" in str(error)
    if paths is not None:
        assert [p.path for p in error.problems] == paths
    assert registrations == []


def test_a_dict_and_the_model_build_the_same_objects() -> None:
    _, from_dict = outcome(lambda: InferenceNetworkPolicies("p", POLICIES))
    _, from_model = outcome(
        lambda: InferenceNetworkPolicies("p", InferenceNetworkPoliciesArgs.model_validate(POLICIES))
    )
    policies = [r for r in from_dict if r.pulumi_type == "kubernetes:networking.k8s.io/v1:NetworkPolicy"]
    assert len(policies) == 3  # the EPP's and each role's
    assert sorted((r.name, str(r.inputs)) for r in from_dict) == sorted(
        (r.name, str(r.inputs)) for r in from_model
    )


ROUTE_A = {"model": "a", "pool_name": "pa", "epp_secure_serving": True}


@pytest.mark.parametrize(
    ("routes", "path", "message"),
    [
        (
            [ROUTE_A, {**ROUTE_A, "model": "b"}],
            "modelRoutes[1].poolName",
            "'pa' is also modelRoutes[0].poolName: one route per pool",
        ),
        (
            [ROUTE_A, {**ROUTE_A, "pool_name": "pb"}],
            "modelRoutes[1].model",
            "'a' is also modelRoutes[0].model: one rule per model",
        ),
    ],
)
def test_a_gateways_model_routes_are_one_per_model_and_pool(
    routes: list[dict[str, Any]], path: str, message: str
) -> None:
    """Two routes to one pool registered Istio's DestinationRule for it twice (one URN); two rules for
    one model left the second unreachable."""
    from pulumi_llmd.components.gateway import InferenceGateway

    args = {"instance": "t", "namespace": "n", "pool_name": "pa", "provider": "istio", "model_routes": routes}
    error, registrations = outcome(lambda: InferenceGateway("g", args))  # type: ignore[arg-type]
    assert isinstance(error, ConfigError)
    assert [(p.path, p.message) for p in error.problems] == [(path, message)]
    assert registrations == []


@pytest.mark.parametrize(
    ("models", "path", "message"),
    [
        (
            [
                {"model": "a", "names": ["a"], "pool_name": "pa"},
                {"model": "b", "names": ["c"], "pool_name": "pb"},
            ],
            "models[1].names",
            "must include the model itself ('b')",
        ),
        (
            [
                {"model": "a", "names": ["a", "x"], "pool_name": "pa"},
                {"model": "b", "names": ["b", "x"], "pool_name": "pb"},
            ],
            "models[1].names[1]",
            "'x' is also a name of models[0]: a name routes to one model",
        ),
    ],
)
def test_a_body_router_table_is_one_the_router_loads(
    models: list[dict[str, Any]], path: str, message: str
) -> None:
    """The router refuses such a table at startup (bbr/table.py), crash-looping its pods."""
    from bbr.table import RoutingTable, TableError

    args = {"instance": "t", "namespace": "n", "provider": "istio", "models": models}
    error, registrations = outcome(lambda: BodyRouter("b", args))
    assert isinstance(error, ConfigError)
    assert [(p.path, p.message) for p in error.problems] == [(path, message)]
    assert registrations == []
    with pytest.raises(TableError):  # the router's own verdict on the same table
        RoutingTable.from_document({"models": [{"model": m["model"], "names": m["names"]} for m in models]})
