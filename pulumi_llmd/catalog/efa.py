"""EFA facts per EC2 instance type, and the launch-template interface layout derived from them.

Sources:
- Network cards / maximum EFA interfaces: AWS EC2 User Guide, "Network cards" table and
  "Maximize network bandwidth on Amazon EC2 instances with multiple network cards"
  (docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html): p5.48xlarge and
  p5e.48xlarge have 32 network cards and take 32 EFA devices (3200 Gbps EFAv2); p5en.48xlarge has
  16 network cards (3200 Gbps EFAv3, 16 x 200 Gbps); p4d/p4de.24xlarge have 4 (400 Gbps).
- GPUs: EC2 accelerated-computing instance pages (p5 = 8 x H100 80GB, p5e/p5en = 8 x H200 141GB,
  p4d = 8 x A100 40GB, p4de = 8 x A100 80GB).
- Layout: the same EC2 page recommends, for multi-card EFA instance types, an ENA interface as the
  primary (card 0, device 0; an EFA-only interface cannot be primary), an EFA-only interface at
  card 0 / device 1, and one EFA-only interface at device 0 of every further card. EFA-only
  interfaces carry no IP address, so the VPC CNI's pod IPs stay on the primary ENA interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

InterfaceType = Literal["interface", "efa", "efa-only"]


@dataclass(frozen=True)
class EfaInstanceType:
    name: str
    gpus: int
    gpu_model: str
    network_cards: int

    @property
    def efa_interfaces(self) -> int:
        # One EFA per network card is the maximum (EKS user guide, node-efa: "You can assign at
        # most one EFA per network card").
        return self.network_cards


@dataclass(frozen=True)
class NetworkInterfaceSlot:
    network_card_index: int
    device_index: int
    interface_type: InterfaceType

    @property
    def is_primary(self) -> bool:
        return self.network_card_index == 0 and self.device_index == 0


EFA_INSTANCE_TYPES: dict[str, EfaInstanceType] = {
    instance.name: instance
    for instance in (
        EfaInstanceType(name="p5.48xlarge", gpus=8, gpu_model="H100", network_cards=32),
        EfaInstanceType(name="p5e.48xlarge", gpus=8, gpu_model="H200", network_cards=32),
        EfaInstanceType(name="p5en.48xlarge", gpus=8, gpu_model="H200", network_cards=16),
        EfaInstanceType(name="p4d.24xlarge", gpus=8, gpu_model="A100", network_cards=4),
        EfaInstanceType(name="p4de.24xlarge", gpus=8, gpu_model="A100", network_cards=4),
    )
}


def efa_instance_type(name: str) -> EfaInstanceType:
    try:
        return EFA_INSTANCE_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(EFA_INSTANCE_TYPES))
        raise ValueError(
            f"'{name}' has no known EFA interface count (known: {known}); "
            "add it to pulumi_llmd/catalog/efa.py with its source"
        ) from None


def efa_interface_layout(instance: EfaInstanceType) -> list[NetworkInterfaceSlot]:
    """Interfaces in launch-template order: primary ENA first, then one EFA-only per network card."""
    slots = [
        NetworkInterfaceSlot(network_card_index=0, device_index=0, interface_type="interface"),
        NetworkInterfaceSlot(network_card_index=0, device_index=1, interface_type="efa-only"),
    ]
    slots += [
        NetworkInterfaceSlot(network_card_index=card, device_index=0, interface_type="efa-only")
        for card in range(1, instance.network_cards)
    ]
    return slots
