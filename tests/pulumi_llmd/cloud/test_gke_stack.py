"""The GKE example stack under the offline render: cloud inputs, in-cluster wiring, variants."""

from __future__ import annotations

import ipaddress
import json
import re
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
    render_edited,
    tolerates,
)
from tests.support.stacks import CRDS, validate_custom

NODE_POOL = "gcp:container/nodePool:NodePool"
CLUSTER = "gcp:container/cluster:Cluster"
NETWORK = "gcp:compute/network:Network"
SUBNET = "gcp:compute/subnetwork:Subnetwork"
GKE_NETWORK = "kubernetes:networking.gke.io/v1:Network"
GKE_PARAMS = "kubernetes:networking.gke.io/v1:GKENetworkParamSet"


@pytest.fixture(scope="module")
def gke(cloud_renders: dict[str, RenderResult]) -> RenderResult:
    return cloud_renders["gke"]


def gpu_pool(result: RenderResult) -> dict[str, Any]:
    return one(result, NODE_POOL, "gke-h200").inputs


def test_gpu_node_pool_carries_eight_h200_with_managed_driver_and_gvnic(gke: RenderResult) -> None:
    pool = gpu_pool(gke)
    node = pool["nodeConfig"]
    assert node["machineType"] == "a3-ultragpu-8g"
    assert node["guestAccelerators"] == [
        {
            "type": "nvidia-h200-141gb",
            "count": 8,
            "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"},
        }
    ]
    assert node["gvnic"] == {"enabled": True}
    assert node["imageType"] == "COS_CONTAINERD"
    assert node["diskType"] == "hyperdisk-balanced"
    assert node["ephemeralStorageLocalSsdConfig"] == {"localSsdCount": 32}
    assert node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert pool["nodeLocations"] == ["us-central1-b"]
    assert pool["location"] == "us-central1"
    assert pool["nodeCount"] == 2
    assert pool["cluster"] == "llmd-h200"


def test_gpu_node_pool_consumes_the_reservation_with_labels_and_taints(gke: RenderResult) -> None:
    node = gpu_pool(gke)["nodeConfig"]
    assert node["reservationAffinity"] == {
        "consumeReservationType": "SPECIFIC_RESERVATION",
        "key": "compute.googleapis.com/reservation-name",
        "values": ["my-h200-reservation"],
    }
    assert node["labels"] == {"llm-d.ai/accelerator-pool": "h200"}
    assert node["taints"] == [{"key": "llm-d.ai/inference", "value": "true", "effect": "NO_SCHEDULE"}]
    assert "spot" not in node and "flexStart" not in node
    # placement: none in the example (a reservation decides where nodes land).
    assert "placementPolicy" not in gpu_pool(gke)


def test_additional_node_networks_are_gvnic_then_each_rdma_subnet_in_nic_order(gke: RenderResult) -> None:
    configs = gpu_pool(gke)["networkConfig"]["additionalNodeNetworkConfigs"]
    assert configs[0] == {"network": "llmd-gvnic", "subnetwork": "llmd-gvnic-sub"}
    assert configs[1:] == [{"network": "llmd-rdma", "subnetwork": f"llmd-rdma-sub-{i}"} for i in range(8)]


def test_rdma_vpc_uses_the_zonal_roce_profile_with_one_subnet_per_nic(gke: RenderResult) -> None:
    rdma = one(gke, NETWORK, "gke-net-rdma").inputs
    assert rdma["networkProfile"] == "projects/my-gcp-project/global/networkProfiles/us-central1-b-vpc-roce"
    assert rdma["autoCreateSubnetworks"] is False
    assert rdma["mtu"] == 8896
    subnets = sorted(
        (r.inputs for r in cloud(gke, SUBNET) if r.name.startswith("gke-net-rdma-sub-")),
        key=lambda s: s["name"],
    )
    cidrs = [ipaddress.IPv4Network(s["ipCidrRange"]) for s in subnets]
    assert [str(c) for c in cidrs] == [f"192.168.{64 + i}.0/24" for i in range(8)]
    assert all(s["region"] == "us-central1" and s["network"] == "gke-net-rdma-id" for s in subnets)
    gvnic = one(gke, NETWORK, "gke-net-gvnic").inputs
    assert "networkProfile" not in gvnic and gvnic["mtu"] == 8896
    firewall = one(gke, "gcp:compute/firewall:Firewall").inputs
    assert firewall["sourceRanges"] == ["192.168.0.0/24"]
    assert sorted(a["protocol"] for a in firewall["allows"]) == ["icmp", "tcp", "udp"]


