"""The GPU node pool's concerns one at a time (the whole pool is checked in test_gke_stack.py): cases
the example stacks and their variants do not reach."""

from __future__ import annotations

from typing import Any

import pulumi_gcp as gcp

from pulumi_llmd.cloud.gke import (
    gpu_node_config,
    guest_accelerators,
    node_network_config,
    node_pool_autoscaling,
    placement_policy,
    queued_provisioning,
    reservation_affinity,
)
from pulumi_llmd.config.gke import GkeNodePoolConfig


def pool(**settings: Any) -> GkeNodePoolConfig:
    return GkeNodePoolConfig.model_validate(settings)


def test_a_standard_pool_without_reservation_leaves_affinity_and_scaling_to_gke() -> None:
    static = pool(provisioning="standard", placement="none", nodeCount=2)
    assert reservation_affinity(static) is None
    assert node_pool_autoscaling(static) is None
    assert placement_policy(static) is None
    assert queued_provisioning(static) is None


def test_a_shared_reservation_block_is_named_in_full() -> None:
    reserved = pool(reservation={"name": "h200", "project": "owner", "block": "block-1"})
    affinity = reservation_affinity(reserved)
    assert affinity is not None and affinity.consume_reservation_type == "SPECIFIC_RESERVATION"
    assert affinity.values == ["projects/owner/reservations/h200/reservationBlocks/block-1"]


def test_compact_placement_can_name_an_existing_policy() -> None:
    policy = placement_policy(pool(placement="compact", placementPolicyName="my-policy"))
    assert policy is not None and (policy.type, policy.policy_name) == ("COMPACT", "my-policy")


def test_static_autoscaling_bounds_keep_the_default_location_policy() -> None:
    scaling = node_pool_autoscaling(pool(autoscaling={"minNodes": 1, "maxNodes": 3}))
    assert scaling is not None
    assert (scaling.min_node_count, scaling.max_node_count, scaling.location_policy) == (1, 3, None)


def test_accelerators_follow_the_machine_catalogue_and_driver_setting() -> None:
    (accelerator,) = guest_accelerators(pool(machineType="a4-highgpu-8g", gpuDriverVersion="DEFAULT"))
    assert (accelerator.type, accelerator.count) == ("nvidia-b200", 8)
    driver = accelerator.gpu_driver_installation_config
    assert isinstance(driver, gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs)
    assert driver.gpu_driver_version == "DEFAULT"


def test_node_config_without_local_ssd_storage_or_rdma() -> None:
    config = gpu_node_config(
        pool(localSsdEphemeralStorage=False, serviceAccount="nodes@p.iam.gserviceaccount.com")
    )
    assert config.ephemeral_storage_local_ssd_config is None
    assert config.service_account == "nodes@p.iam.gserviceaccount.com"
    assert config.spot is None and config.flex_start is None
    assert node_network_config(None) is None
