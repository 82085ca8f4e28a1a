"""Adopting an existing GKE/EKS cluster: looked up (never created), checked, and built upon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cloud import cloud, one, render_edited

NODE_POOL = "gcp:container/nodePool:NodePool"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"


def test_adopted_cluster_is_looked_up_not_created(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["llmd:gke"]["cluster"] = {"create": False, "name": "existing", "location": "us-central1"}

    result = render_edited("gke", edit, tmp_path)
    assert cloud(result, "gcp:container/cluster:Cluster") == []
    assert cloud(result, NODE_POOL, "gke-system") == []
    assert one(result, NODE_POOL, "gke-h200").inputs["cluster"] == "existing"
    assert result.unanswered_calls == []
    kubeconfig = json.loads(one(result, "pulumi:providers:kubernetes").inputs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.20"


def test_adopted_cluster_without_multi_networking_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from render import stubs as render_stubs

    monkeypatch.setitem(render_stubs.ADOPTED_GKE_CLUSTER, "enableMultiNetworking", False)

    def edit(config: dict[str, Any]) -> None:
        config["llmd:gke"]["cluster"] = {"create": False, "name": "existing"}

    with pytest.raises(Exception, match="does not have multi-networking enabled"):
        render_edited("gke", edit, tmp_path)


def test_adopted_cluster_is_looked_up_and_its_security_group_used(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["llmd:eks"]["cluster"] = {"create": False, "name": "existing"}
        del config["llmd:eks"]["vpcId"]

    result = render_edited("eks", edit, tmp_path)
    assert cloud(result, "aws:eks/cluster:Cluster") == []
    assert cloud(result, NODE_GROUP, "eks-system") == []
    assert result.unanswered_calls == []
    assert one(result, NODE_GROUP, "eks-h200").inputs["clusterName"] == "existing"
    assert one(result, "aws:ec2/securityGroup:SecurityGroup").inputs["vpcId"] == "vpc-0adc0adc0adc0adc0"
    assert (
        one(result, "aws:ec2/launchTemplate:LaunchTemplate").inputs["networkInterfaces"][0]["securityGroups"][
            0
        ]
        == "sg-0adc0adc0adc0adc0"
    )
