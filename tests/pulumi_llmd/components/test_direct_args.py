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
