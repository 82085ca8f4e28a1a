"""Facts about the GKE GPU machine types this project provisions, kept as data.

Each row says which accelerator a machine type carries, how many, and how many RDMA NICs it
exposes, so the node pool, the RDMA VPC subnets and the pod interface annotation are all derived
from one place. Sources:

- Accelerator type and count per machine type: cloud.google.com/compute/docs/gpus (A3 Ultra =
  8 x nvidia-h200-141gb, A4 = 8 x nvidia-b200, A3 Mega = 8 x nvidia-h100-mega-80gb).
- RDMA NICs: A3 Ultra and A4 have 8 ConnectX-7 MRDMA NICs (one per GPU) plus 2 gVNIC host NICs;
  RoCE VPCs accept only MRDMA NICs, found on A3 Ultra / A4 / A4X
  (docs.cloud.google.com/vpc/docs/rdma-network-profiles). A3 Mega has no RDMA NIC: it uses
  GPUDirect-TCPXO over 8 extra gVNIC NICs, which this project does not wire up.
- Local SSDs and boot disk: A3 Ultra and A4 come with 32 local SSDs and boot only from Hyperdisk
  (cluster-toolkit modules/compute/gke-node-pool,
  cloud.google.com/compute/docs/accelerator-optimized-machines);
  A3 Mega has 16 local SSDs and boots from Persistent Disk.
- Minimum GKE versions: 1.31.4-gke.1183000 (A3 Ultra), 1.32.2-gke.1475000 (A4) (GKE A3 Ultra / A4
  cluster guides, as quoted in llm-d docs/infrastructure/providers/gke/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GkeMachineType:
    name: str
    accelerator_type: str
    accelerator_count: int
    rdma_nics: int
    local_ssd_count: int
    boot_disk_type: str
    min_gke_version: str | None = None

    @property
    def has_rdma(self) -> bool:
        return self.rdma_nics > 0


GKE_GPU_MACHINE_TYPES: dict[str, GkeMachineType] = {
    machine.name: machine
    for machine in (
        GkeMachineType(
            name="a3-ultragpu-8g",
            accelerator_type="nvidia-h200-141gb",
            accelerator_count=8,
            rdma_nics=8,
            local_ssd_count=32,
            boot_disk_type="hyperdisk-balanced",
            min_gke_version="1.31.4-gke.1183000",
        ),
        GkeMachineType(
            name="a4-highgpu-8g",
            accelerator_type="nvidia-b200",
            accelerator_count=8,
            rdma_nics=8,
            local_ssd_count=32,
            boot_disk_type="hyperdisk-balanced",
            min_gke_version="1.32.2-gke.1475000",
        ),
        GkeMachineType(
            name="a3-megagpu-8g",
            accelerator_type="nvidia-h100-mega-80gb",
            accelerator_count=8,
            rdma_nics=0,
            local_ssd_count=16,
            boot_disk_type="pd-balanced",
        ),
    )
}


def gke_machine_type(name: str) -> GkeMachineType:
    try:
        return GKE_GPU_MACHINE_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(GKE_GPU_MACHINE_TYPES))
        raise ValueError(f"'{name}' is not a known GPU machine type (known: {known})") from None
