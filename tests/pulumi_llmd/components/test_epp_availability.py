"""The EPP survives its own restarts and rollouts (issue 12.6, deployment side): several active
replicas, a rolling update that never drops below them, a PodDisruptionBudget, readiness that takes
a draining replica out at once, a grace period longer than the drain; and RBAC for leader election
narrowed to the one Lease the EPP uses (issue 12.8)."""

from __future__ import annotations

from typing import Any

import pytest

from epp.cli import build_parser
from epp.leader import lease_name as epp_lease_name
from pulumi_llmd.components.picker import lease_name
from render.engine import RenderResult
from tests.support.stacks import kind_config, render_config, validate_core


def epp_deployment(result: RenderResult, name: str = "sim-epp") -> dict[str, Any]:
    return result.get("Deployment", name).document


def test_epp_runs_several_replicas_and_rolls_without_dropping_below_them(
    renders: dict[str, RenderResult],
) -> None:
    spec = epp_deployment(renders["kind"])["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"] == {"matchLabels": spec["selector"]["matchLabels"]}
    # Active-active: no leader election unless asked for.
    assert "--ha-enable-leader-election" not in pod["containers"][0]["args"]


def test_readiness_gates_traffic_and_the_grace_period_outlasts_the_drain(
    renders: dict[str, RenderResult],
) -> None:
    pod = epp_deployment(renders["kind"])["spec"]["template"]["spec"]
    readiness = pod["containers"][0]["readinessProbe"]
    assert readiness["grpc"]["service"] == "readiness"
    assert (readiness["periodSeconds"], readiness["failureThreshold"]) == (2, 1)
    defaults = build_parser().parse_args([])
    drain = defaults.drain_timeout + getattr(defaults, "drain_notice", 0.0)
    assert pod["terminationGracePeriodSeconds"] > drain + readiness["periodSeconds"]


def test_a_disruption_budget_keeps_all_but_one_replica(renders: dict[str, RenderResult]) -> None:
    deployment = epp_deployment(renders["kind"])
    budget = renders["kind"].get("PodDisruptionBudget", "sim-epp").document
    validate_core(budget, "1.33")
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }
    single = render_config(kind_config(epp={"replicas": 1}))
    assert [b["metadata"]["name"] for b in single.manifests("PodDisruptionBudget")] == [
        "t-decode",
        "t-prefill",
    ]


def test_leader_election_rbac_is_the_one_lease_and_no_events() -> None:
    result = render_config(kind_config(epp={"replicas": 3, "leaderElection": True}))
    (role,) = result.manifests("Role")
    validate_core(role, "1.33")
    leases = [r for r in role["rules"] if "leases" in r["resources"]]
    assert leases == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            # The name the EPP itself computes: llm-d's naming, in the bundled EPP too.
            "resourceNames": [epp_lease_name("llm-d", "t")],
            "verbs": ["get", "update"],
        },
        # create cannot be limited by name; it is the only verb granted without one.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    assert lease_name("llm-d", "t") == epp_lease_name("llm-d", "t")
    assert not [r for r in role["rules"] if "events" in r["resources"]]


def test_the_upstream_epp_also_records_its_leadership_events() -> None:
    # llm-d's EPP elects through controller-runtime, which records Events; its chart grants them.
    epp = {"replicas": 2, "leaderElection": True, "implementation": "upstream"}
    result = render_config(kind_config(epp=epp))
    (role,) = result.manifests("Role")
    validate_core(role, "1.33")
    assert [r for r in role["rules"] if "events" in r["resources"]] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}
    ]
    leases = [r for r in role["rules"] if "leases" in r["resources"]]
    assert [r.get("resourceNames") for r in leases] == [[epp_lease_name("llm-d", "t")], None]


# The Lease llm-d's EPP elects through: its controller-runtime manager's LeaderElectionID (llm-d-router
# v0.10.0 pkg/epp/server/controller_manager.go, "epp-%s-%s.llm-d.ai" of the pool's namespace and name;
# the GIE-era ".gateway-api-inference-extension.sigs.k8s.io" name went in v0.9.0, commit 206002cd1).
def llm_d_router_lease(namespace: str, pool: str) -> str:
    return f"epp-{namespace}-{pool}.llm-d.ai"


