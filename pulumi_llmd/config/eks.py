"""Stack configuration for EKS GPU capacity with EFA (`llmd:eks`), owned by the cloud work (issue 3).

Every default lives here. Cross-field rules (an instance type with a known EFA layout, a subnet in
the availability zone's region, capacity blocks with a reservation id ...) fail at validation time
with a message that names the key path, before any resource is registered.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from pulumi_llmd.catalog.efa import EfaInstanceType, efa_instance_type
from pulumi_llmd.config.base import ConfigModel
from pulumi_llmd.config.errors import KeyProblem
from pulumi_llmd.config.nodes import NodeTaint, validate_labels

_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]+$")
_AZ_SUFFIX = re.compile(r"^[a-z]$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SECURITY_GROUP_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
_RESERVATION_ID = re.compile(r"^cr-[0-9a-f]{8,17}$")
_EKS_NAME = re.compile(r"^[0-9A-Za-z][A-Za-z0-9\-_]{0,99}$")


def _match(pattern: re.Pattern[str], value: str, example: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"'{value}' is malformed (expected something like {example})")
    return value


class EksSystemNodeGroupConfig(ConfigModel):
    """Untainted CPU nodes for CoreDNS, the gateway and the EPP (only on a created cluster)."""

    enabled: bool = Field(default=True, description="Create a CPU node group next to the GPU node group.")
    instance_type: str = Field(default="m6i.2xlarge", description="Instance type of the system node group.")
    size: int = Field(default=2, ge=1, description="Nodes in the system node group (fixed size).")


class EksClusterConfig(ConfigModel):
    create: bool = Field(
        default=True,
        description="Create the cluster (Kubernetes version = llmd:kubernetesVersion); false adopts an "
        "existing one by name, whose endpoint, CA, VPC and security group come from a lookup.",
    )
    name: str = Field(default="llmd", description="Cluster name (created or adopted).")
    subnet_ids: list[str] = Field(
        default_factory=list,
        description="Subnets of the control plane's network interfaces (at least two AZs); creation only.",
    )
    endpoint_public_access: bool = Field(default=True, description="Public API server endpoint.")
    endpoint_private_access: bool = Field(default=True, description="Private (in-VPC) API server endpoint.")
    deletion_protection: bool = Field(
        default=False, description="EKS deletion protection of a created cluster."
    )
    system_node_group: EksSystemNodeGroupConfig = Field(
        default_factory=EksSystemNodeGroupConfig,
        description="CPU nodes for CoreDNS, the gateway and the EPP.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _match(_EKS_NAME, name, "llmd")

    @field_validator("subnet_ids")
    @classmethod
    def _subnets(cls, subnet_ids: list[str]) -> list[str]:
        return [_match(_SUBNET_ID, s, "subnet-0abc12345def67890") for s in subnet_ids]


class EksNodeGroupConfig(ConfigModel):
    name: str = Field(default="gpu", description="Managed node group name.")
    instance_type: str = Field(
        default="p5.48xlarge",
        description="An EFA instance type with a known interface layout: p5.48xlarge / p5e.48xlarge "
        "(32 EFA), p5en.48xlarge (16), p4d/p4de.24xlarge (4).",
    )
    subnet_id: str = Field(
        description="One subnet in eks.availabilityZone: the placement group and a capacity block are "
        "single-AZ, and EFA traffic does not leave the AZ."
    )
    desired_size: int = Field(default=2, ge=0, description="Desired GPU nodes.")
    min_size: int = Field(default=0, ge=0, description="Minimum GPU nodes.")
    max_size: int = Field(default=2, ge=1, description="Maximum GPU nodes.")
    capacity_type: Literal["ON_DEMAND", "SPOT", "CAPACITY_BLOCK"] = Field(
        default="ON_DEMAND",
        description="ON_DEMAND (may use capacityReservationId), SPOT, or CAPACITY_BLOCK (EC2 Capacity "
        "Blocks for ML; needs capacityReservationId).",
    )
    capacity_reservation_id: str | None = Field(
        default=None, description="Target this capacity reservation / capacity block (`cr-...`)."
    )
    placement_group: bool | None = Field(
        default=None,
        description="Launch into a new cluster placement group. Unset: yes, except with CAPACITY_BLOCK "
        "(Capacity Blocks come colocated in an EC2 UltraCluster, and a cluster placement group on them "
        "fails with InsufficientInstanceCapacity), where true is refused.",
    )
    disk_size_gib: int = Field(default=500, ge=50, description="Root volume (gp3) size.")
    node_role_arn: str | None = Field(
        default=None, description="Use this node IAM role instead of creating one."
    )
    security_group_ids: list[str] = Field(
        default_factory=list,
        description="Extra security groups on the primary interface (the cluster's is always there).",
    )
    efa_per_pod: int | None = Field(
        default=None,
        ge=1,
        description="EFA devices per model-server pod; unset = all of the instance's (one pod per node). "
        "Must divide the instance's EFA count.",
    )
    labels: dict[str, str] = Field(
        default_factory=lambda: {"llm-d.ai/accelerator-pool": "gpu"},
        description="Node labels; model-server pods select on all of them (nvidia.com/gpu.present is added).",
    )
    taints: list[NodeTaint] = Field(
        default_factory=list,
        description="Node taints; model-server pods and the device plugins tolerate them.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _match(_EKS_NAME, name, "gpu")

    @field_validator("instance_type")
    @classmethod
    def _known_instance_type(cls, instance_type: str) -> str:
        try:
            efa_instance_type(instance_type)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return instance_type

    @field_validator("subnet_id")
    @classmethod
    def _subnet(cls, subnet_id: str) -> str:
        return _match(_SUBNET_ID, subnet_id, "subnet-0abc12345def67890")

    @field_validator("capacity_reservation_id")
    @classmethod
    def _reservation(cls, reservation_id: str | None) -> str | None:
        if reservation_id is None:
            return None
        return _match(_RESERVATION_ID, reservation_id, "cr-0123456789abcdef0")

    @field_validator("security_group_ids")
    @classmethod
    def _security_groups(cls, ids: list[str]) -> list[str]:
        return [_match(_SECURITY_GROUP_ID, s, "sg-0123456789abcdef0") for s in ids]

    _labels = field_validator("labels")(validate_labels)

    @model_validator(mode="after")
    def _sizes_and_capacity(self) -> Self:
        if self.min_size > self.max_size:
            raise KeyProblem("minSize", f"({self.min_size}) exceeds maxSize ({self.max_size})")
        if not self.min_size <= self.desired_size <= self.max_size:
            raise KeyProblem(
                "desiredSize",
                f"({self.desired_size}) must be between minSize ({self.min_size}) and maxSize "
                f"({self.max_size})",
            )
        if self.capacity_type == "CAPACITY_BLOCK" and self.capacity_reservation_id is None:
            raise KeyProblem("capacityReservationId", "is required with capacityType CAPACITY_BLOCK")
        if self.capacity_type == "CAPACITY_BLOCK" and self.placement_group:
            # Reported to fail with InsufficientInstanceCapacity: aws-parallelcluster PR #6311 refuses
            # the combination, terraform-aws-eks PR #3730 and eksctl #7949 drop it. The block's
            # instances are already placed together (EC2 user guide, Capacity Blocks for ML).
            raise KeyProblem(
                "placementGroup",
                "true cannot be combined with capacityType CAPACITY_BLOCK: a cluster "
                "placement group on Capacity Block instances fails with InsufficientInstanceCapacity, "
                "and the block's instances are already colocated; remove placementGroup",
            )
        if self.capacity_type == "SPOT" and self.capacity_reservation_id is not None:
            raise KeyProblem(
                "capacityReservationId",
                "cannot be used with capacityType SPOT (Spot instances do not run in capacity reservations)",
            )
        efa = self.instance.efa_interfaces
        if self.efa_per_pod is not None and (self.efa_per_pod > efa or efa % self.efa_per_pod):
            raise KeyProblem(
                "efaPerPod",
                f"{self.efa_per_pod} must divide the {efa} EFA interfaces of {self.instance_type}",
            )
        return self

    @property
    def instance(self) -> EfaInstanceType:
        return efa_instance_type(self.instance_type)

    @property
    def effective_placement_group(self) -> bool:
        if self.placement_group is not None:
            return self.placement_group
        return self.capacity_type != "CAPACITY_BLOCK"

    @property
    def effective_efa_per_pod(self) -> int:
        return self.efa_per_pod or self.instance.efa_interfaces


class EksAddonsConfig(ConfigModel):
    # aws/eks-charts stable/aws-efa-k8s-device-plugin/Chart.yaml: `version: v0.5.30` (image v0.5.20),
    # commit bfe91c4 (2026-07-21); its supportedInstanceLabels list p4d/p4de, p5, p5e and p5en.
    efa_device_plugin_version: str = Field(
        default="v0.5.30",
        description="aws/eks-charts `aws-efa-k8s-device-plugin` chart version (these carry a leading v).",
    )
    # NVIDIA/k8s-device-plugin tag v0.20.0 (2026-08-19), chart deployments/helm/nvidia-device-plugin
    # `version: "0.20.0"`; its node affinity still accepts the nvidia.com/gpu.present=true label.
    nvidia_device_plugin_version: str = Field(
        default="0.20.0",
        description="`nvidia-device-plugin` chart version; the AL2023 NVIDIA AMI ships the driver and "
        "container toolkit but not the device plugin.",
    )
    namespace: str = Field(default="kube-system", description="Namespace of both device plugins.")


class EksConfig(ConfigModel):
    """GPU capacity on EKS: optional cluster, EFA launch template and node group, device plugins."""

    region: str = Field(description="AWS region of the cluster and node group.")
    availability_zone: str = Field(
        description="AZ of the GPU node group (placement group, capacity reservation and node subnet)."
    )
    vpc_id: str | None = Field(
        default=None,
        description="VPC of the EFA security group; required when creating the cluster, else taken from "
        "the adopted cluster.",
    )
    cluster: EksClusterConfig = Field(
        default_factory=EksClusterConfig, description="Create or adopt the cluster."
    )
    node_group: EksNodeGroupConfig = Field(description="The EFA GPU managed node group.")
    addons: EksAddonsConfig = Field(default_factory=EksAddonsConfig, description="In-cluster device plugins.")

    @field_validator("region")
    @classmethod
    def _region(cls, region: str) -> str:
        return _match(_REGION, region, "us-east-1")

    @field_validator("vpc_id")
    @classmethod
    def _vpc(cls, vpc_id: str | None) -> str | None:
        return None if vpc_id is None else _match(_VPC_ID, vpc_id, "vpc-0123456789abcdef0")

    @model_validator(mode="after")
    def _zone_and_vpc(self) -> Self:
        suffix = self.availability_zone[len(self.region) :]
        if not self.availability_zone.startswith(self.region) or not _AZ_SUFFIX.match(suffix):
            raise KeyProblem(
                "availabilityZone",
                f"'{self.availability_zone}' is not an availability zone of "
                f"region '{self.region}' (e.g. {self.region}a)",
            )
        if self.cluster.create and len(set(self.cluster.subnet_ids)) < 2:
            raise KeyProblem(
                "cluster.subnetIds",
                "needs at least two subnets in different availability zones "
                "to create a cluster (or set cluster.create: false to adopt one)",
            )
        if self.cluster.create and self.vpc_id is None:
            raise KeyProblem(
                "vpcId", "is required when cluster.create is true (the EFA security group lives in it)"
            )
        return self
