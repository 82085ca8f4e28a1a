"""On-prem GPU/RDMA: NVIDIA operators, the NicClusterPolicy, nv-ipam pools, Multus networks, and how
model-server pods attach to them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.inputs import OnPremAcceleratorsArgs, RdmaNetworksArgs
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.platform import NetworkAttachment, PodNetworking
from pulumi_llmd.config.inputs import model_args
from pulumi_llmd.config.models import (
    SHARED_RDMA_PREFIX,
    OnPremConfig,
    OperatorChartConfig,
    RdmaNetworkConfig,
)

NVIDIA_HELM_REPO = "https://helm.ngc.nvidia.com/nvidia"
MULTUS_NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NAD_RESOURCE_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def gpu_operator_values(onprem: OnPremConfig) -> dict[str, Any]:
    ours: dict[str, Any] = {}
    if onprem.network_operator.install:
        # Both operators ship Node Feature Discovery; two NFD deployments fight over node labels.
        ours["nfd"] = {"enabled": False}
    return deep_merge(ours, onprem.gpu_operator.values)


def network_operator_values(onprem: OnPremConfig) -> dict[str, Any]:
    """The chart installs the operator, its CRDs and Node Feature Discovery (which labels the nodes
    with Mellanox NICs the operator's daemonsets select). Since v24.10 it no longer creates a
    NicClusterPolicy (Mellanox/network-operator commit 8fc96f20, "Remove Helm deployment of
    NICClusterPolicy"): `deployCR`, `secondaryNetwork` and `rdmaSharedDevicePlugin` are not values of
    the v26.4 chart, so :func:`nic_cluster_policy_manifest` creates the policy instead."""
    return deep_merge({"nfd": {"enabled": True}}, onprem.network_operator.values)


# The operator reconciles only the policy with this name (Mellanox/network-operator
# controllers/nicclusterpolicy_controller.go, consts.NicClusterPolicyResourceName).
NIC_CLUSTER_POLICY_NAME = "nic-cluster-policy"
# Where each component's image lives, and the tag it carries for a given operator release
# (Mellanox/network-operator hack/release.yaml at v26.4.1: repository nvcr.io/nvidia/mellanox,
# version network-operator-v26.4.1, for multus-cni, plugins, ipoib-cni, nvidia-k8s-ipam and
# k8s-rdma-shared-dev-plugin).
NETWORK_OPERATOR_REPOSITORY = "nvcr.io/nvidia/mellanox"
# The policy is ready once every component's daemonset runs on the matching nodes (status.state,
# enum ignore/notReady/ready/error in the v26.4.1 CRD); the image pulls on every node take a while.
NIC_CLUSTER_POLICY_WAIT = "jsonpath={.status.state}=ready"
NIC_CLUSTER_POLICY_TIMEOUT = pulumi.CustomTimeouts(create="20m", update="20m")
NV_IPAM_API = "nv-ipam.nvidia.com/v1alpha1"


def _component(onprem: OnPremConfig, image: str) -> dict[str, str]:
    return {
        "image": image,
        "repository": NETWORK_OPERATOR_REPOSITORY,
        "version": f"network-operator-{onprem.network_operator.version}",
    }


def rdma_shared_device_plugin_config(onprem: OnPremConfig) -> str | None:
    """The shared device plugin's JSON (Mellanox/k8s-rdma-shared-dev-plugin): ``rdmaResource``'s name
    on the networks' host interfaces, shareable by up to 63 pods per device (the examples' value)."""
    resource = onprem.effective_rdma_resource
    if resource is None or not resource.startswith(SHARED_RDMA_PREFIX) or not onprem.rdma_interfaces:
        return None
    entry = {
        "resourceName": resource.removeprefix(SHARED_RDMA_PREFIX),
        "rdmaHcaMax": 63,
        "selectors": {"ifNames": onprem.rdma_interfaces},
    }
    return json.dumps({"configList": [entry]}, sort_keys=True)


def nic_cluster_policy_manifest(onprem: OnPremConfig, instance: str) -> dict[str, Any] | None:
    """The cluster's NicClusterPolicy: what the RDMA networks and model-server pods need and nothing
    else. Multus (the NetworkAttachmentDefinitions), the CNI plugins (macvlan, host-device ...),
    IPoIB when a network uses it, nv-ipam (the IPAM of our networks; the operator dropped whereabouts
    in v25.10, commit 6eb650b4) and the RDMA shared device plugin advertising ``rdmaResource``."""
    if not onprem.rdma_networks or not onprem.nic_cluster_policy:
        return None
    secondary: dict[str, Any] = {
        "cniPlugins": _component(onprem, "plugins"),
        "multus": _component(onprem, "multus-cni"),
    }
    if any(n.cni == "ipoib" for n in onprem.rdma_networks):
        secondary["ipoib"] = _component(onprem, "ipoib-cni")
    spec: dict[str, Any] = {
        "secondaryNetwork": secondary,
        # The webhook needs cert-manager; pools are validated by the controller as well.
        "nvIpam": {**_component(onprem, "nvidia-k8s-ipam"), "enableWebhook": False},
    }
    if (config := rdma_shared_device_plugin_config(onprem)) is not None:
        spec["rdmaSharedDevicePlugin"] = {
            **_component(onprem, "k8s-rdma-shared-dev-plugin"),
            "config": config,
        }
    return {
        "apiVersion": "mellanox.com/v1alpha1",
        "kind": "NicClusterPolicy",
        "metadata": {
            "name": NIC_CLUSTER_POLICY_NAME,
            "labels": naming.common_labels(instance, "network-operator"),
            # Pulumi waits for no custom resource unless told (pulumi-kubernetes
            # provider/pkg/metadata/overrides.go, ReadyCondition): the networks and the model servers
            # must not start before Multus and the device plugin run.
            "annotations": {"pulumi.com/waitFor": NIC_CLUSTER_POLICY_WAIT},
        },
        "spec": spec,
    }


def ip_pool_name(instance: str, network: RdmaNetworkConfig) -> str:
    return f"{instance}-{network.name}"


def ip_pool_manifest(onprem: OnPremConfig, instance: str, network: RdmaNetworkConfig) -> dict[str, Any]:
    """nv-ipam's IPPool for one network, in the operator's namespace: the nv-ipam controller reads
    pools from its own namespace (`--ippools-namespace=$(POD_NAMESPACE)`, network-operator
    manifests/state-nv-ipam-cni/040-nv-ipam-controller.yaml) and hands each node a block of
    ``ipsPerNode`` addresses."""
    return {
        "apiVersion": NV_IPAM_API,
        "kind": "IPPool",
        "metadata": {
            "name": ip_pool_name(instance, network),
            "namespace": onprem.network_operator.namespace,
            "labels": naming.common_labels(instance, "rdma-network"),
        },
        "spec": {"subnet": network.ipam_range, "perNodeBlockSize": network.ips_per_node},
    }


def cni_config(network: RdmaNetworkConfig, pool: str) -> str:
    """The CNI JSON a NetworkAttachmentDefinition carries (addresses from nv-ipam's pool ``pool``)."""
    plugin: dict[str, Any] = {"cniVersion": "0.3.1", "name": network.name, "type": network.cni}
    if network.cni in ("macvlan", "ipoib") and network.master:
        plugin["master"] = network.master
    if network.cni == "macvlan":
        plugin["mode"] = "bridge"
    if network.cni == "host-device" and network.master:
        plugin["device"] = network.master
    plugin["ipam"] = {"type": "nv-ipam", "poolName": pool}
    return json.dumps(plugin, sort_keys=True)


def network_attachment(network: RdmaNetworkConfig, instance: str) -> NetworkAttachment:
    return NetworkAttachment(
        name=network.name,
        config=cni_config(network, ip_pool_name(instance, network)),
        resource_name=network.resource_name,
    )


def network_attachment_manifest(networks: RdmaNetworksArgs, attachment: NetworkAttachment) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": attachment.name,
        "namespace": networks.namespace,
        "labels": naming.common_labels(networks.instance, "rdma-network"),
    }
    if attachment.resource_name:
        metadata["annotations"] = {NAD_RESOURCE_ANNOTATION: attachment.resource_name}
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": metadata,
        "spec": {"config": attachment.config},
    }


