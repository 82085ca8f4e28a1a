"""EKS GPU capacity with EFA: cluster (created or adopted), EFA launch template, placement group,
security group, managed node group, and the EFA / NVIDIA device plugins, handed to the spine as a
:class:`Platform`.

The launch template carries the network interfaces, so EKS cannot add its cluster security group
for us: every interface lists its groups itself (interfaces in a launch template reject
`vpc_security_group_ids`), the primary ENA interface gets the cluster security group, and every
interface gets the EFA group whose only rules allow all traffic to and from itself. A managed node
group's launch template must not name a subnet or instance profile: the node group supplies both.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from pulumi_llmd.catalog.efa import efa_interface_layout
from pulumi_llmd.cloud.kubeconfig import eks_kubeconfig
from pulumi_llmd.cloud.pools import check_gpus_per_pod, serving_pools
from pulumi_llmd.components.modelserver import DEFAULT_VLLM_IMAGE
from pulumi_llmd.components.platform import Platform, PodNetworking
from pulumi_llmd.config.eks import EksConfig
from pulumi_llmd.config.errors import ConfigError, Problem
from pulumi_llmd.config.models import Engine, StackConfig
from pulumi_llmd.config.nodes import pool_tolerations

EFA_RESOURCE = "vpc.amazonaws.com/efa"
EKS_CHARTS_REPO = "https://aws.github.io/eks-charts"
NVIDIA_DEVICE_PLUGIN_REPO = "https://nvidia.github.io/k8s-device-plugin"
# The NVIDIA device plugin chart schedules only on nodes with this label (or NFD's PCI labels, and
# this project does not install NFD), so the GPU node group carries it.
NVIDIA_GPU_PRESENT_LABEL = "nvidia.com/gpu.present"

# NIXL's plugin for EFA (llm-d's AWS P/D guide); its default UCX backend has no EFA transport.
NIXL_EFA_BACKEND = "LIBFABRIC"

# libfabric / NCCL settings for EFA with GPUDirect RDMA (AWS EFA run scripts and the aws-ofi-nccl
# docs): the EFA provider, device RDMA (p4d/p5 only), fork safety for Python workers, and NVSHMEM
# over libfabric for expert-parallel kernels.
EFA_ENV: dict[str, str] = {
    "FI_PROVIDER": "efa",
    "FI_EFA_USE_DEVICE_RDMA": "1",
    "FI_EFA_FORK_SAFE": "1",
    "NCCL_SOCKET_IFNAME": "^lo,docker",
    "NVSHMEM_REMOTE_TRANSPORT": "libfabric",
    "NVSHMEM_LIBFABRIC_PROVIDER": "efa",
}

_MANAGED_POLICY = "arn:{partition}:iam::aws:policy/{name}"
_CLUSTER_POLICIES = ("AmazonEKSClusterPolicy",)
_NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")


def aws_partition(region: str) -> str:
    """The ARN partition of a region, without a lookup (China and GovCloud have their own)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _assume_role_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