def test_created_cluster_has_dataplane_v2_multi_networking_and_workload_identity(gke: RenderResult) -> None:
    cluster = one(gke, CLUSTER).inputs
    assert cluster["datapathProvider"] == "ADVANCED_DATAPATH"
    assert cluster["enableMultiNetworking"] is True
    assert cluster["networkingMode"] == "VPC_NATIVE"
    assert cluster["workloadIdentityConfig"] == {"workloadPool": "my-gcp-project.svc.id.goog"}
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}
    assert cluster["minMasterVersion"] == "1.35"
    assert cluster["removeDefaultNodePool"] is True
    system = one(gke, NODE_POOL, "gke-system").inputs
    assert "guestAccelerators" not in system["nodeConfig"] and "taints" not in system["nodeConfig"]


def test_every_in_cluster_resource_uses_the_new_clusters_provider(gke: RenderResult) -> None:
    provider = one(gke, "pulumi:providers:kubernetes")
    assert provider.name == "gke-k8s"
    kubeconfig = json.loads(provider.inputs["kubeconfig"])
    # Built from the created cluster's outputs (endpoint/CA), so it cannot exist before the cluster.
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.10"
    assert kubeconfig["users"][0]["user"]["exec"]["command"] == "gke-gcloud-auth-plugin"
    resources = in_cluster(gke)
    assert len(resources) > 20
    assert {provider_urn(r.provider) for r in resources} == {provider.urn}


