"""GKE GPU capacity with GPUDirect RDMA: VPCs, cluster (created or adopted), GPU node pool, and the
in-cluster multi-networking objects, handed to the spine as a :class:`Platform`.

Wiring follows GKE's "classic" multi-networking RDMA model (infra reference §3): a gVNIC VPC for the
second host NIC, a RoCE VPC (network profile `<zone>-vpc-roce`) with one subnet per RDMA NIC, the
node pool's `additional_node_network_configs` in NIC order (gVNIC, then rdma 0..N-1), cluster-scoped
`GKENetworkParamSet`/`Network` pairs named `gvnic-1` and `rdma-0..N-1` (the names llm-d's GKE
overlays expect), and Google's gIB/NCCL installer DaemonSet. Model-server pods attach through the
`networking.gke.io/interfaces` annotation built by :func:`gke_pod_networking`.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from pulumi_llmd.cloud.kubeconfig import gke_kubeconfig
from pulumi_llmd.cloud.pools import check_gpus_per_pod
from pulumi_llmd.components.platform import MultiNodeNetworking, Platform, PodNetworking
from pulumi_llmd.config.gateways import GatewayProvider
from pulumi_llmd.config.gke import GkeConfig, GkeNodePoolConfig
from pulumi_llmd.config.models import StackConfig
from pulumi_llmd.config.nodes import pool_tolerations

GKE_NETWORKING_API = "networking.gke.io/v1"
GVNIC_NETWORK_NAME = "gvnic-1"
# Host paths the gIB installer fills (container-engine-accelerators gpudirect-rdma/nccl-rdma-installer.yaml)
# and where Google's RDMA test pods mount them (gpudirect-rdma/nccl-test.yaml).
GIB_HOST_PATH = "/home/kubernetes/bin/gib"
GIB_MOUNT_PATH = "/usr/local/gib"
NVIDIA_HOST_PATH = "/home/kubernetes/bin/nvidia"
NVIDIA_MOUNT_PATH = "/usr/local/nvidia"

# NCCL settings for the gIB network plugin, as gIB's set_nccl_env.sh exports them (the same values
# are baked into Google's nccl-plugin-gib-diagnostic image). vLLM is started directly, not from a
# shell that could source the script, so they are set as plain env. The tuner config path is left
# out on purpose: it differs per machine family and NCCL aborts when it points at a missing file.
GIB_NCCL_ENV: dict[str, str] = {
    "NCCL_NET": "gIB",
    "NCCL_CROSS_NIC": "0",
    "NCCL_NET_GDR_LEVEL": "PIX",
    "NCCL_P2P_NET_CHUNKSIZE": "131072",
    "NCCL_NVLS_CHUNKSIZE": "524288",
    "NCCL_IB_ADAPTIVE_ROUTING": "1",
    "NCCL_IB_QPS_PER_CONNECTION": "4",
    "NCCL_IB_TC": "52",
    "NCCL_IB_FIFO_TC": "84",
}


# Tensor parallel inside one node needs no NCCL network plugin, and with gIB installed NCCL aborts on
# its tuner config path unless both plugins are off: llm-d applies exactly these two variables to
# every GKE model server (llm-d guides/recipes/modelserver/components/disable-gke-nccl-tuner-patch;
# docs/infrastructure/providers/gke, "NCCL tuner crash when gIB is installed").
GKE_SINGLE_NODE_NCCL_ENV: dict[str, str] = {"NCCL_TUNER_PLUGIN": "none", "NCCL_NET_PLUGIN": ""}


def rdma_network_name(index: int) -> str:
    return f"rdma-{index}"


class GkeNetworks(pulumi.ComponentResource):
    """The gVNIC VPC and the RoCE VPC with one subnet per RDMA NIC (created only when RDMA is on)."""

    def __init__(self, name: str, config: GkeConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llmd:cloud:GkeNetworks", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        nics = config.node_pool.machine.rdma_nics

        self.gvnic_network = gcp.compute.Network(
            f"{name}-gvnic",
            name=config.gvnic.name,
            project=config.project,
            auto_create_subnetworks=False,
            mtu=config.gvnic.mtu,
            opts=child,
        )
        self.gvnic_subnet = gcp.compute.Subnetwork(
            f"{name}-gvnic-sub",
            name=f"{config.gvnic.name}-sub",
            project=config.project,
            region=config.region,
            network=self.gvnic_network.id,
            ip_cidr_range=config.gvnic.subnet_cidr,
            opts=child,
        )
        # Node-to-node traffic on the second NIC (NCCL bootstrap, NIXL side channel) must be allowed;
        # RoCE VPCs need no rule (their implicit rules allow ingress and egress).
        self.gvnic_firewall = gcp.compute.Firewall(
            f"{name}-gvnic-internal",
            name=f"{config.gvnic.name}-internal",
            project=config.project,
            network=self.gvnic_network.id,
            direction="INGRESS",
            source_ranges=[config.gvnic.subnet_cidr],
            allows=[
                gcp.compute.FirewallAllowArgs(protocol="tcp"),
                gcp.compute.FirewallAllowArgs(protocol="udp"),
                gcp.compute.FirewallAllowArgs(protocol="icmp"),
            ],
            opts=child,
        )
        self.rdma_network = gcp.compute.Network(
            f"{name}-rdma",
            name=config.rdma.name,
            project=config.project,
            auto_create_subnetworks=False,
            mtu=config.rdma.mtu,
            network_profile=config.rdma_network_profile,
            opts=child,
        )
        self.rdma_subnets = [
            gcp.compute.Subnetwork(
                f"{name}-rdma-sub-{index}",
                name=f"{config.rdma.name}-sub-{index}",
                project=config.project,
                region=config.region,
                network=self.rdma_network.id,
                ip_cidr_range=str(cidr),
                opts=child,
            )
            for index, cidr in enumerate(config.rdma.subnets(nics))
        ]
        self.register_outputs(
            {
                "gvnicNetwork": self.gvnic_network.name,
                "rdmaNetwork": self.rdma_network.name,
                "rdmaSubnets": [subnet.name for subnet in self.rdma_subnets],
            }
        )

    def additional_node_network_configs(
        self,
    ) -> list[gcp.container.NodePoolNetworkConfigAdditionalNodeNetworkConfigArgs]:
        """NIC order matters: GKE numbers host NICs in this order (eth1 = gVNIC, then the RDMA NICs)."""
        pairs = [(self.gvnic_network, self.gvnic_subnet)] + [
            (self.rdma_network, s) for s in self.rdma_subnets
        ]
        return [
            gcp.container.NodePoolNetworkConfigAdditionalNodeNetworkConfigArgs(
                network=network.name, subnetwork=subnet.name
            )
            for network, subnet in pairs
        ]


class GkeRdmaNetworking(pulumi.ComponentResource):
    """In-cluster side: GKENetworkParamSet + Network per NIC, and the gIB/NCCL installer DaemonSet."""

    def __init__(
        self,
        name: str,
        config: GkeConfig,
        networks: GkeNetworks,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("llmd:cloud:GkeRdmaNetworking", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Fixed object names: a replacement must delete the old object before creating the new one.
        fixed_name = pulumi.ResourceOptions(parent=self, delete_before_replace=True)

        nics = [(GVNIC_NETWORK_NAME, networks.gvnic_network, networks.gvnic_subnet, "NetDevice")]
        nics += [
            (rdma_network_name(i), networks.rdma_network, subnet, "RDMA")
            for i, subnet in enumerate(networks.rdma_subnets)
        ]
        self.param_sets: list[k8s.apiextensions.CustomResource] = []
        self.networks: list[k8s.apiextensions.CustomResource] = []
        for object_name, vpc, subnet, device_mode in nics:
            param_set = k8s.apiextensions.CustomResource(
                f"{name}-{object_name}-params",
                api_version=GKE_NETWORKING_API,
                kind="GKENetworkParamSet",
                metadata={"name": object_name},
                spec={"vpc": vpc.name, "vpcSubnet": subnet.name, "deviceMode": device_mode},
                opts=fixed_name,
            )
            network = k8s.apiextensions.CustomResource(
                f"{name}-{object_name}-network",
                api_version=GKE_NETWORKING_API,
                kind="Network",
                metadata={"name": object_name},
                spec={
                    "type": "Device",
                    "parametersRef": {
                        "group": "networking.gke.io",
                        "kind": "GKENetworkParamSet",
                        "name": object_name,
                    },
                },
                opts=pulumi.ResourceOptions.merge(fixed_name, pulumi.ResourceOptions(depends_on=[param_set])),
            )
            self.param_sets.append(param_set)
            self.networks.append(network)

        # Remote YAML pinned to a commit (config default); it installs gIB into GIB_HOST_PATH on every
        # node whose accelerator is H200 or B200.
        self.installer = k8s.yaml.v2.ConfigFile(
            f"{name}-nccl-rdma-installer", file=config.rdma.installer_url, opts=child
        )
        self.register_outputs(
            {
                "networks": [object_name for object_name, *_ in nics],
                "installerUrl": config.rdma.installer_url,
            }
        )


class GkeGpuCapacity(pulumi.ComponentResource):
    """Cluster (created or adopted) + GPU node pool + RDMA networking, and a provider for the cluster."""

    k8s_provider: k8s.Provider
    node_pool: gcp.container.NodePool

    def __init__(
        self,
        name: str,
        config: GkeConfig,
        opts: pulumi.ResourceOptions | None = None,
        *,
        gateway_api: bool = False,
    ) -> None:
        super().__init__("llmd:cloud:GkeGpuCapacity", name, None, opts)
        self.config = config
        # GKE's Gateway controller (llmd:gateway.provider gke) serves only clusters with the Gateway
        # API enabled ("Enable Gateway API in your cluster", llm-d docs/infrastructure/gateway/gke.md).
        self.gateway_api = gateway_api
        gcp_provider = gcp.Provider(
            f"{name}-gcp",
            project=config.project,
            region=config.region,
            zone=config.zone,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=gcp_provider)

        self.networks = GkeNetworks(f"{name}-net", config, opts=child) if config.rdma.enabled else None
        cluster_name, endpoint, ca_data, cluster_ready = self._cluster(name, child)
        self.cluster_name: pulumi.Output[str] = cluster_name
        self.node_pool = self._gpu_node_pool(name, cluster_name, cluster_ready, child)

        self.k8s_provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=gke_kubeconfig(cluster_name, endpoint, ca_data),
            opts=pulumi.ResourceOptions(parent=self),
        )
        in_cluster = pulumi.ResourceOptions(parent=self, provider=self.k8s_provider)
        self.rdma = (
            GkeRdmaNetworking(f"{name}-rdma", config, self.networks, opts=in_cluster)
            if self.networks
            else None
        )
        self.pod_networking = gke_pod_networking(config)
        self.register_outputs(
            {
                "clusterName": cluster_name,
                "nodePool": self.node_pool.name,
                "acceleratorType": config.node_pool.machine.accelerator_type,
            }
        )

    @property
    def ready(self) -> list[pulumi.Resource]:
        """What in-cluster workloads must wait for: GPU nodes and the networks their pods attach to."""
        resources: list[pulumi.Resource] = [self.node_pool]
        if self.rdma is not None:
            resources += [*self.rdma.networks, self.rdma.installer]
        return resources

    def _cluster(
        self, name: str, opts: pulumi.ResourceOptions
    ) -> tuple[pulumi.Output[str], pulumi.Output[str], pulumi.Output[str], list[pulumi.Resource]]:
        config = self.config
        if not config.cluster.create:
            return self._adopted_cluster(opts)

        spec = config.cluster
        cluster = gcp.container.Cluster(
            f"{name}-cluster",
            name=spec.name,
            project=config.project,
            location=config.cluster_location,
            network=spec.network,
            subnetwork=spec.subnetwork,
            networking_mode="VPC_NATIVE",
            # Multi-networking (the RDMA Network objects) requires Dataplane V2.
            datapath_provider="ADVANCED_DATAPATH",
            enable_multi_networking=True,
            ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(
                cluster_secondary_range_name=spec.cluster_secondary_range_name,
                services_secondary_range_name=spec.services_secondary_range_name,
            ),
            release_channel=gcp.container.ClusterReleaseChannelArgs(channel=spec.release_channel),
            min_master_version=spec.min_master_version,
            workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(
                workload_pool=f"{config.project}.svc.id.goog"
            ),
            # Node pools are separate resources so the GPU pool can change without touching the cluster.
            remove_default_node_pool=True,
            initial_node_count=1,
            deletion_protection=spec.deletion_protection,
            gateway_api_config=(
                gcp.container.ClusterGatewayApiConfigArgs(channel="CHANNEL_STANDARD")
                if self.gateway_api
                else None
            ),
            opts=opts,
        )
        ready: list[pulumi.Resource] = [cluster]
        if spec.system_pool.enabled:
            ready.append(
                gcp.container.NodePool(
                    f"{name}-system",
                    name="system",
                    project=config.project,
                    location=config.cluster_location,
                    cluster=cluster.name,
                    node_locations=[config.zone],
                    node_count=spec.system_pool.node_count,
                    node_config=gcp.container.NodePoolNodeConfigArgs(
                        machine_type=spec.system_pool.machine_type,
                        image_type="COS_CONTAINERD",
                        workload_metadata_config=gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgs(
                            mode="GKE_METADATA"
                        ),
                        oauth_scopes=["https://www.googleapis.com/auth/cloud-platform"],
                    ),
                    management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
                    opts=opts,
                )
            )
        ca_data = cluster.master_auth.apply(lambda auth: auth.cluster_ca_certificate or "")
        return cluster.name, cluster.endpoint, ca_data, ready

    def _adopted_cluster(
        self, opts: pulumi.ResourceOptions
    ) -> tuple[pulumi.Output[str], pulumi.Output[str], pulumi.Output[str], list[pulumi.Resource]]:
        config = self.config
        found = gcp.container.get_cluster_output(
            name=config.cluster.name,
            location=config.cluster_location,
            project=config.project,
            opts=pulumi.InvokeOutputOptions(parent=self, provider=opts.provider),
        )

        def checked(result: gcp.container.GetClusterResult) -> gcp.container.GetClusterResult:
            # An adopted cluster cannot be fixed from here (both settings are immutable on GKE), so
            # stop before creating node pools that could never attach their RDMA NICs.
            if config.rdma.enabled and not result.enable_multi_networking:
                raise ValueError(
                    f"gke.cluster '{config.cluster.name}' does not have multi-networking enabled, which RDMA "
                    "node pools need; recreate it with --enable-multi-networking "
                    "or set gke.rdma.enabled: false"
                )
            if config.rdma.enabled and result.datapath_provider != "ADVANCED_DATAPATH":
                raise ValueError(
                    f"gke.cluster '{config.cluster.name}' runs datapath '{result.datapath_provider}', but "
                    "multi-networking needs Dataplane V2 (ADVANCED_DATAPATH)"
                )
            return result

        cluster = found.apply(checked)
        ca_data = cluster.apply(lambda c: c.master_auths[0].cluster_ca_certificate if c.master_auths else "")
        return cluster.name, cluster.endpoint, ca_data, []

    def _gpu_node_pool(
        self,
        name: str,
        cluster_name: pulumi.Output[str],
        cluster_ready: list[pulumi.Resource],
        opts: pulumi.ResourceOptions,
    ) -> gcp.container.NodePool:
        """The GPU node pool, assembled from one function per concern (below)."""
        config = self.config
        pool = config.node_pool
        autoscaling = node_pool_autoscaling(pool)
        return gcp.container.NodePool(
            f"{name}-{pool.name}",
            name=pool.name,
            project=config.project,
            location=config.cluster_location,
            cluster=cluster_name,
            node_locations=config.node_locations,
            node_count=config.node_pool_size if autoscaling is None else None,
            autoscaling=autoscaling,
            management=gcp.container.NodePoolManagementArgs(
                auto_repair=pool.effective_auto_repair, auto_upgrade=True
            ),
            placement_policy=placement_policy(pool),
            queued_provisioning=queued_provisioning(pool),
            network_config=node_network_config(self.networks),
            node_config=gpu_node_config(pool),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=cluster_ready)),
        )


# --- the GPU node pool, one concern per function ------------------------------------------------------


def guest_accelerators(pool: GkeNodePoolConfig) -> list[gcp.container.NodePoolNodeConfigGuestAcceleratorArgs]:
    """Accelerators and driver: every GPU of the machine, with GKE installing the NVIDIA driver."""
    machine = pool.machine
    driver = gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
        gpu_driver_version=pool.gpu_driver_version
    )
    return [
        gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
            type=machine.accelerator_type,
            count=machine.accelerator_count,
            gpu_driver_installation_config=driver,
        )
    ]


def node_network_config(networks: GkeNetworks | None) -> gcp.container.NodePoolNetworkConfigArgs | None:
    """Networking: the extra host NICs (gVNIC, then one per RDMA NIC) when RDMA is on."""
    if networks is None:
        return None
    return gcp.container.NodePoolNetworkConfigArgs(
        additional_node_network_configs=networks.additional_node_network_configs()
    )


def node_pool_autoscaling(pool: GkeNodePoolConfig) -> gcp.container.NodePoolAutoscalingArgs | None:
    """Provisioning: cluster-autoscaler bounds, or None for a static pool."""
    if pool.autoscaling is None:
        return None
    return gcp.container.NodePoolAutoscalingArgs(
        min_node_count=pool.autoscaling.min_nodes,
        max_node_count=pool.autoscaling.max_nodes,
        # Flex-start takes capacity wherever it is obtainable within the pool's zones.
        location_policy="ANY" if pool.provisioning == "flex-start" else None,
    )


def reservation_affinity(
    pool: GkeNodePoolConfig,
) -> gcp.container.NodePoolNodeConfigReservationAffinityArgs | None:
    """Reservation: a specific reservation (or block), none for spot/flex-start, GKE's default otherwise."""
    if pool.reservation is not None:
        return gcp.container.NodePoolNodeConfigReservationAffinityArgs(
            consume_reservation_type="SPECIFIC_RESERVATION",
            key="compute.googleapis.com/reservation-name",
            values=[pool.reservation.affinity_value],
        )
    if pool.provisioning != "standard":
        # Spot and flex-start VMs must not be matched against reservations.
        return gcp.container.NodePoolNodeConfigReservationAffinityArgs(
            consume_reservation_type="NO_RESERVATION"
        )
    return None