class EksGpuCapacity(pulumi.ComponentResource):
    """Cluster (created or adopted) + EFA GPU node group + device plugins, and a provider for the cluster."""

    k8s_provider: k8s.Provider

    def __init__(
        self,
        name: str,
        config: EksConfig,
        kubernetes_version: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("llmd:cloud:EksGpuCapacity", name, None, opts)
        self.config = config
        self._name = name
        aws_provider = aws.Provider(
            f"{name}-aws", region=config.region, opts=pulumi.ResourceOptions(parent=self)
        )
        self._child = pulumi.ResourceOptions(parent=self, provider=aws_provider)
        self._kubernetes_version = kubernetes_version

        if config.cluster.create:
            cluster_name, endpoint, ca_data, cluster_sg, vpc_id, cluster_ready = self._created_cluster()
        else:
            cluster_name, endpoint, ca_data, cluster_sg, vpc_id = self._adopted_cluster(aws_provider)
            cluster_ready = []
        self.cluster_name = cluster_name

        node_role_arn, role_ready = self._node_role()
        if config.cluster.create and config.cluster.system_node_group.enabled:
            cluster_ready.append(
                self._system_node_group(cluster_name, node_role_arn, cluster_ready + role_ready)
            )

        self.efa_security_group = self._efa_security_group(vpc_id)
        self.placement_group = (
            aws.ec2.PlacementGroup(f"{name}-gpu-placement", strategy="cluster", opts=self._child)
            if config.node_group.effective_placement_group
            else None
        )
        self.launch_template = self._launch_template(cluster_sg)
        self.node_group = self._gpu_node_group(cluster_name, node_role_arn, cluster_ready + role_ready)

        self.k8s_provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=eks_kubeconfig(cluster_name, config.region, endpoint, ca_data),
            opts=pulumi.ResourceOptions(parent=self),
        )
        in_cluster = pulumi.ResourceOptions(parent=self, provider=self.k8s_provider, depends_on=cluster_ready)
        self.device_plugins = self._device_plugins(in_cluster)
        self.pod_networking = eks_pod_networking(config)
        self.register_outputs(
            {
                "clusterName": cluster_name,
                "nodeGroup": self.node_group.node_group_name,
                "efaInterfaces": config.node_group.instance.efa_interfaces,
            }
        )

    @property
    def ready(self) -> list[pulumi.Resource]:
        """What in-cluster workloads must wait for: GPU nodes and the plugins advertising GPUs and EFAs."""
        return [self.node_group, *self.device_plugins]

    # --- cluster --------------------------------------------------------------------------------

    def _policy_arn(self, policy: str) -> str:
        return _MANAGED_POLICY.format(partition=aws_partition(self.config.region), name=policy)

    def _managed_policies(
        self, role: aws.iam.Role, names: tuple[str, ...], prefix: str
    ) -> list[pulumi.Resource]:
        return [
            aws.iam.RolePolicyAttachment(
                f"{prefix}-{policy}",
                role=role.name,
                policy_arn=self._policy_arn(policy),
                opts=self._child,
            )
            for policy in names
        ]

    def _created_cluster(
        self,
    ) -> tuple[
        pulumi.Output[str],
        pulumi.Output[str],
        pulumi.Output[str],
        pulumi.Output[str],
        pulumi.Input[str],
        list[pulumi.Resource],
    ]:
        config, name = self.config, self._name
        spec = config.cluster
        role = aws.iam.Role(
            f"{name}-cluster-role",
            assume_role_policy=_assume_role_policy("eks.amazonaws.com"),
            opts=self._child,
        )
        attachments = self._managed_policies(role, _CLUSTER_POLICIES, f"{name}-cluster")
        cluster = aws.eks.Cluster(
            f"{name}-cluster",
            name=spec.name,
            version=self._kubernetes_version,
            role_arn=role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=list(spec.subnet_ids),
                endpoint_public_access=spec.endpoint_public_access,
                endpoint_private_access=spec.endpoint_private_access,
            ),
            # Access entries (API) for the node roles EKS registers; the creator keeps admin so the
            # same `pulumi up` can install the in-cluster objects.
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API_AND_CONFIG_MAP",
                bootstrap_cluster_creator_admin_permissions=True,
            ),
            deletion_protection=spec.deletion_protection,
            opts=pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=attachments)),
        )
        assert config.vpc_id is not None  # enforced by EksConfig when creating a cluster
        return (
            cluster.name,
            cluster.endpoint,
            cluster.certificate_authority.apply(lambda ca: ca.data or ""),
            cluster.vpc_config.apply(lambda vpc: vpc.cluster_security_group_id or ""),
            config.vpc_id,
            [cluster],
        )

    def _adopted_cluster(
        self, aws_provider: aws.Provider
    ) -> tuple[
        pulumi.Output[str], pulumi.Output[str], pulumi.Output[str], pulumi.Output[str], pulumi.Input[str]
    ]:
        config = self.config
        found = aws.eks.get_cluster_output(
            name=config.cluster.name, opts=pulumi.InvokeOutputOptions(parent=self, provider=aws_provider)
        )
        vpc_id: pulumi.Input[str] = config.vpc_id or found.vpc_config.vpc_id
        return (
            found.name,
            found.endpoint,
            found.certificate_authorities.apply(lambda cas: cas[0].data if cas else ""),
            found.vpc_config.cluster_security_group_id,
            vpc_id,
        )

    def _node_role(self) -> tuple[pulumi.Input[str], list[pulumi.Resource]]:
        if self.config.node_group.node_role_arn is not None:
            return self.config.node_group.node_role_arn, []
        role = aws.iam.Role(
            f"{self._name}-node-role",
            assume_role_policy=_assume_role_policy("ec2.amazonaws.com"),
            opts=self._child,
        )
        return role.arn, self._managed_policies(role, _NODE_POLICIES, f"{self._name}-node")

    def _system_node_group(
        self, cluster_name: pulumi.Output[str], node_role_arn: pulumi.Input[str], ready: list[pulumi.Resource]
    ) -> aws.eks.NodeGroup:
        spec = self.config.cluster
        return aws.eks.NodeGroup(
            f"{self._name}-system",
            cluster_name=cluster_name,
            node_group_name="system",
            node_role_arn=node_role_arn,
            subnet_ids=list(spec.subnet_ids),
            ami_type="AL2023_x86_64_STANDARD",
            instance_types=[spec.system_node_group.instance_type],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                desired_size=spec.system_node_group.size,
                min_size=spec.system_node_group.size,
                max_size=spec.system_node_group.size,
            ),
            opts=pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=ready)),
        )

    # --- GPU node group -------------------------------------------------------------------------

    def _efa_security_group(self, vpc_id: pulumi.Input[str]) -> aws.ec2.SecurityGroup:
        name = self._name
        group = aws.ec2.SecurityGroup(
            f"{name}-efa",
            vpc_id=vpc_id,
            description="EFA: all traffic between interfaces of this group (required by EFA's SRD transport)",
            opts=self._child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-efa-ingress-self",
            security_group_id=group.id,
            referenced_security_group_id=group.id,
            ip_protocol="-1",
            description="EFA: all protocols from members of this group",
            opts=self._child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-efa-egress-self",
            security_group_id=group.id,
            referenced_security_group_id=group.id,
            ip_protocol="-1",
            description="EFA: all protocols to members of this group",
            opts=self._child,
        )
        return group

    def _launch_template(self, cluster_sg: pulumi.Input[str]) -> aws.ec2.LaunchTemplate:
        pool = self.config.node_group
        primary_groups: list[pulumi.Input[str]] = [
            cluster_sg,
            self.efa_security_group.id,
            *pool.security_group_ids,
        ]
        interfaces = [
            aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                network_card_index=slot.network_card_index,
                device_index=slot.device_index,
                interface_type=slot.interface_type,
                security_groups=primary_groups if slot.is_primary else [self.efa_security_group.id],
                delete_on_termination="true",
            )
            for slot in efa_interface_layout(pool.instance)
        ]

        market = None
        reservation = None
        if pool.capacity_type == "CAPACITY_BLOCK":
            market = aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type="capacity-block")
        if pool.capacity_reservation_id is not None:
            reservation = aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs(
                capacity_reservation_target=aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs(
                    capacity_reservation_id=pool.capacity_reservation_id
                )
            )

        return aws.ec2.LaunchTemplate(
            f"{self._name}-{pool.name}",
            description=f"{pool.instance_type} GPU nodes, {pool.instance.efa_interfaces} EFA interfaces",
            # In the launch template, not the node group: AWS requires it there for Capacity Blocks
            # (EKS user guide, capacity-blocks-mng: "InstanceType set to an instance type that supports
            # Capacity Blocks"), and EKS then refuses instanceTypes on the node group (CreateNodegroup
            # API, instanceTypes). One place for every capacity type.
            instance_type=pool.instance_type,
            network_interfaces=interfaces,
            placement=(
                aws.ec2.LaunchTemplatePlacementArgs(group_name=self.placement_group.name)
                if self.placement_group is not None
                else None
            ),
            instance_market_options=market,
            capacity_reservation_specification=reservation,
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=pool.disk_size_gib,
                        volume_type="gp3",
                        delete_on_termination="true",
                        encrypted="true",
                    ),
                )
            ],
            # IMDSv2 only; hop limit 2 lets pods that need instance metadata (the EFA plugin) reach it.
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=2
            ),
            opts=self._child,
        )

    def _gpu_node_group(
        self, cluster_name: pulumi.Output[str], node_role_arn: pulumi.Input[str], ready: list[pulumi.Resource]
    ) -> aws.eks.NodeGroup:
        pool = self.config.node_group
        return aws.eks.NodeGroup(
            f"{self._name}-{pool.name}",
            cluster_name=cluster_name,
            node_group_name=pool.name,
            node_role_arn=node_role_arn,
            # One AZ: the cluster placement group and any capacity reservation are single-AZ.
            subnet_ids=[pool.subnet_id],
            # The accelerated AL2023 AMI carries the NVIDIA driver, container toolkit and EFA host
            # components; the device plugins come from the charts below.
            ami_type="AL2023_x86_64_NVIDIA",
            # CAPACITY_BLOCK is an EKS API value newer than the SDK's docstring (ON_DEMAND, SPOT).
            capacity_type=pool.capacity_type,
            # The instance type comes from the launch template (see _launch_template).
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=self.launch_template.id,
                version=self.launch_template.latest_version.apply(str),
            ),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                desired_size=pool.desired_size, min_size=pool.min_size, max_size=pool.max_size
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            labels={**pool.labels, NVIDIA_GPU_PRESENT_LABEL: "true"},
            taints=[
                aws.eks.NodeGroupTaintArgs(key=t.key, value=t.value or None, effect=t.cloud_effect)
                for t in pool.taints
            ],
            opts=pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=ready)),
        )

    # --- in-cluster -----------------------------------------------------------------------------

    def _device_plugins(self, opts: pulumi.ResourceOptions) -> list[pulumi.Resource]:
        addons = self.config.addons
        pool = self.config.node_group
        efa_plugin = k8s.helm.v4.Chart(
            f"{self._name}-efa-device-plugin",
            chart="aws-efa-k8s-device-plugin",
            version=addons.efa_device_plugin_version,
            namespace=addons.namespace,
            repository_opts=k8s.helm.v4.RepositoryOptsArgs(repo=EKS_CHARTS_REPO),
            # The chart's own node affinity already limits it to EFA instance types; it must run
            # whatever taints the GPU nodes carry.
            values={"tolerations": [{"operator": "Exists"}]},
            opts=opts,
        )
        gpu_taints: list[dict[str, Any]] = [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            *pool_tolerations(pool.taints),
        ]
        nvidia_plugin = k8s.helm.v4.Chart(
            f"{self._name}-nvidia-device-plugin",
            chart="nvidia-device-plugin",
            version=addons.nvidia_device_plugin_version,
            namespace=addons.namespace,
            repository_opts=k8s.helm.v4.RepositoryOptsArgs(repo=NVIDIA_DEVICE_PLUGIN_REPO),
            values={"tolerations": gpu_taints},
            opts=opts,
        )
        return [efa_plugin, nvidia_plugin]


