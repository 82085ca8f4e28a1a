"""Stack configuration for EKS GPU capacity with EFA (`llmd:eks`), owned by the cloud work (issue 3).

Every default lives here. Cross-field rules (an instance type with a known EFA layout, a subnet in
the availability zone's region, capacity blocks with a reservation id ...) fail at validation time
with a message that names the key path, before any resource is registered.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from components.cloud.efa import EfaInstanceType, efa_instance_type
from components.cloud.scheduling import NodeTaint, validate_labels

_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]+$")
_AZ_SUFFIX = re.compile(r"^[a-z]$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SECURITY_GROUP_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
_RESERVATION_ID = re.compile(r"^cr-[0-9a-f]{8,17}$")
_EKS_NAME = re.compile(r"^[0-9A-Za-z][A-Za-z0-9\-_]{0,99}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True)


def _match(pattern: re.Pattern[str], value: str, example: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"'{value}' is malformed (expected something like {example})")
    return value


class EksSystemNodeGroupConfig(_Model):
    """Untainted CPU nodes for CoreDNS, the gateway and the EPP (only on a created cluster)."""

    enabled: bool = True
    instance_type: str = "m6i.2xlarge"
    size: int = Field(default=2, ge=1)


class EksClusterConfig(_Model):
    # False adopts an existing cluster by name: its endpoint, CA and security group come from a lookup.
    create: bool = True
    name: str = "llmd"
    # Where the control plane ENIs go (EKS wants at least two AZs); needed only when creating.
    subnet_ids: list[str] = Field(default_factory=list)
    endpoint_public_access: bool = True
    endpoint_private_access: bool = True
    deletion_protection: bool = False
    system_node_group: EksSystemNodeGroupConfig = EksSystemNodeGroupConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _match(_EKS_NAME, name, "llmd")

    @field_validator("subnet_ids")
    @classmethod
    def _subnets(cls, subnet_ids: list[str]) -> list[str]:
        return [
            _match(_SUBNET_ID, s, "subnet-0abc12345def67890") for s in subnet_ids
        ]


class EksNodeGroupConfig(_Model):
    name: str = "gpu"
    instance_type: str = "p5.48xlarge"
    # One subnet in eks.availabilityZone: the cluster placement group and a capacity block are
    # both single-AZ, and EFA traffic does not leave the AZ.
    subnet_id: str
    desired_size: int = Field(default=2, ge=0)
    min_size: int = Field(default=0, ge=0)
    max_size: int = Field(default=2, ge=1)
    # ON_DEMAND may still land in an open capacity reservation; CAPACITY_BLOCK needs
    # capacityReservationId (EKS user guide, capacity-blocks-mng).
    capacity_type: Literal["ON_DEMAND", "SPOT", "CAPACITY_BLOCK"] = "ON_DEMAND"
    capacity_reservation_id: str | None = None
    placement_group: bool = True
    disk_size_gib: int = Field(default=500, ge=50)
    # Attach an existing node IAM role instead of creating one.
    node_role_arn: str | None = None
    # Extra security groups on the primary interface (the cluster security group is always there).
    security_group_ids: list[str] = Field(default_factory=list)
    # EFA devices each model-server pod requests; defaults to all of the instance's interfaces
    # (one model-server pod per node). Must divide the instance's EFA count.
    efa_per_pod: int | None = Field(default=None, ge=1)
    labels: dict[str, str] = Field(default_factory=lambda: {"llm-d.ai/accelerator-pool": "gpu"})
    taints: list[NodeTaint] = Field(default_factory=list)

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
        return [
            _match(_SECURITY_GROUP_ID, s, "sg-0123456789abcdef0")
            for s in ids
        ]

    _labels = field_validator("labels")(validate_labels)

    @model_validator(mode="after")
    def _sizes_and_capacity(self) -> Self:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"sizes must satisfy minSize <= desiredSize <= maxSize, got "
                f"{self.min_size} / {self.desired_size} / {self.max_size}"
            )
        if self.capacity_type == "CAPACITY_BLOCK" and self.capacity_reservation_id is None:
            raise ValueError("capacityType CAPACITY_BLOCK needs capacityReservationId")
        if self.capacity_type == "SPOT" and self.capacity_reservation_id is not None:
            raise ValueError(
                "capacityType SPOT cannot use capacityReservationId "
                "(Spot instances do not run in capacity reservations)"
            )
        efa = self.instance.efa_interfaces
        if self.efa_per_pod is not None and (self.efa_per_pod > efa or efa % self.efa_per_pod):
            raise ValueError(
                f"efaPerPod {self.efa_per_pod} must divide the {efa} EFA interfaces of {self.instance_type}"
            )
        return self

    @property
    def instance(self) -> EfaInstanceType:
        return efa_instance_type(self.instance_type)

    @property
    def effective_efa_per_pod(self) -> int:
        return self.efa_per_pod or self.instance.efa_interfaces


class EksAddonsConfig(_Model):
    # aws/eks-charts `aws-efa-k8s-device-plugin` (its chart versions carry a leading v).
    efa_device_plugin_version: str = "v0.5.7"
    # NVIDIA/k8s-device-plugin `nvidia-device-plugin`; the AL2023 NVIDIA AMI ships the driver and
    # container toolkit but not the device plugin.
    nvidia_device_plugin_version: str = "0.17.1"
    namespace: str = "kube-system"


class EksConfig(_Model):
    region: str
    # The GPU node group's AZ (placement group, capacity reservation and node subnet are all in it).
    availability_zone: str
    # Needed for the EFA security group when creating the cluster; an adopted cluster's VPC comes
    # from the cluster lookup unless this is set.
    vpc_id: str | None = None
    cluster: EksClusterConfig = EksClusterConfig()
    node_group: EksNodeGroupConfig
    addons: EksAddonsConfig = EksAddonsConfig()

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
            raise ValueError(
                f"availabilityZone '{self.availability_zone}' is not an availability zone of "
                f"region '{self.region}' (e.g. {self.region}a)"
            )
        if self.cluster.create and len(set(self.cluster.subnet_ids)) < 2:
            raise ValueError(
                "cluster.subnetIds needs at least two subnets in different availability zones "
                "to create a cluster (or set cluster.create: false to adopt one)"
            )
        if self.cluster.create and self.vpc_id is None:
            raise ValueError(
                "vpcId is required when cluster.create is true (the EFA security group lives in it)"
            )
        return self