def onprem_pod_networking(onprem: OnPremConfig, instance: str) -> PodNetworking:
    annotations: dict[str, str] = {}
    if onprem.rdma_networks:
        attachments = [f"{n.name}@{n.interface}" if n.interface else n.name for n in onprem.rdma_networks]
        annotations[MULTUS_NETWORKS_ANNOTATION] = ",".join(attachments)
    resources: dict[str, str] = {}
    rdma_resource = onprem.effective_rdma_resource
    if rdma_resource:
        resources[rdma_resource] = str(onprem.rdma_resource_count)
    for network in onprem.rdma_networks:
        if network.resource_name:
            resources[network.resource_name] = resources.get(network.resource_name, "1")
    env: dict[str, str] = {}
    if onprem.ucx_net_devices:
        env["UCX_NET_DEVICES"] = onprem.ucx_net_devices
    if onprem.nccl_ib_hca:
        env["NCCL_IB_HCA"] = onprem.nccl_ib_hca
    tolerations = (
        [{"key": onprem.gpu_taint, "operator": "Exists", "effect": "NoSchedule"}] if onprem.gpu_taint else []
    )
    return PodNetworking(
        annotations=annotations,
        resources=resources,
        env=env,
        # RDMA memory registration pins pages: needs IPC_LOCK (memlock) in the container.
        capabilities=["IPC_LOCK"] if (rdma_resource or onprem.rdma_networks) else [],
        node_selector=dict(onprem.node_selector),
        tolerations=tolerations,
        network_attachments=[network_attachment(n, instance) for n in onprem.rdma_networks],
    )