def test_the_role_grants_the_lease_each_implementation_elects_through() -> None:
    # A Role naming another Lease forbids the EPP's get: no replica ever leads, and with leader election
    # only the leader is ready, so the pool's EPP never serves (upstream's readiness needs isLeader too).
    for implementation in ("bundled", "upstream"):
        epp = {"replicas": 2, "leaderElection": True, "implementation": implementation}
        (role,) = render_config(kind_config(epp=epp)).manifests("Role")
        named = [r for r in role["rules"] if "leases" in r["resources"] and "resourceNames" in r]
        assert [r["resourceNames"] for r in named] == [[llm_d_router_lease("llm-d", "t")]], implementation
    assert epp_lease_name("llm-d", "t") == llm_d_router_lease("llm-d", "t")


def _fencepost(value: int | str, replicas: int, *, round_up: bool) -> int:
    """A rollingUpdate maxSurge (rounded up) or maxUnavailable (rounded down), as the Deployment
    controller resolves it (k8s.io/kubernetes pkg/controller/deployment/util ResolveFenceposts)."""
    if isinstance(value, int):
        return value
    share = int(value.rstrip("%")) * replicas
    return -(-share // 100) if round_up else share // 100


@pytest.mark.parametrize("implementation", ["bundled", "upstream"])
@pytest.mark.parametrize("replicas", [2, 3])
def test_leader_election_rolls_drains_and_deploys_with_one_ready_replica(
    implementation: str, replicas: int
) -> None:
    """With leader election only the leader is ready (both EPPs), and a standby cannot lead until the old
    leader lets go of the Lease. So: (1) a rollout must be free to take the old leader while the new
    pods are not ready, or it stalls for good with the old config serving (maxUnavailable 0 kept every
    old pod until a new one was ready, which it never is); (2) the Deployment must count as Available
    with one ready replica; (3) a PodDisruptionBudget would allow no eviction of the leader (the only
    healthy pod), so no node drain could pass it; (4) Pulumi's update wait needs every replica
    available (Progressing/NewReplicaSetAvailable), which never happens, so it must not wait."""
    epp = {"replicas": replicas, "leaderElection": True, "implementation": implementation}
    result = render_config(kind_config(epp=epp))
    deployment = epp_deployment(result, "t-epp")
    validate_core(deployment, "1.33")
    strategy = deployment["spec"]["strategy"]
    # Not Recreate (upstream's choice): the controller resolves its maxUnavailable to 0, so the
    # Available condition would need every replica ready, and Pulumi's create would time out too.
    assert strategy["type"] == "RollingUpdate"
    rolling = strategy["rollingUpdate"]
    unavailable = _fencepost(rolling["maxUnavailable"], replicas, round_up=False)
    assert unavailable >= replicas, "a rollout could never replace the leader"
    assert _fencepost(rolling["maxSurge"], replicas, round_up=True) == 0
    # Available: availableReplicas >= replicas - maxUnavailable, with the leader alone ready.
    assert replicas - unavailable <= 1
    assert "t-epp" not in [b["metadata"]["name"] for b in result.manifests("PodDisruptionBudget")]
    assert deployment["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
    # Without leader election every replica is ready: roll one at a time, keep the budget, wait.
    active = render_config(kind_config(epp={"replicas": replicas, "implementation": implementation}))
    plain = epp_deployment(active, "t-epp")
    assert plain["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "pulumi.com/skipAwait" not in plain["metadata"].get("annotations", {})
    assert [b["metadata"]["name"] for b in active.manifests("PodDisruptionBudget")].count("t-epp") == 1


def test_without_leader_election_no_lease_access(renders: dict[str, RenderResult]) -> None:
    (role,) = renders["kind"].manifests("Role")
    assert not [r for r in role["rules"] if r["apiGroups"] == ["coordination.k8s.io"]]
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
