"""The EKS example stack under the offline render: EFA launch template, node group, plugins, pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from render.engine import RenderResult
from tests.support.cloud import (
    cloud,
    in_cluster,
    kv_transfer_config,
    one,
    provider_urn,
    refusal_before_any_resource,
    render_edited,
    tolerates,
)

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
CHART = "kubernetes:helm.sh/v4:Chart"


@pytest.fixture(scope="module")
def eks(cloud_renders: dict[str, RenderResult]) -> RenderResult:
    return cloud_renders["eks"]


def interfaces(result: RenderResult) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = one(result, LAUNCH_TEMPLATE).inputs["networkInterfaces"]
    return found


def test_p5en_launch_template_has_an_ena_primary_and_one_efa_only_interface_per_card(
    eks: RenderResult,
) -> None:
    slots = interfaces(eks)
    assert len(slots) == 17
    assert [(s["networkCardIndex"], s["deviceIndex"], s["interfaceType"]) for s in slots] == [
        (0, 0, "interface"),
        (0, 1, "efa-only"),
        *[(card, 0, "efa-only") for card in range(1, 16)],
    ]
    # Subnets come from the node group: EKS rejects a managed node group launch template naming one.
    assert all("subnetId" not in s for s in slots)


def test_every_interface_carries_the_efa_group_and_the_primary_the_cluster_group(eks: RenderResult) -> None:
    efa_group = one(eks, "aws:ec2/securityGroup:SecurityGroup", "eks-efa")
    efa_id = f"{efa_group.name}-id"
    slots = interfaces(eks)
    assert slots[0]["securityGroups"] == ["sg-0c1a5e7c1a5e7c1a5", efa_id]
    assert all(s["securityGroups"] == [efa_id] for s in slots[1:])
    assert "vpcSecurityGroupIds" not in one(eks, LAUNCH_TEMPLATE).inputs


def test_efa_security_group_allows_all_traffic_to_and_from_itself(eks: RenderResult) -> None:
    group = one(eks, "aws:ec2/securityGroup:SecurityGroup", "eks-efa")
    assert group.inputs["vpcId"] == "vpc-0a1b2c3d4e5f60718"
    for rule_type in (
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
    ):
        rule = one(eks, rule_type).inputs
        assert rule["ipProtocol"] == "-1"
        assert rule["securityGroupId"] == rule["referencedSecurityGroupId"] == "eks-efa-id"
        assert "cidrIpv4" not in rule


def test_capacity_block_launch_template_has_the_instance_type_and_no_placement_group(
    eks: RenderResult,
) -> None:
    template = one(eks, LAUNCH_TEMPLATE).inputs
    # A cluster placement group on Capacity Block instances fails with InsufficientInstanceCapacity;
    # AWS wants the instance type in a Capacity Block launch template.
    assert cloud(eks, "aws:ec2/placementGroup:PlacementGroup") == []
    assert "placement" not in template
    assert template["instanceType"] == "p5en.48xlarge"
    assert template["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert template["capacityReservationSpecification"] == {
        "capacityReservationTarget": {"capacityReservationId": "cr-0a1b2c3d4e5f60718"}
    }
    assert template["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 500
    assert template["metadataOptions"]["httpTokens"] == "required"


def test_gpu_node_group_on_the_nvidia_al2023_ami_in_one_subnet(eks: RenderResult) -> None:
    group = one(eks, NODE_GROUP, "eks-h200").inputs
    assert group["amiType"] == "AL2023_x86_64_NVIDIA"
    # From the launch template: EKS refuses instanceTypes beside a template that names one.
    assert "instanceTypes" not in group
    assert group["capacityType"] == "CAPACITY_BLOCK"
    assert group["subnetIds"] == ["subnet-0a1b2c3d4e5f60001"]
    assert group["scalingConfig"] == {"desiredSize": 2, "minSize": 0, "maxSize": 2}
    assert group["launchTemplate"] == {"id": "eks-h200-id", "version": "1"}
    assert group["labels"] == {"llm-d.ai/accelerator-pool": "h200", "nvidia.com/gpu.present": "true"}
    assert group["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert group["nodeRoleArn"] == "arn:aws:iam::123456789012:role/eks-node-role"
    cluster = one(eks, "aws:eks/cluster:Cluster").inputs
    assert cluster["version"] == "1.35"
    assert cluster["vpcConfig"]["subnetIds"] == ["subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002"]


def test_node_role_has_the_worker_cni_and_registry_policies(eks: RenderResult) -> None:
    attached = {
        r.inputs["policyArn"]
        for r in cloud(eks, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if r.name.startswith("eks-node-")
    }
    assert attached == {
        "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
        "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
        "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    }


def test_device_plugin_charts_are_pinned_and_tolerate_the_gpu_taint(eks: RenderResult) -> None:
    efa = eks.get("Chart", "eks-efa-device-plugin").document
    assert (efa["chart"], efa["repository"], efa["version"]) == (
        "aws-efa-k8s-device-plugin",
        "https://aws.github.io/eks-charts",
        "v0.5.30",
    )
    assert efa["values"]["tolerations"] == [{"operator": "Exists"}]
    nvidia = eks.get("Chart", "eks-nvidia-device-plugin").document
    assert (nvidia["chart"], nvidia["repository"], nvidia["version"]) == (
        "nvidia-device-plugin",
        "https://nvidia.github.io/k8s-device-plugin",
        "0.20.0",
    )
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert tolerates(nvidia["values"]["tolerations"], taint)
    assert tolerates(efa["values"]["tolerations"], taint)


def test_every_in_cluster_resource_uses_the_new_clusters_provider(eks: RenderResult) -> None:
    provider = one(eks, "pulumi:providers:kubernetes")
    kubeconfig = json.loads(provider.inputs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://llmd-h200.placeholder.eks.amazonaws.com"
    assert kubeconfig["users"][0]["user"]["exec"]["args"] == [
        "eks",
        "get-token",
        "--cluster-name",
        "llmd-h200",
        "--region",
        "us-east-1",
        "--output",
        "json",
    ]
    assert {provider_urn(r.provider) for r in in_cluster(eks)} == {provider.urn}
    namespace = eks.get("Namespace", "llm-d").registration
    plugins = [r.urn for r in cloud(eks, CHART) if "device-plugin" in r.name]
    assert {one(eks, NODE_GROUP, "eks-h200").urn, *plugins} <= set(namespace.dependencies)


def test_model_server_pods_request_efa_and_get_the_libfabric_env(eks: RenderResult) -> None:
    for role in ("prefill", "decode"):
        spec = eks.get("Deployment", f"llama-70b-{role}").document["spec"]["template"]["spec"]
        engine = spec["containers"][0]
        assert engine["resources"]["requests"]["vpc.amazonaws.com/efa"] == "8"
        assert engine["resources"]["limits"]["vpc.amazonaws.com/efa"] == "8"
        env = {e["name"]: e.get("value") for e in engine["env"]}
        assert (env["FI_PROVIDER"], env["FI_EFA_USE_DEVICE_RDMA"]) == ("efa", "1")
        assert engine["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        assert spec["nodeSelector"] == {
            "llm-d.ai/accelerator-pool": "h200",
            "node.kubernetes.io/instance-type": "p5en.48xlarge",
        }
        assert tolerates(
            spec["tolerations"], {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
        )


def test_pd_pools_move_kv_over_libfabric(eks: RenderResult) -> None:
    # NIXL's default backend (UCX) has no EFA transport; the EFA plugin is LIBFABRIC.
    for role in ("prefill", "decode"):
        assert kv_transfer_config(eks, f"llama-70b-{role}") == {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"backends": ["LIBFABRIC"]},
        }


# --- variants -------------------------------------------------------------------------------------


def test_on_demand_gets_a_cluster_placement_group_by_default(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        group = config["llmd:eks"]["nodeGroup"]
        group["capacityType"] = "ON_DEMAND"

    result = render_edited("eks", edit, tmp_path)
    placement_group = one(result, "aws:ec2/placementGroup:PlacementGroup")
    assert placement_group.inputs["strategy"] == "cluster"
    template = one(result, LAUNCH_TEMPLATE).inputs
    assert template["placement"] == {"groupName": placement_group.name}
    assert template["instanceType"] == "p5en.48xlarge"
    assert "instanceTypes" not in one(result, NODE_GROUP, "eks-h200").inputs


def test_a_placement_group_on_a_capacity_block_is_refused_before_any_resource(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["llmd:eks"]["nodeGroup"]["placementGroup"] = True

    (problem,) = refusal_before_any_resource("eks", edit, tmp_path).problems
    assert str(problem).startswith(
        "llmd:eks.nodeGroup.placementGroup true cannot be combined with capacityType CAPACITY_BLOCK"
    )


@pytest.mark.parametrize("image", [None, "vllm/vllm-openai:v0.32.0", "docker.io/vllm/vllm-openai:v0.32.0"])
def test_pd_on_eks_refuses_an_image_without_the_efa_libfabric_stack(
    image: str | None, tmp_path: Path
) -> None:
    def edit(config: dict[str, Any]) -> None:
        for role in ("llmd:prefill", "llmd:decode"):
            config[role].pop("image")
            if image is not None:
                config[role]["image"] = image

    problems = refusal_before_any_resource("eks", edit, tmp_path).problems
    assert [p.path for p in problems] == ["prefill.image", "decode.image"]
    message = str(problems[0])
    assert "LIBFABRIC" in message and "public.ecr.aws/deep-learning-containers/vllm" in message


def test_decode_only_on_eks_needs_no_efa_image(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["llmd:prefill"] = {"enabled": False}
        config["llmd:decode"].pop("image")

    result = render_edited("eks", edit, tmp_path)
    engine = result.get("Deployment", "llama-70b-decode").document["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert engine["image"] == "docker.io/vllm/vllm-openai:v0.32.0"


def test_p5_on_demand_without_placement_group(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        group = config["llmd:eks"]["nodeGroup"]
        group.update(
            instanceType="p5.48xlarge", capacityType="ON_DEMAND", placementGroup=False, efaPerPod=None
        )
        del group["capacityReservationId"]
        del group["efaPerPod"]

    result = render_edited("eks", edit, tmp_path)
    slots = interfaces(result)
    assert len(slots) == 33
    assert sorted(s["networkCardIndex"] for s in slots if s["interfaceType"] == "efa-only") == list(range(32))
    template = one(result, LAUNCH_TEMPLATE).inputs
    assert "placement" not in template and "instanceMarketOptions" not in template
    assert "capacityReservationSpecification" not in template
    assert cloud(result, "aws:ec2/placementGroup:PlacementGroup") == []
    decode = result.get("Deployment", "llama-70b-decode").document["spec"]["template"]["spec"]
    assert decode["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32"


@pytest.mark.parametrize(
    ("region", "partition"), [("us-east-1", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")]
)
def test_managed_policy_arns_use_the_regions_partition(region: str, partition: str) -> None:
    from pulumi_llmd.cloud.eks import aws_partition

    assert aws_partition(region) == partition


def test_existing_node_role_and_extra_security_groups_without_a_system_group(tmp_path: Path) -> None:
    role = "arn:aws:iam::123456789012:role/existing-gpu-nodes"

    def edit(config: dict[str, Any]) -> None:
        config["llmd:eks"]["nodeGroup"].update(nodeRoleArn=role, securityGroupIds=["sg-0123456789abcdef0"])
        config["llmd:eks"]["cluster"]["systemNodeGroup"] = {"enabled": False}

    result = render_edited("eks", edit, tmp_path)
    assert one(result, NODE_GROUP).inputs["nodeRoleArn"] == role
    assert [r.name for r in cloud(result, "aws:iam/role:Role")] == ["eks-cluster-role"]
    assert interfaces(result)[0]["securityGroups"] == [
        "sg-0c1a5e7c1a5e7c1a5",
        "eks-efa-id",
        "sg-0123456789abcdef0",
    ]