class OnPremAccelerators(pulumi.ComponentResource):
    """Cluster-wide GPU Operator and Network Operator, the NicClusterPolicy and nv-ipam pools of the
    RDMA networks, and the pod networking they make possible.

    Args (:class:`~pulumi_llmd.components.inputs.OnPremAcceleratorsArgs`, Python only): the stack's
    ``instance`` (for labels) and the ``onprem`` section. The Kubernetes provider comes through
    ``opts``. Order: each operator chart (with its CRDs), then the NicClusterPolicy, awaited until
    ready, then the IPPools (their CRD comes with the policy's nv-ipam). The namespaced Multus
    networks are part of :attr:`pod_networking`; the stack creates them in its own namespace
    (:class:`RdmaNetworks`) after everything in :attr:`ready`.
    """

    def __init__(
        self,
        name: str,
        args: OnPremAcceleratorsArgs | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        args = model_args(OnPremAcceleratorsArgs, args, component="OnPremAccelerators")
        super().__init__("llmd:index:OnPremAccelerators", name, None, opts)
        onprem = args.onprem
        self.operators: list[pulumi.Resource] = []
        charts = (
            ("gpu-operator", onprem.gpu_operator, gpu_operator_values(onprem)),
            ("network-operator", onprem.network_operator, network_operator_values(onprem)),
        )
        network_operator: list[pulumi.Resource] = []
        for chart_name, chart, values in charts:
            if chart.install:
                installed = self._operator(chart_name, chart, values, args.instance, opts)
                self.operators.append(installed)
                if chart_name == "network-operator":
                    network_operator.append(installed)

        self.nic_cluster_policy: pulumi.Resource | None = None
        policy = nic_cluster_policy_manifest(onprem, args.instance)
        if policy is not None:
            self.nic_cluster_policy = register(
                policy,
                pulumi.ResourceOptions.merge(
                    child_options(self, opts, *network_operator),
                    pulumi.ResourceOptions(custom_timeouts=NIC_CLUSTER_POLICY_TIMEOUT),
                ),
            )
        after_policy = [self.nic_cluster_policy] if self.nic_cluster_policy is not None else network_operator
        self.ip_pools = [
            register(
                ip_pool_manifest(onprem, args.instance, network), child_options(self, opts, *after_policy)
            )
            for network in onprem.rdma_networks
        ]
        self.pod_networking = onprem_pod_networking(onprem, args.instance)
        self.register_outputs(
            {
                "operators": [c[0] for c in charts if c[1].install],
                "nicClusterPolicy": policy is not None,
                "ipPools": self._pool_names(onprem, args),
            }
        )

    @property
    def ready(self) -> list[pulumi.Resource]:
        """What model servers and their networks wait for: the operators, the policy, the pools."""
        policy = [self.nic_cluster_policy] if self.nic_cluster_policy is not None else []
        return [*self.operators, *policy, *self.ip_pools]

    @staticmethod
    def _pool_names(onprem: OnPremConfig, args: OnPremAcceleratorsArgs) -> list[str]:
        return [ip_pool_name(args.instance, network) for network in onprem.rdma_networks]

    def _operator(
        self,
        chart_name: str,
        chart: OperatorChartConfig,
        values: dict[str, Any],
        instance: str,
        opts: pulumi.ResourceOptions | None,
    ) -> pulumi.Resource:
        namespace = register(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": chart.namespace,
                    "labels": {
                        **naming.common_labels(instance, chart_name),
                        # Driver and device-plugin daemonsets need host access.
                        "pod-security.kubernetes.io/enforce": "privileged",
                    },
                },
            },
            child_options(self, opts),
        )
        return k8s.helm.v4.Chart(
            chart_name,
            chart=chart_name,
            version=chart.version,
            namespace=chart.namespace,
            repository_opts={"repo": NVIDIA_HELM_REPO},
            values=values,
            opts=child_options(self, opts, namespace),
        )


class RdmaNetworks(pulumi.ComponentResource):
    """One NetworkAttachmentDefinition per Multus network of the platform's pod networking, in the
    stack's namespace.

    Args (:class:`~pulumi_llmd.components.inputs.RdmaNetworksArgs`, Python only): ``instance``,
    ``namespace`` and the ``attachments``. ``depends_on`` in ``opts``: the namespace, the Network
    Operator chart (which carries the NetworkAttachmentDefinition CRD), the NicClusterPolicy that runs
    Multus, and the nv-ipam pools the networks' IPAM names.
    """

    def __init__(
        self,
        name: str,
        args: RdmaNetworksArgs | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        args = model_args(RdmaNetworksArgs, args, component="RdmaNetworks")
        super().__init__("llmd:index:RdmaNetworks", name, None, opts)
        child = child_options(self, opts)
        self.attachments = [register(network_attachment_manifest(args, a), child) for a in args.attachments]
        self.register_outputs({"networks": [a.name for a in args.attachments]})