def placement_policy(pool: GkeNodePoolConfig) -> gcp.container.NodePoolPlacementPolicyArgs | None:
    """Placement: COMPACT keeps the nodes (and their RDMA fabric hops) close, optionally in a named
    resource policy."""
    if pool.placement != "compact":
        return None
    return gcp.container.NodePoolPlacementPolicyArgs(type="COMPACT", policy_name=pool.placement_policy_name)


def queued_provisioning(pool: GkeNodePoolConfig) -> gcp.container.NodePoolQueuedProvisioningArgs | None:
    """Provisioning: DWS queued provisioning (flex-start with ProvisioningRequests)."""
    return gcp.container.NodePoolQueuedProvisioningArgs(enabled=True) if pool.queued_provisioning else None


def gpu_node_config(pool: GkeNodePoolConfig) -> gcp.container.NodePoolNodeConfigArgs:
    """Node config: machine, disks, accelerators, gVNIC, capacity type, scheduling labels and taints,
    and Workload Identity."""
    machine = pool.machine
    local_ssd = (
        gcp.container.NodePoolNodeConfigEphemeralStorageLocalSsdConfigArgs(
            local_ssd_count=machine.local_ssd_count
        )
        if pool.local_ssd_ephemeral_storage
        else None
    )
    return gcp.container.NodePoolNodeConfigArgs(
        machine_type=machine.name,
        image_type="COS_CONTAINERD",
        disk_size_gb=pool.disk_size_gb,
        disk_type=pool.effective_disk_type,
        guest_accelerators=guest_accelerators(pool),
        gvnic=gcp.container.NodePoolNodeConfigGvnicArgs(enabled=True),
        ephemeral_storage_local_ssd_config=local_ssd,
        reservation_affinity=reservation_affinity(pool),
        spot=True if pool.provisioning == "spot" else None,
        flex_start=True if pool.provisioning == "flex-start" else None,
        labels=dict(pool.labels),
        taints=[
            gcp.container.NodePoolNodeConfigTaintArgs(key=t.key, value=t.value, effect=t.cloud_effect)
            for t in pool.taints
        ],
        workload_metadata_config=gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgs(
            mode="GKE_METADATA"
        ),
        service_account=pool.service_account,
        oauth_scopes=["https://www.googleapis.com/auth/cloud-platform"],
    )


