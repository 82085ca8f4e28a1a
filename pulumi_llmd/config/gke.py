"""Stack configuration for GKE GPU capacity with RDMA (`llmd:gke`), owned by the cloud work (issue 3).

Every default lives here. Cross-field rules (zone in region, RDMA on a machine that has it, compact
placement in one zone, flex-start without a reservation ...) fail at validation time with a message
that names the key path, before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from pulumi_llmd.catalog.gke_machines import GkeMachineType, gke_machine_type
from pulumi_llmd.config.base import ConfigModel
from pulumi_llmd.config.errors import KeyProblem
from pulumi_llmd.config.nodes import NodeTaint, validate_labels

# Pinned at a commit of GoogleCloudPlatform/container-engine-accelerators (2026-05-06, gIB
# nccl-plugin-gib v1.1.1, "Removed --install-nccl from default and a4x installers"): the branch
# URL GKE's guides use would move under us between `pulumi preview` runs.
DEFAULT_RDMA_INSTALLER_URL = (
    "https://raw.githubusercontent.com/GoogleCloudPlatform/container-engine-accelerators/"
    "2da1c92ff7bd772a2c833710bb6c21dcfe6dfaae/gpudirect-rdma/nccl-rdma-installer.yaml"
)

_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE_SUFFIX = re.compile(r"^-[a-z]$")
_GCP_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_RESERVATION_BLOCK = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _gcp_name(value: str) -> str:
    if not _GCP_NAME.match(value):
        raise ValueError(
            f"'{value}' must be 1-63 lowercase letters, digits or dashes, starting with a letter"
        )
    return value


def _ipv4_network(cidr: str) -> str:
    try:
        return str(ipaddress.IPv4Network(cidr))
    except ValueError as exc:
        raise ValueError(f"'{cidr}' is not an IPv4 network in CIDR notation ({exc})") from None


class GkeSystemPoolConfig(ConfigModel):
    """Untainted CPU nodes for the gateway, the EPP and cluster add-ons (only on a created cluster)."""

    enabled: bool = Field(default=True, description="Create a CPU node pool next to the GPU pool.")
    machine_type: str = Field(default="e2-standard-8", description="Machine type of the system pool.")
    node_count: int = Field(default=2, ge=1, description="Nodes in the system pool (in gke.zone).")


class GkeClusterConfig(ConfigModel):
    create: bool = Field(
        default=True,
        description="Create the cluster; false adopts an existing one by name/location, which must already "
        "run Dataplane V2 with multi-networking (checked against the cluster lookup during `pulumi up`).",
    )
    name: str = Field(default="llmd", description="Cluster name (created or adopted).")
    location: str | None = Field(
        default=None, description="Control-plane location; defaults to gke.region (a regional cluster)."
    )
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = Field(
        default="REGULAR", description="GKE release channel of a created cluster."
    )
    min_master_version: str | None = Field(
        default=None,
        description="Minimum control-plane version; A3 Ultra needs 1.31.4-gke.1183000+, "
        "A4 1.32.2-gke.1475000+.",
    )
    network: str = Field(
        default="default", description="Primary VPC of the cluster (node NIC 0, pods, services)."
    )
    subnetwork: str = Field(default="default", description="Primary subnet of the cluster.")
    cluster_secondary_range_name: str | None = Field(
        default=None, description="Existing secondary range for pods; unset lets GKE create one."
    )
    services_secondary_range_name: str | None = Field(
        default=None, description="Existing secondary range for services; unset lets GKE create one."
    )
    deletion_protection: bool = Field(
        default=True, description="GKE deletion protection of a created cluster."
    )
    system_pool: GkeSystemPoolConfig = Field(
        default_factory=GkeSystemPoolConfig, description="CPU node pool for non-GPU workloads."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _gcp_name(name)

    @model_validator(mode="after")
    def _secondary_ranges_come_in_pairs(self) -> Self:
        if (self.cluster_secondary_range_name is None) != (self.services_secondary_range_name is None):
            given, missing = ("clusterSecondaryRangeName", "servicesSecondaryRangeName")
            if self.cluster_secondary_range_name is None:
                given, missing = missing, given
            raise KeyProblem(
                missing,
                f"is required with {given}: the two must be given together "
                "(or neither, for GKE-managed ranges)",
            )
        return self


class GkeGvnicNetworkConfig(ConfigModel):
    """The second host NIC's VPC (gVNIC); GKE's RDMA guides give it one subnet and MTU 8896."""

    name: str = Field(default="llmd-gvnic", description="Name of the gVNIC VPC (its subnet gets `-sub`).")
    subnet_cidr: str = Field(
        default="192.168.0.0/24", description="Primary range of the gVNIC subnet (IPv4 CIDR)."
    )
    mtu: int = Field(default=8896, ge=1300, le=8896, description="MTU of the gVNIC VPC.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _gcp_name(name)

    @field_validator("subnet_cidr")
    @classmethod
    def _cidr(cls, cidr: str) -> str:
        return _ipv4_network(cidr)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet_cidr)


class GkeRdmaConfig(ConfigModel):
    """The RoCE VPC (network profile `<zone>-vpc-roce`) with one subnet per RDMA NIC."""

    enabled: bool = Field(
        default=True,
        description="Create the RDMA VPC, attach the pool's RDMA NICs and annotate model-server pods; "
        "needs a machine type with RDMA NICs.",
    )
    name: str = Field(default="llmd-rdma", description="Name of the RDMA VPC (subnets get `-sub-<n>`).")
    subnet_range: str = Field(
        default="192.168.64.0/19",
        description="Carved into consecutive subnets of subnetPrefixLength, one per RDMA NIC, in NIC order.",
    )
    subnet_prefix_length: int = Field(
        default=24, ge=16, le=29, description="Prefix length of each RDMA subnet."
    )
    mtu: int = Field(
        default=8896,
        ge=1300,
        le=8896,
        description="MTU of the RDMA VPC; 8896 is the RDMA profile's default and GCP's recommendation.",
    )
    installer_url: str = Field(
        default=DEFAULT_RDMA_INSTALLER_URL,
        description="gIB/NCCL installer DaemonSet manifest, pinned to a commit.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _gcp_name(name)

    @field_validator("installer_url")
    @classmethod
    def _installer_is_https(cls, url: str) -> str:
        if not url.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return url

    @field_validator("subnet_range")
    @classmethod
    def _range(cls, cidr: str) -> str:
        return _ipv4_network(cidr)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet_range)

    def subnets(self, count: int) -> list[ipaddress.IPv4Network]:
        return list(self.network.subnets(new_prefix=self.subnet_prefix_length))[:count]


class GkeAutoscalingConfig(ConfigModel):
    min_nodes: int = Field(default=0, ge=0, description="Lower bound of the GPU pool (per zone).")
    max_nodes: int = Field(default=2, ge=1, description="Upper bound of the GPU pool (per zone).")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.min_nodes > self.max_nodes:
            raise KeyProblem("minNodes", f"({self.min_nodes}) exceeds maxNodes ({self.max_nodes})")
        return self


class GkeReservationConfig(ConfigModel):
    """A specific reservation (optionally one block of it) the node pool must consume."""

    name: str = Field(description="Reservation name.")
    project: str | None = Field(
        default=None, description="Owner project of a shared reservation; unset = gke.project."
    )
    block: str | None = Field(default=None, description="Consume only this reservation block.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _gcp_name(name)

    @field_validator("block")
    @classmethod
    def _block_name(cls, block: str | None) -> str | None:
        if block is not None and not _RESERVATION_BLOCK.match(block):
            raise ValueError("is not a reservation block name")
        return block

    @property
    def affinity_value(self) -> str:
        value = self.name if self.project is None else f"projects/{self.project}/reservations/{self.name}"
        return value if self.block is None else f"{value}/reservationBlocks/{self.block}"


class GkeNodePoolConfig(ConfigModel):
    name: str = Field(default="gpu", description="GKE node pool name.")
    machine_type: str = Field(
        default="a3-ultragpu-8g",
        description="a3-ultragpu-8g (8 x H200), a4-highgpu-8g (8 x B200) "
        "or a3-megagpu-8g (8 x H100, no RDMA).",
    )
    node_count: int | None = Field(
        default=None, ge=0, description="Static pool size (default 2); mutually exclusive with autoscaling."
    )
    autoscaling: GkeAutoscalingConfig | None = Field(default=None, description="Cluster-autoscaler bounds.")
    provisioning: Literal["standard", "spot", "flex-start"] = Field(
        default="standard",
        description="standard = on-demand or reservation, spot = Spot VMs, flex-start = DWS flex-start.",
    )
    queued_provisioning: bool = Field(
        default=False, description="DWS queued provisioning (ProvisioningRequest); flex-start only."
    )
    reservation: GkeReservationConfig | None = Field(
        default=None, description="Consume this specific reservation (standard provisioning only)."
    )
    placement: Literal["compact", "none"] = Field(
        default="compact", description="COMPACT placement keeps nodes close (single zone only)."
    )
    placement_policy_name: str | None = Field(
        default=None, description="An existing compact placement resource policy (compact only)."
    )
    node_locations: list[str] | None = Field(
        default=None, description="Zones of the pool; defaults to [gke.zone]."
    )
    gpu_driver_version: Literal["DEFAULT", "LATEST", "INSTALLATION_DISABLED"] = Field(
        default="LATEST", description="GKE-managed NVIDIA driver installation."
    )
    disk_size_gb: int = Field(default=500, ge=100, description="Boot disk size.")
    disk_type: str | None = Field(
        default=None, description="Boot disk type; defaults to the machine's (Hyperdisk for A3 Ultra / A4)."
    )
    local_ssd_ephemeral_storage: bool = Field(
        default=True, description="Back ephemeral storage (model and compile caches) with all local SSDs."
    )
    auto_repair: bool | None = Field(
        default=None, description="Node auto-repair; unset = on, except flex-start, which requires off."
    )
    service_account: str | None = Field(
        default=None, description="Node service account; unset = GKE default."
    )
    labels: dict[str, str] = Field(
        default_factory=lambda: {"llm-d.ai/accelerator-pool": "gpu"},
        description="Node labels; model-server pods select on all of them.",
    )
    taints: list[NodeTaint] = Field(
        default_factory=list,
        description="Extra node taints (GKE adds nvidia.com/gpu itself); model-server pods tolerate them.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _gcp_name(name)

    _labels = field_validator("labels")(validate_labels)

    @field_validator("machine_type")
    @classmethod
    def _known_machine_type(cls, machine_type: str) -> str:
        gke_machine_type(machine_type)
        return machine_type

    @model_validator(mode="after")
    def _provisioning_rules(self) -> Self:
        if self.node_count is not None and self.autoscaling is not None:
            raise KeyProblem("nodeCount", "and autoscaling are mutually exclusive (set one of them)")
        if self.reservation is not None and self.provisioning != "standard":
            raise KeyProblem(
                "reservation",
                f"cannot be consumed with provisioning '{self.provisioning}': "
                "remove reservation or use provisioning 'standard'",
            )
        if self.provisioning == "flex-start":
            if self.autoscaling is None:
                raise KeyProblem(
                    "autoscaling",
                    "is required with provisioning 'flex-start' "
                    "(flex-start pools scale from zero; a static nodeCount is not allowed)",
                )
            if self.auto_repair:
                raise KeyProblem("autoRepair", "must be false with provisioning 'flex-start'")
        if self.queued_provisioning:
            if self.provisioning != "flex-start":
                raise KeyProblem(
                    "queuedProvisioning",
                    f"requires provisioning 'flex-start' (provisioning is '{self.provisioning}')",
                )
            if self.placement == "compact":
                raise KeyProblem(
                    "placement",
                    "'compact' cannot be combined with queuedProvisioning; use placement 'none'",
                )
        if self.placement_policy_name is not None and self.placement != "compact":
            raise KeyProblem(
                "placementPolicyName", f"needs placement 'compact' (placement is '{self.placement}')"
            )
        if self.placement == "compact" and self.node_locations is not None and len(self.node_locations) != 1:
            raise KeyProblem(
                "nodeLocations",
                f"has {len(self.node_locations)} zones ({', '.join(self.node_locations)}), but "
                "placement 'compact' needs exactly one",
            )
        return self

    @property
    def machine(self) -> GkeMachineType:
        return gke_machine_type(self.machine_type)

    @property
    def effective_auto_repair(self) -> bool:
        return self.auto_repair if self.auto_repair is not None else self.provisioning != "flex-start"

    @property
    def effective_disk_type(self) -> str:
        return self.disk_type or self.machine.boot_disk_type


class GkeConfig(ConfigModel):
    """GPU capacity on GKE: optional cluster, RDMA VPCs, the GPU node pool and its in-cluster networking."""

    project: str = Field(description="GCP project of the cluster, VPCs and node pool.")
    region: str = Field(description="Region of the subnets (and of a regional cluster).")
    zone: str = Field(
        description="Zone of the GPU pool and of the RDMA VPC's network profile (RoCE VPCs are zonal)."
    )
    cluster: GkeClusterConfig = Field(
        default_factory=GkeClusterConfig, description="Create or adopt the cluster."
    )
    gvnic: GkeGvnicNetworkConfig = Field(
        default_factory=GkeGvnicNetworkConfig, description="VPC of the second host NIC (with RDMA only)."
    )
    rdma: GkeRdmaConfig = Field(
        default_factory=GkeRdmaConfig, description="RoCE VPC and in-cluster RDMA networking."
    )
    node_pool: GkeNodePoolConfig = Field(default_factory=GkeNodePoolConfig, description="The GPU node pool.")

    @field_validator("region")
    @classmethod
    def _region_shape(cls, region: str) -> str:
        if not _REGION.match(region):
            raise ValueError("is not a GCP region name (e.g. us-central1)")
        return region

    @model_validator(mode="after")
    def _zones_and_rdma(self) -> Self:
        self._check_zone(self.zone, "zone")
        for zone in self.node_locations:
            self._check_zone(zone, "nodePool.nodeLocations")
        machine = self.node_pool.machine
        if not self.rdma.enabled:
            return self
        if not machine.has_rdma:
            raise KeyProblem(
                "nodePool.machineType",
                f"'{machine.name}' has no RDMA NICs, so rdma cannot be used; "
                "pick a3-ultragpu-8g or a4-highgpu-8g, or set rdma.enabled: false",
            )
        stray = [zone for zone in self.node_locations if zone != self.zone]
        if stray:
            raise KeyProblem(
                "nodePool.nodeLocations",
                f"{stray} are outside zone '{self.zone}': the RDMA VPC "
                f"(network profile {self.rdma_network_profile_name}) is zonal",
            )
        rdma = self.rdma
        if rdma.subnet_prefix_length < rdma.network.prefixlen or (
            2 ** (rdma.subnet_prefix_length - rdma.network.prefixlen) < machine.rdma_nics
        ):
            raise KeyProblem(
                "rdma.subnetRange",
                f"{rdma.subnet_range} does not hold {machine.rdma_nics} "
                f"/{rdma.subnet_prefix_length} subnets (one per RDMA NIC of {machine.name})",
            )
        if rdma.network.overlaps(self.gvnic.network):
            raise KeyProblem(
                "rdma.subnetRange",
                f"{rdma.subnet_range} overlaps gvnic.subnetCidr {self.gvnic.subnet_cidr}",
            )
        return self

    def _check_zone(self, zone: str, key: str) -> None:
        if not zone.startswith(self.region) or not _ZONE_SUFFIX.match(zone[len(self.region) :]):
            raise KeyProblem(key, f"'{zone}' is not a zone of region '{self.region}' (e.g. {self.region}-a)")

    @property
    def node_locations(self) -> list[str]:
        return self.node_pool.node_locations or [self.zone]

    @property
    def cluster_location(self) -> str:
        return self.cluster.location or self.region

    @property
    def rdma_network_profile_name(self) -> str:
        return f"{self.zone}-vpc-roce"

    @property
    def rdma_network_profile(self) -> str:
        return f"projects/{self.project}/global/networkProfiles/{self.rdma_network_profile_name}"

    @property
    def node_pool_size(self) -> int:
        return self.node_pool.node_count if self.node_pool.node_count is not None else 2
