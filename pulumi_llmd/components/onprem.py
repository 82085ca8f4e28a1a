"""On-prem GPU/RDMA: NVIDIA operators, Multus networks, and how model-server pods attach to them."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from pulumi_llmd.components import naming
from pulumi_llmd.components.inputs import OnPremAcceleratorsArgs, RdmaNetworksArgs
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.platform import NetworkAttachment, PodNetworking
from pulumi_llmd.config.models import OnPremConfig, OperatorChartConfig, RdmaNetworkConfig

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


SHARED_RDMA_PREFIX = "rdma/"


def network_operator_values(onprem: OnPremConfig) -> dict[str, Any]:
    """Values that make the chart create its NicClusterPolicy (``deployCR``) with what the pods use:
    Multus, the CNI plugins and whereabouts IPAM for the RDMA networks, and the RDMA shared device
    plugin advertising ``rdmaResource`` on those networks' host interfaces."""
    ours: dict[str, Any] = {"nfd": {"enabled": True}}
    if onprem.rdma_networks:
        ours["deployCR"] = True
        ours["secondaryNetwork"] = {
            "deploy": True,
            "multus": {"deploy": True},
            "cniPlugins": {"deploy": True},
            "ipamPlugin": {"deploy": True},
            "ipoib": {"deploy": any(n.cni == "ipoib" for n in onprem.rdma_networks)},
        }
        interfaces = sorted({n.master for n in onprem.rdma_networks if n.master})
        resource = onprem.rdma_resource
        if resource and resource.startswith(SHARED_RDMA_PREFIX) and interfaces:
            ours["rdmaSharedDevicePlugin"] = {
                "deploy": True,
                "resources": [
                    {
                        "name": resource.removeprefix(SHARED_RDMA_PREFIX),
                        "ifNames": interfaces,
                        # How many pods may share one RDMA device (the plugin's usual value).
                        "rdmaHcaMax": 63,
                    }
                ],
            }
    return deep_merge(ours, onprem.network_operator.values)


def cni_config(network: RdmaNetworkConfig) -> str:
    """The CNI JSON a NetworkAttachmentDefinition carries (IP addresses from whereabouts)."""
    plugin: dict[str, Any] = {"cniVersion": "0.3.1", "name": network.name, "type": network.cni}
    if network.cni in ("macvlan", "ipoib") and network.master:
        plugin["master"] = network.master
    if network.cni == "macvlan":
        plugin["mode"] = "bridge"
    if network.cni == "host-device" and network.master:
        plugin["device"] = network.master
    plugin["ipam"] = {"type": "whereabouts", "range": network.ipam_range}
    return json.dumps(plugin, sort_keys=True)


def network_attachment(network: RdmaNetworkConfig) -> NetworkAttachment:
    return NetworkAttachment(
        name=network.name, config=cni_config(network), resource_name=network.resource_name
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


def onprem_pod_networking(onprem: OnPremConfig) -> PodNetworking:
    annotations: dict[str, str] = {}
    if onprem.rdma_networks:
        attachments = [f"{n.name}@{n.interface}" if n.interface else n.name for n in onprem.rdma_networks]
        annotations[MULTUS_NETWORKS_ANNOTATION] = ",".join(attachments)
    resources: dict[str, str] = {}
    if onprem.rdma_resource:
        resources[onprem.rdma_resource] = str(onprem.rdma_resource_count)
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
        capabilities=["IPC_LOCK"] if (onprem.rdma_resource or onprem.rdma_networks) else [],
        node_selector=dict(onprem.node_selector),
        tolerations=tolerations,
        network_attachments=[network_attachment(n) for n in onprem.rdma_networks],
    )


class OnPremAccelerators(pulumi.ComponentResource):
    """Cluster-wide GPU Operator and Network Operator, and the pod networking they make possible.

    Args (:class:`~pulumi_llmd.components.inputs.OnPremAcceleratorsArgs`, Python only): the stack's
    ``instance`` (for labels) and the ``onprem`` section. The Kubernetes provider comes through
    ``opts``. The namespaced Multus networks are part of :attr:`pod_networking`; the stack creates
    them in its own namespace (:class:`RdmaNetworks`), after these operators.
    """

    def __init__(
        self, name: str, args: OnPremAcceleratorsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("llmd:index:OnPremAccelerators", name, None, opts)
        onprem = args.onprem
        self.operators: list[pulumi.Resource] = []
        charts = (
            ("gpu-operator", onprem.gpu_operator, gpu_operator_values(onprem)),
            ("network-operator", onprem.network_operator, network_operator_values(onprem)),
        )
        for chart_name, chart, values in charts:
            if chart.install:
                self.operators.append(self._operator(chart_name, chart, values, args.instance, opts))
        self.pod_networking = onprem_pod_networking(onprem)
        self.register_outputs({"operators": [c[0] for c in charts if c[1].install]})

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
    ``namespace`` and the ``attachments``. ``depends_on`` in ``opts``: the namespace, and the operators
    that install Multus (and with it the NetworkAttachmentDefinition CRD).
    """

    def __init__(self, name: str, args: RdmaNetworksArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llmd:index:RdmaNetworks", name, None, opts)
        child = child_options(self, opts)
        self.attachments = [register(network_attachment_manifest(args, a), child) for a in args.attachments]
        self.register_outputs({"networks": [a.name for a in args.attachments]})
