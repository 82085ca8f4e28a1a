"""On-prem RDMA that comes up (issue 11.1): the stack creates the NicClusterPolicy the Network
Operator chart stopped creating in v24.10, nv-ipam pools for the networks, and orders them before the
NetworkAttachmentDefinitions and the model servers."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from pulumi_llmd.config import ConfigError, parse_stack_config
from render.engine import RenderResult
from tests.support.stacks import CRDS, render_config, validate_custom

needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"CRD files not found at {CRDS}")

NETWORK_OPERATOR_TAG = "network-operator-v26.4.1"


def onprem(**section: Any) -> dict[str, Any]:
    return {
        "platform": "onprem",
        "name": "r",
        "model": {"name": "org/m", "uri": "pvc://models/org/m"},
        "onprem": {
            "gpuOperator": {"install": False, "version": "v26.7.0", "namespace": "gpu-operator"},
            **section,
        },
    }


ROCE = {"name": "roce-0", "master": "ens1f0np0", "ipamRange": "192.168.100.0/24"}


def policy_of(result: RenderResult) -> dict[str, Any]:
    return result.get("NicClusterPolicy", "nic-cluster-policy").document


@needs_crds
def test_the_example_creates_a_nic_cluster_policy_that_fits_the_v26_4_1_crd(
    renders: dict[str, RenderResult],
) -> None:
    policy = policy_of(renders["onprem"])
    validate_custom(policy)
    assert "namespace" not in policy["metadata"]  # cluster-scoped, the one name the operator reconciles
    spec = policy["spec"]
    component = {"repository": "nvcr.io/nvidia/mellanox", "version": NETWORK_OPERATOR_TAG}
    assert spec["secondaryNetwork"] == {
        "cniPlugins": {"image": "plugins", **component},
        "multus": {"image": "multus-cni", **component},
    }
    assert spec["nvIpam"] == {"image": "nvidia-k8s-ipam", **component, "enableWebhook": False}
    plugin = spec["rdmaSharedDevicePlugin"]
    assert {k: v for k, v in plugin.items() if k != "config"} == {
        "image": "k8s-rdma-shared-dev-plugin",
        **component,
    }
    assert json.loads(plugin["config"]) == {
        "configList": [
            {
                "resourceName": "rdma_shared_device_a",
                "rdmaHcaMax": 63,
                "selectors": {"ifNames": ["ens1f0np0", "ens1f1np1"]},
            }
        ]
    }


@needs_crds
def test_the_crd_refuses_the_whereabouts_shape_the_chart_values_used_to_have(
    renders: dict[str, RenderResult],
) -> None:
    policy = copy.deepcopy(policy_of(renders["onprem"]))
    policy["spec"]["secondaryNetwork"]["ipamPlugin"] = {"image": "whereabouts"}
    with pytest.raises(jsonschema.ValidationError, match="ipamPlugin"):
        validate_custom(policy)


def test_pulumi_waits_for_the_policy_and_everything_rdma_waits_for_it(
    renders: dict[str, RenderResult],
) -> None:
    result = renders["onprem"]
    policy = result.get("NicClusterPolicy", "nic-cluster-policy")
    assert policy.document["metadata"]["annotations"] == {
        "pulumi.com/waitFor": "jsonpath={.status.state}=ready"
    }
    assert policy.registration.custom_timeouts == {"create": "20m", "update": "20m"}
    chart = next(
        r for r in result.registrations if r.name == "network-operator" and r.pulumi_type.endswith("Chart")
    )
    # The chart carries the NicClusterPolicy CRD.
    assert chart.urn in policy.registration.dependencies
    pools = [result.get("IPPool", f"llama-8b-roce-{i}").registration for i in (0, 1)]
    assert all(policy.registration.urn in pool.dependencies for pool in pools)  # nv-ipam brings the CRD
    for dependant in (
        result.get("NetworkAttachmentDefinition", "roce-0").registration,
        result.get("Deployment", "llama-8b-decode").registration,
        result.get("Deployment", "llama-8b-prefill").registration,
    ):
        assert {policy.registration.urn, *(p.urn for p in pools)} <= set(dependant.dependencies)


def test_chart_values_are_only_ones_the_v26_4_chart_has(renders: dict[str, RenderResult]) -> None:
    values = renders["onprem"].get("Chart", "network-operator").document["values"]
    assert not {"deployCR", "secondaryNetwork", "rdmaSharedDevicePlugin", "ofedDriver"} & set(values)


def test_networks_take_addresses_from_their_nv_ipam_pool(renders: dict[str, RenderResult]) -> None:
    result = renders["onprem"]
    for index, network in enumerate(("roce-0", "roce-1")):
        pool = result.get("IPPool", f"llama-8b-{network}").document
        validate_custom(pool)
        # nv-ipam reads pools from the operator's namespace only.
        assert pool["metadata"]["namespace"] == "nvidia-network-operator"
        assert pool["spec"] == {"subnet": f"192.168.{100 + index}.0/24", "perNodeBlockSize": 16}
        cni = json.loads(result.get("NetworkAttachmentDefinition", network).document["spec"]["config"])
        assert cni["ipam"] == {"type": "nv-ipam", "poolName": pool["metadata"]["name"]}


def test_ipoib_networks_add_the_ipoib_cni_and_a_user_managed_policy_is_left_alone() -> None:
    ipoib = {"name": "ib-0", "cni": "ipoib", "master": "ibs1", "ipamRange": "10.10.0.0/16", "ipsPerNode": 64}
    result = render_config(onprem(rdmaNetworks=[ROCE, ipoib]))
    secondary = policy_of(result)["spec"]["secondaryNetwork"]
    assert secondary["ipoib"] == {
        "image": "ipoib-cni",
        "repository": "nvcr.io/nvidia/mellanox",
        "version": NETWORK_OPERATOR_TAG,
    }
    assert result.get("IPPool", "r-ib-0").document["spec"]["perNodeBlockSize"] == 64

    own = render_config(onprem(rdmaNetworks=[ROCE], nicClusterPolicy=False))
    assert not own.manifests("NicClusterPolicy")
    chart = next(
        r for r in own.registrations if r.name == "network-operator" and r.pulumi_type.endswith("Chart")
    )
    assert chart.urn in own.get("IPPool", "r-roce-0").registration.dependencies


def test_no_networks_requests_no_rdma_resource_and_no_policy() -> None:
    result = render_config(onprem())
    assert not result.manifests("NicClusterPolicy") and not result.manifests("IPPool")
    engine = result.get("Deployment", "r-decode").document["spec"]["template"]["spec"]["containers"][0]
    assert set(engine["resources"]["limits"]) == {"memory", "nvidia.com/gpu"}
    assert "capabilities" not in engine["securityContext"]


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=False)
    return [str(p) for p in caught.value.problems]


def test_a_shared_rdma_resource_nothing_advertises_is_refused() -> None:
    (problem,) = problems(onprem(rdmaResource="rdma/rdma_shared_device_a"))
    assert problem.startswith(
        "llmd:onprem.rdmaResource 'rdma/rdma_shared_device_a' would be advertised by nothing"
    )
    # Opting out, or running the plugin yourself, is fine.
    parse_stack_config(
        onprem(rdmaResource="rdma/rdma_shared_device_a", nicClusterPolicy=False), has_hf_token=False
    )
    parse_stack_config(onprem(rdmaResourceCount=0), has_hf_token=False)


def test_a_per_node_block_larger_than_the_range_is_refused() -> None:
    (problem,) = problems(onprem(rdmaNetworks=[{**ROCE, "ipamRange": "192.168.1.0/28", "ipsPerNode": 16}]))
    assert problem.startswith(
        "llmd:onprem.rdmaNetworks[0].ipsPerNode 16 must be less than the 14 usable addresses of ipamRange "
        "192.168.1.0/28"
    )


GPU_OPERATOR = {"install": True, "version": "v26.7.0", "namespace": "gpu-operator"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            onprem(gpuOperator={**GPU_OPERATOR, "namespace": "llm-d"}),
            "llmd:onprem.gpuOperator.namespace is 'llm-d', the namespace of the stack (llmd:namespace) too",
        ),
        (
            {**onprem(gpuOperator=GPU_OPERATOR), "namespace": "gpu-operator"},
            "llmd:onprem.gpuOperator.namespace is 'gpu-operator', the namespace of the stack "
            "(llmd:namespace) too",
        ),
        (
            onprem(gpuOperator={**GPU_OPERATOR, "namespace": "agentgateway-system"}),
            "llmd:onprem.gpuOperator.namespace is 'agentgateway-system', the namespace of the agentgateway "
            "control plane (gateway.namespace) too",
        ),
    ],
)
def test_an_operator_namespace_owned_by_another_component_is_refused(
    raw: dict[str, Any], expected: str
) -> None:
    """Each installed operator chart creates (and owns) its namespace, as the stack and the gateway
    control plane do theirs: a shared one would be two Pulumi resources for one Namespace."""
    (problem,) = problems(raw)
    assert problem.startswith(expected)
    # Not installing the chart leaves the namespace to whoever owns it.
    uninstalled = copy.deepcopy(raw)
    uninstalled["onprem"]["gpuOperator"]["install"] = False
    parse_stack_config(uninstalled, has_hf_token=False)