def eks_pod_networking(config: EksConfig) -> PodNetworking:
    """EFA devices, libfabric/NCCL env, NIXL over libfabric, IPC_LOCK and GPU-pool scheduling for
    model-server pods."""
    pool = config.node_group
    return PodNetworking(
        resources={EFA_RESOURCE: str(pool.effective_efa_per_pod)},
        env=dict(EFA_ENV),
        # EFA registers (pins) memory for RDMA.
        capabilities=["IPC_LOCK"],
        node_selector={**pool.labels, "node.kubernetes.io/instance-type": pool.instance_type},
        tolerations=pool_tolerations(pool.taints),
        nixl_backends=(NIXL_EFA_BACKEND,),
    )


# llm-d's AWS overlays run an AWS Deep Learning Container vLLM image, which carries the EFA
# installer's libfabric and aws-ofi-nccl (llm-d guides/recipes/modelserver/components/images/
# gpu-vllm/aws-efa/kustomization.yaml); the upstream vllm/vllm-openai image has no EFA provider for
# NIXL's LIBFABRIC backend to open.
EFA_VLLM_IMAGE_EXAMPLE = "public.ecr.aws/deep-learning-containers/vllm:0.26.0-gpu-py312-cu130-ubuntu22.04-ec2"
UPSTREAM_VLLM_REPOSITORIES = (
    "vllm/vllm-openai",
    "docker.io/vllm/vllm-openai",
    "index.docker.io/vllm/vllm-openai",
)


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    return name[:colon] if colon > slash else name