def gke_pod_networking(config: GkeConfig) -> PodNetworking:
    """What a model-server pod on the GPU pool needs: node selection always, the RDMA NICs when on.

    Pools whose replicas fit one node (tensor parallel over NVLink) run NCCL without network
    plugins; only pools spanning nodes get gIB's NCCL plugin, its settings and the host paths it is
    installed to, mounted read-only. So the host's directories reach a container only where NCCL
    crosses nodes, and that container cannot write to them."""
    pool = config.node_pool
    scheduling: dict[str, Any] = {
        "node_selector": dict(pool.labels),
        "tolerations": pool_tolerations(pool.taints),
        "single_node_env": dict(GKE_SINGLE_NODE_NCCL_ENV),
    }
    if not config.rdma.enabled:
        return PodNetworking(**scheduling)

    # eth1 is the node's gVNIC NIC; pods get eth0 plus one interface per RDMA NIC, numbered from eth2,
    # as in Google's gpudirect-rdma/nccl-test.yaml. One pod takes every RDMA NIC of its node.
    interfaces = [{"interfaceName": "eth0", "network": "default"}]
    interfaces += [
        {"interfaceName": f"eth{index + 2}", "network": rdma_network_name(index)}
        for index in range(pool.machine.rdma_nics)
    ]
    return PodNetworking(
        annotations={
            "networking.gke.io/default-interface": "eth0",
            "networking.gke.io/interfaces": json.dumps(interfaces, separators=(",", ":")),
        },
        env={
            # GKE's device plugin mounts the driver's libraries at /usr/local/nvidia in every GPU
            # container; vLLM images need it on the library path ("Failed to infer device type").
            "LD_LIBRARY_PATH": f"{NVIDIA_MOUNT_PATH}/lib64",
            # NIXL/UCX over RoCE: reach peers on any RDMA subnet (llm-d GKE P/D guide).
            "UCX_IB_ROCE_REACHABILITY_MODE": "all",
        },
        multi_node=MultiNodeNetworking(
            # The gIB installer copies its NCCL net plugin into the host's NVIDIA library directory.
            env=dict(GIB_NCCL_ENV),
            volumes=[
                {"name": "gib", "hostPath": {"path": GIB_HOST_PATH, "type": "Directory"}},
                {"name": "nvidia-install-dir", "hostPath": {"path": NVIDIA_HOST_PATH, "type": "Directory"}},
            ],
            volume_mounts=[
                {"name": "gib", "mountPath": GIB_MOUNT_PATH, "readOnly": True},
                {"name": "nvidia-install-dir", "mountPath": NVIDIA_MOUNT_PATH, "readOnly": True},
            ],
        ),
        # RDMA memory registration pins pages.
        capabilities=["IPC_LOCK"],
        **scheduling,
    )


def provision(config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> Platform:
    """Entry point for `llmd:platform: gke` (called by the spine's provision_platform)."""
    if config.gke is None:
        raise ValueError("llmd:gke is required when llmd:platform is 'gke'")
    machine = config.gke.node_pool.machine
    check_gpus_per_pod(
        config,
        machine.name,
        machine.accelerator_count,
        whole_node=config.gke.rdma.enabled,
        reason="GKE gives a node's RDMA NICs to a single pod; set gke.rdma.enabled: false to share nodes",
    )
    capacity = GkeGpuCapacity(
        "gke", config.gke, opts=opts, gateway_api=config.gateway.provider is GatewayProvider.GKE
    )
    return Platform(
        k8s_provider=capacity.k8s_provider,
        pod_networking=capacity.pod_networking,
        depends_on=capacity.ready,
    )