def test_llm_d_objects_wait_for_the_gpu_pool_and_the_rdma_networks(gke: RenderResult) -> None:
    namespace = gke.get("Namespace", "llm-d").registration
    pool = one(gke, NODE_POOL, "gke-h200")
    networks = cloud(gke, GKE_NETWORK)
    installer = one(gke, "kubernetes:yaml/v2:ConfigFile", "gke-rdma-nccl-rdma-installer")
    assert {pool.urn, installer.urn, *(n.urn for n in networks)} <= set(namespace.dependencies)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_model_server_pods_attach_every_rdma_nic(gke: RenderResult) -> None:
    network_names = {r.inputs["metadata"]["name"] for r in cloud(gke, GKE_NETWORK)}
    for role in ("prefill", "decode"):
        template = gke.get("Deployment", f"llama-70b-{role}").document["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["networking.gke.io/default-interface"] == "eth0"
        interfaces = json.loads(annotations["networking.gke.io/interfaces"])
        assert interfaces[0] == {"interfaceName": "eth0", "network": "default"}
        assert interfaces[1:] == [{"interfaceName": f"eth{i + 2}", "network": f"rdma-{i}"} for i in range(8)]
        assert {i["network"] for i in interfaces[1:]} <= network_names
        spec = template["spec"]
        engine = spec["containers"][0]
        assert env_of(engine)["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"
        assert engine["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert "IPC_LOCK" in engine["securityContext"]["capabilities"]["add"]
        assert spec["nodeSelector"] == {"llm-d.ai/accelerator-pool": "h200"}
        # The configured taint, and the one GKE itself puts on every GPU node.
        assert tolerates(
            spec["tolerations"], {"key": "llm-d.ai/inference", "value": "true", "effect": "NoSchedule"}
        )
        assert tolerates(
            spec["tolerations"], {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
        )
        assert not tolerates(spec["tolerations"], {"key": "other", "value": "x", "effect": "NoSchedule"})


def test_single_node_pools_turn_gke_nccl_plugins_off_and_mount_no_host_paths(gke: RenderResult) -> None:
    # Tensor parallel 8 inside one a3-ultragpu-8g: llm-d's disable-gke-nccl-tuner-patch, and no gIB.
    for role in ("prefill", "decode"):
        spec = gke.get("Deployment", f"llama-70b-{role}").document["spec"]["template"]["spec"]
        env = env_of(spec["containers"][0])
        assert (env["NCCL_TUNER_PLUGIN"], env["NCCL_NET_PLUGIN"]) == ("none", "")
        assert "NCCL_NET" not in env and not any(k.startswith("NCCL_IB_") for k in env)
        assert not [v for v in spec["volumes"] if "hostPath" in v]


def test_multi_node_pools_get_gib_read_only_and_no_single_node_nccl_env(tmp_path: Path) -> None:
    def two_nodes_per_decode(config: dict[str, Any]) -> None:
        config["llmd:decode"] = {**config["llmd:decode"], "nodesPerReplica": 2}

    result = render_edited("gke", two_nodes_per_decode, tmp_path)
    lws = result.get("LeaderWorkerSet", "llama-70b-decode").document
    if CRDS.is_dir():  # the rest of this test needs no CRD
        validate_custom(lws)
    workers = lws["spec"]["leaderWorkerTemplate"]
    for template in (workers["leaderTemplate"], workers["workerTemplate"]):
        spec = template["spec"]
        engine = spec["containers"][0]
        env = env_of(engine)
        assert env["NCCL_NET"] == "gIB"
        assert "NCCL_TUNER_PLUGIN" not in env and "NCCL_NET_PLUGIN" not in env
        mounts = {m["name"]: m for m in engine["volumeMounts"]}
        volumes = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
        assert volumes == {
            "gib": {"path": "/home/kubernetes/bin/gib", "type": "Directory"},
            "nvidia-install-dir": {"path": "/home/kubernetes/bin/nvidia", "type": "Directory"},
        }
        assert (mounts["gib"]["mountPath"], mounts["nvidia-install-dir"]["mountPath"]) == (
            "/usr/local/gib",
            "/usr/local/nvidia",
        )
        assert all(mounts[name]["readOnly"] is True for name in volumes)
    # The prefill pool still fits one node.
    prefill = result.get("Deployment", "llama-70b-prefill").document["spec"]["template"]["spec"]
    assert env_of(prefill["containers"][0])["NCCL_TUNER_PLUGIN"] == "none"


def test_pd_pools_keep_vllms_default_nixl_backend(gke: RenderResult) -> None:
    # GPUDirect RDMA on GKE is RoCE, which NIXL's default UCX backend drives.
    for role in ("prefill", "decode"):
        assert kv_transfer_config(gke, f"llama-70b-{role}") == {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
        }


def test_network_objects_point_at_the_vpcs_the_node_pool_attaches(gke: RenderResult) -> None:
    params = {r.inputs["metadata"]["name"]: r.inputs["spec"] for r in cloud(gke, GKE_PARAMS)}
    assert params["gvnic-1"] == {
        "vpc": "llmd-gvnic",
        "vpcSubnet": "llmd-gvnic-sub",
        "deviceMode": "NetDevice",
    }
    for i in range(8):
        assert params[f"rdma-{i}"] == {
            "vpc": "llmd-rdma",
            "vpcSubnet": f"llmd-rdma-sub-{i}",
            "deviceMode": "RDMA",
        }
    for network in cloud(gke, GKE_NETWORK):
        ref = network.inputs["spec"]["parametersRef"]
        assert ref["name"] == network.inputs["metadata"]["name"] and ref["name"] in params


def test_rdma_installer_is_remote_yaml_pinned_to_a_commit(gke: RenderResult) -> None:
    installer = one(gke, "kubernetes:yaml/v2:ConfigFile", "gke-rdma-nccl-rdma-installer").inputs
    assert re.fullmatch(
        r"https://raw\.githubusercontent\.com/GoogleCloudPlatform/container-engine-accelerators/"
        r"[0-9a-f]{40}/gpudirect-rdma/nccl-rdma-installer\.yaml",
        installer["file"],
    )


# --- variants -------------------------------------------------------------------------------------


def _pool(config: dict[str, Any]) -> dict[str, Any]:
    pool: dict[str, Any] = config["llmd:gke"]["nodePool"]
    return pool


def test_flex_start_pool_scales_from_zero_without_reservations_or_auto_repair(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        pool = _pool(config)
        for key in ("reservation", "nodeCount"):
            del pool[key]
        pool.update(
            provisioning="flex-start", queuedProvisioning=True, autoscaling={"minNodes": 0, "maxNodes": 4}
        )

    pool = gpu_pool(render_edited("gke", edit, tmp_path))
    assert pool["nodeConfig"]["flexStart"] is True
    assert pool["nodeConfig"]["reservationAffinity"] == {"consumeReservationType": "NO_RESERVATION"}
    assert pool["autoscaling"] == {"minNodeCount": 0, "maxNodeCount": 4, "locationPolicy": "ANY"}
    assert pool["management"] == {"autoRepair": False, "autoUpgrade": True}
    assert pool["queuedProvisioning"] == {"enabled": True}
    assert "nodeCount" not in pool


def test_spot_pool_with_compact_placement_and_a4(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        pool = _pool(config)
        del pool["reservation"]
        pool.update(provisioning="spot", placement="compact", machineType="a4-highgpu-8g")

    pool = gpu_pool(render_edited("gke", edit, tmp_path))
    assert pool["nodeConfig"]["spot"] is True
    assert pool["nodeConfig"]["guestAccelerators"][0]["type"] == "nvidia-b200"
    assert pool["nodeConfig"]["reservationAffinity"] == {"consumeReservationType": "NO_RESERVATION"}
    assert pool["placementPolicy"] == {"type": "COMPACT"}


def test_a3_mega_without_rdma_gets_no_rdma_vpc_networks_or_annotations(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        _pool(config)["machineType"] = "a3-megagpu-8g"
        config["llmd:gke"]["rdma"] = {"enabled": False}

    result = render_edited("gke", edit, tmp_path)
    pool = gpu_pool(result)
    assert pool["nodeConfig"]["guestAccelerators"][0] == {
        "type": "nvidia-h100-mega-80gb",
        "count": 8,
        "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"},
    }
    assert "networkConfig" not in pool
    assert (
        cloud(result, NETWORK) == [] and cloud(result, GKE_NETWORK) == [] and cloud(result, GKE_PARAMS) == []
    )
    template = result.get("Deployment", "llama-70b-decode").document["spec"]["template"]
    assert "annotations" not in template["metadata"]
    assert template["spec"]["nodeSelector"] == {"llm-d.ai/accelerator-pool": "h200"}