def check_efa_images(config: StackConfig) -> None:
    """P/D KV transfer on EKS goes over NIXL's LIBFABRIC backend, which needs libfabric with the EFA
    provider in the image: refuse pools that would run the upstream vLLM image, naming the key."""
    # Only disaggregated models transfer KV (each models[] entry decides for its own pools).
    disaggregated = {
        model.section_key(role)
        for model in config.served()
        if model.disaggregated and model.model.engine is not Engine.SIMULATOR
        for role in ("prefill", "decode")
    }
    problems = [
        Problem(
            f"{key}.image",
            f"must be a vLLM image that carries the EFA libfabric stack on platform eks (got "
            f"{pool.image or 'the default ' + DEFAULT_VLLM_IMAGE}): P/D KV transfer uses NIXL's "
            f"{NIXL_EFA_BACKEND} backend over EFA, which the upstream vllm/vllm-openai image lacks; "
            f"use an AWS Deep Learning Container as llm-d's AWS guide does, e.g. {EFA_VLLM_IMAGE_EXAMPLE}",
        )
        for key, pool in serving_pools(config)
        if key in disaggregated
        and (pool.image is None or _repository(pool.image) in UPSTREAM_VLLM_REPOSITORIES)
    ]
    if problems:
        raise ConfigError(problems)


def provision(config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> Platform:
    """Entry point for `llmd:platform: eks` (called by the spine's provision_platform)."""
    if config.eks is None:
        raise ValueError("llmd:eks is required when llmd:platform is 'eks'")
    check_efa_images(config)
    pool = config.eks.node_group
    pods_per_node = pool.instance.efa_interfaces // pool.effective_efa_per_pod
    share = (
        pool.instance_type
        if pods_per_node == 1
        else f"a 1/{pods_per_node} share of {pool.instance_type} (eks.nodeGroup.efaPerPod)"
    )
    check_gpus_per_pod(config, share, pool.instance.gpus // pods_per_node, whole_node=False)
    capacity = EksGpuCapacity("eks", config.eks, config.kubernetes_version, opts=opts)
    return Platform(
        k8s_provider=capacity.k8s_provider,
        pod_networking=capacity.pod_networking,
        depends_on=capacity.ready,
    )
