"""Bad GKE/EKS configs fail before any resource is registered, with messages naming the key."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pulumi_llmd.config import ConfigError, parse_stack_config
from pulumi_llmd.config.eks import EksConfig
from pulumi_llmd.config.gke import GkeConfig, GkeReservationConfig
from tests.support.cloud import render_edited, stack_config
from tests.support.paths import REPO_ROOT

Edit = Callable[[dict[str, Any]], None]


def raw_config(stack: str) -> dict[str, Any]:
    """The example stack as parse_stack_config takes it: keys without the llmd: prefix, no secrets."""
    return {
        key.removeprefix("llmd:"): value
        for key, value in stack_config(stack).items()
        if key != "llmd:hfToken"
    }


def problems(stack: str, edit: Edit) -> str:
    config = copy.deepcopy(raw_config(stack))
    edit(config)
    with pytest.raises(ConfigError) as failure:
        parse_stack_config(config, has_hf_token=True)
    return str(failure.value)


def test_example_stacks_parse() -> None:
    for stack in ("gke", "eks"):
        config = parse_stack_config(raw_config(stack), has_hf_token=True)
        assert config.platform.value == stack


def _gke(edit: Callable[[dict[str, Any]], None]) -> Edit:
    return lambda config: edit(config["gke"])


def _eks(edit: Callable[[dict[str, Any]], None]) -> Edit:
    return lambda config: edit(config["eks"])


GKE_CASES: list[tuple[str, Edit, str]] = [
    ("zone missing", _gke(lambda g: g.pop("zone")), "llmd:gke.zone is required"),
    (
        "zone outside region",
        _gke(lambda g: g.update(zone="europe-west4-a")),
        "llmd:gke.zone 'europe-west4-a' is not a zone of region 'us-central1'",
    ),
    (
        "unknown machine type",
        _gke(lambda g: g["nodePool"].update(machineType="n1-standard-8")),
        "llmd:gke.nodePool.machineType 'n1-standard-8' is not a known GPU machine type "
        "(known: a3-megagpu-8g, a3-ultragpu-8g, a4-highgpu-8g)",
    ),
    (
        "machine without RDMA",
        _gke(lambda g: g["nodePool"].update(machineType="a3-megagpu-8g")),
        "llmd:gke.nodePool.machineType 'a3-megagpu-8g' has no RDMA NICs, so rdma cannot be used",
    ),
    (
        "compact placement over two zones",
        _gke(
            lambda g: (
                g.update(rdma={"enabled": False}),
                g["nodePool"].update(
                    machineType="a3-megagpu-8g",
                    placement="compact",
                    nodeLocations=["us-central1-a", "us-central1-b"],
                ),
            )
        ),
        "llmd:gke.nodePool.nodeLocations has 2 zones (us-central1-a, us-central1-b), but placement 'compact' "
        "needs exactly one",
    ),
    (
        "RDMA pool outside the RDMA zone",
        _gke(lambda g: g["nodePool"].update(nodeLocations=["us-central1-c"])),
        "llmd:gke.nodePool.nodeLocations ['us-central1-c'] are outside zone 'us-central1-b': the RDMA VPC "
        "(network profile us-central1-b-vpc-roce) is zonal",
    ),
    (
        "flex-start with a reservation",
        _gke(lambda g: g["nodePool"].update(provisioning="flex-start")),
        "llmd:gke.nodePool.reservation cannot be consumed with provisioning 'flex-start'",
    ),
    (
        "spot with a reservation",
        _gke(lambda g: g["nodePool"].update(provisioning="spot")),
        "llmd:gke.nodePool.reservation cannot be consumed with provisioning 'spot'",
    ),
    (
        "flex-start without autoscaling",
        _gke(lambda g: (g["nodePool"].pop("reservation"), g["nodePool"].update(provisioning="flex-start"))),
        "llmd:gke.nodePool.autoscaling is required with provisioning 'flex-start'",
    ),
    (
        "queued provisioning without flex-start",
        _gke(lambda g: g["nodePool"].update(queuedProvisioning=True)),
        "llmd:gke.nodePool.queuedProvisioning requires provisioning 'flex-start' "
        "(provisioning is 'standard')",
    ),
    (
        "static size and autoscaling",
        _gke(lambda g: g["nodePool"].update(autoscaling={"maxNodes": 4})),
        "llmd:gke.nodePool.nodeCount and autoscaling are mutually exclusive",
    ),
    (
        "autoscaling bounds out of order",
        _gke(
            lambda g: (
                g["nodePool"].pop("nodeCount", None),
                g["nodePool"].update(autoscaling={"minNodes": 3, "maxNodes": 2}),
            )
        ),
        "llmd:gke.nodePool.autoscaling.minNodes (3) exceeds maxNodes (2)",
    ),
    (
        "flex-start with auto-repair",
        _gke(
            lambda g: (
                g["nodePool"].pop("reservation"),
                g["nodePool"].pop("nodeCount", None),
                g["nodePool"].update(provisioning="flex-start", autoRepair=True, autoscaling={"maxNodes": 2}),
            )
        ),
        "llmd:gke.nodePool.autoRepair must be false with provisioning 'flex-start'",
    ),
    (
        "placement policy without compact placement",
        _gke(lambda g: g["nodePool"].update(placementPolicyName="my-policy")),
        "llmd:gke.nodePool.placementPolicyName needs placement 'compact'",
    ),
    (
        "one secondary range of two",
        _gke(lambda g: g["cluster"].update(clusterSecondaryRangeName="pods")),
        "llmd:gke.cluster.servicesSecondaryRangeName is required with clusterSecondaryRangeName",
    ),
    (
        "RDMA range too small",
        _gke(lambda g: g["rdma"].update(subnetRange="192.168.64.0/22")),
        "llmd:gke.rdma.subnetRange 192.168.64.0/22 does not hold 8 /24 subnets",
    ),
    (
        "RDMA range overlapping the gVNIC subnet",
        _gke(lambda g: g["rdma"].update(subnetRange="192.168.0.0/19")),
        "llmd:gke.rdma.subnetRange 192.168.0.0/19 overlaps gvnic.subnetCidr 192.168.0.0/24",
    ),
    (
        "malformed CIDR",
        _gke(lambda g: g["gvnic"].update(subnetCidr="192.168.0.1/24")),
        "llmd:gke.gvnic.subnetCidr '192.168.0.1/24' is not an IPv4 network in CIDR notation",
    ),
    (
        "bad taint effect",
        _gke(lambda g: g["nodePool"]["taints"][0].update(effect="NO_SCHEDULE")),
        "llmd:gke.nodePool.taints[0].effect must be one of 'NoSchedule', 'PreferNoSchedule' or 'NoExecute'",
    ),
    (
        "unknown key",
        _gke(lambda g: g["nodePool"].update(acceleratorCount=8)),
        "llmd:gke.nodePool.acceleratorCount is not a known key",
    ),
]

EKS_CASES: list[tuple[str, Edit, str]] = [
    (
        "availability zone missing",
        _eks(lambda e: e.pop("availabilityZone")),
        "llmd:eks.availabilityZone is required",
    ),
    (
        "availability zone outside region",
        _eks(lambda e: e.update(availabilityZone="us-west-2a")),
        "llmd:eks.availabilityZone 'us-west-2a' is not an availability zone of region 'us-east-1'",
    ),
    (
        "instance type without a known EFA count",
        _eks(lambda e: e["nodeGroup"].update(instanceType="g5.48xlarge")),
        "llmd:eks.nodeGroup.instanceType 'g5.48xlarge' has no known EFA interface count",
    ),
    (
        "capacity block without a reservation",
        _eks(lambda e: e["nodeGroup"].pop("capacityReservationId")),
        "llmd:eks.nodeGroup.capacityReservationId is required with capacityType CAPACITY_BLOCK",
    ),
    (
        "spot in a reservation",
        _eks(lambda e: e["nodeGroup"].update(capacityType="SPOT")),
        "llmd:eks.nodeGroup.capacityReservationId cannot be used with capacityType SPOT",
    ),
    (
        "EFA share that does not divide the interfaces",
        _eks(lambda e: e["nodeGroup"].update(efaPerPod=5)),
        "llmd:eks.nodeGroup.efaPerPod 5 must divide the 16 EFA interfaces of p5en.48xlarge",
    ),
    (
        "sizes out of order",
        _eks(lambda e: e["nodeGroup"].update(minSize=3)),
        "llmd:eks.nodeGroup.minSize (3) exceeds maxSize (2)",
    ),
    (
        "desired size above the maximum",
        _eks(lambda e: e["nodeGroup"].update(desiredSize=5)),
        "llmd:eks.nodeGroup.desiredSize (5) must be between minSize (0) and maxSize (2)",
    ),
    (
        "one cluster subnet",
        _eks(lambda e: e["cluster"].update(subnetIds=["subnet-0a1b2c3d4e5f60001"])),
        "llmd:eks.cluster.subnetIds needs at least two subnets in different availability zones",
    ),
    (
        "malformed subnet id",
        _eks(lambda e: e["nodeGroup"].update(subnetId="subnet-xyz")),
        "llmd:eks.nodeGroup.subnetId 'subnet-xyz' is malformed",
    ),
    (
        "creating a cluster without a VPC",
        _eks(lambda e: e.pop("vpcId")),
        "llmd:eks.vpcId is required when cluster.create is true",
    ),
]


@pytest.mark.parametrize(
    ("stack", "edit", "message"),
    [("gke", *case[1:]) for case in GKE_CASES] + [("eks", *case[1:]) for case in EKS_CASES],
    ids=[c[0] for c in GKE_CASES + EKS_CASES],
)
def test_bad_cloud_config_names_the_key(stack: str, edit: Edit, message: str) -> None:
    assert message in problems(stack, edit)


def test_cloud_sections_have_defaults_for_everything_but_location() -> None:
    gke = GkeConfig.model_validate({"project": "p", "region": "us-central1", "zone": "us-central1-a"})
    assert (gke.node_pool.machine_type, gke.rdma.enabled, gke.node_pool_size) == ("a3-ultragpu-8g", True, 2)
    eks = EksConfig.model_validate(
        {
            "region": "us-east-1",
            "availabilityZone": "us-east-1a",
            "cluster": {"create": False},
            "nodeGroup": {"subnetId": "subnet-0123456789abcdef0"},
        }
    )
    assert (eks.node_group.instance_type, eks.node_group.effective_efa_per_pod) == ("p5.48xlarge", 32)


# --- rules that need both the pools and the machines: checked when the platform is provisioned ------


def _render_expecting(stack: str, edit: Edit, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as failure:
        render_edited(stack, edit, tmp_path)
    return str(failure.value)


def test_gke_rdma_pods_must_take_a_whole_node(tmp_path: Path) -> None:
    message = _render_expecting("gke", lambda c: c["llmd:decode"].update(tensorParallel=4), tmp_path)
    assert (
        "llmd:decode.tensorParallel asks for 4 GPUs per pod, but each pod on a3-ultragpu-8g must take all 8"
        in (message)
    )


def test_eks_pods_must_fit_their_efa_share_of_a_node(tmp_path: Path) -> None:
    message = _render_expecting("eks", lambda c: c["llmd:prefill"].update(tensorParallel=8), tmp_path)
    assert (
        "llmd:prefill.tensorParallel asks for 8 GPUs per pod but a 1/2 share of p5en.48xlarge "
        "(eks.nodeGroup.efaPerPod) has 4" in message
    )


def test_example_stack_files_are_plain_yaml_with_only_llmd_keys() -> None:
    for stack in ("gke", "eks"):
        document = yaml.safe_load((REPO_ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
        assert set(document) == {"config"}
        assert all(key.startswith("llmd:") for key in document["config"])


def test_reservation_affinity_values_for_shared_reservations_and_blocks() -> None:
    assert GkeReservationConfig(name="res").affinity_value == "res"
    assert (
        GkeReservationConfig(name="res", project="owner", block="block-1").affinity_value
        == "projects/owner/reservations/res/reservationBlocks/block-1"
    )
