"""Invariants of the machine/instance data tables the node pools and launch templates come from."""

from __future__ import annotations

import pytest

from pulumi_llmd.catalog.efa import EFA_INSTANCE_TYPES, efa_instance_type, efa_interface_layout
from pulumi_llmd.catalog.gke_machines import GKE_GPU_MACHINE_TYPES, gke_machine_type


@pytest.mark.parametrize("name", sorted(EFA_INSTANCE_TYPES))
def test_efa_layout_uses_every_card_once_behind_an_ena_primary(name: str) -> None:
    instance = efa_instance_type(name)
    slots = efa_interface_layout(instance)
    positions = [(s.network_card_index, s.device_index) for s in slots]
    assert len(set(positions)) == len(positions), "two interfaces on one (card, device) slot"
    assert slots[0].is_primary and slots[0].interface_type == "interface"
    assert sum(s.is_primary for s in slots) == 1
    efa_cards = [s.network_card_index for s in slots if s.interface_type == "efa-only"]
    assert sorted(efa_cards) == list(range(instance.network_cards))
    assert len(efa_cards) == instance.efa_interfaces
    # Per-card ordering: the launch template lists card 0 first, then ascending cards.
    assert [s.network_card_index for s in slots] == sorted(s.network_card_index for s in slots)


def test_known_efa_counts() -> None:
    counts = {
        name: efa_instance_type(name).efa_interfaces
        for name in ("p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge")
    }
    assert counts == {"p5.48xlarge": 32, "p5e.48xlarge": 32, "p5en.48xlarge": 16}


def test_unknown_instance_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'g6e.48xlarge' has no known EFA interface count \(known: p4d"):
        efa_instance_type("g6e.48xlarge")


@pytest.mark.parametrize("name", sorted(GKE_GPU_MACHINE_TYPES))
def test_gke_machines_have_consistent_facts(name: str) -> None:
    machine = gke_machine_type(name)
    assert machine.accelerator_count == 8
    assert machine.accelerator_type.startswith("nvidia-")
    # RDMA machines carry one RoCE NIC per GPU and boot from Hyperdisk.
    if machine.has_rdma:
        assert machine.rdma_nics == machine.accelerator_count
        assert machine.boot_disk_type == "hyperdisk-balanced"
        assert machine.min_gke_version is not None


def test_unknown_machine_type_names_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"'a2-highgpu-8g' is not a known GPU machine type \(known: a3-megagpu-8g"
    ):
        gke_machine_type("a2-highgpu-8g")
