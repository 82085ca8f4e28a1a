"""Every in-cluster object of the GKE/EKS stacks validates, as the spine validates its own stacks:
core kinds with kubernetes-validate (strict), custom resources against their published CRDs, and
GKE's unpublished networking kinds against the documented schema in gke_networking_schema."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from render.engine import STACKS_DIR, RenderResult, load_stack_file
from tests.support.cloud import CLOUD_STACKS, CRDS
from tests.support.gke_networking_schema import SCHEMAS
from tests.support.stacks import CRD_FILES, api_group, is_core, validate_core, validate_custom

GKE_NETWORKING = "networking.gke.io"


def validate_gke_networking(manifest: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMAS[manifest["kind"]]).validate(manifest)


def manifests(result: RenderResult) -> list[dict[str, Any]]:
    return [o.document for o in result.of_source("k8s")]


@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_core_objects_validate_strictly(stack: str, cloud_renders: dict[str, RenderResult]) -> None:
    values, _ = load_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")
    core = [m for m in manifests(cloud_renders[stack]) if is_core(m)]
    for manifest in core:
        validate_core(manifest, values["llmd:kubernetesVersion"])
    assert {"Deployment", "Service", "NetworkPolicy", "Namespace"} <= {m["kind"] for m in core}


@pytest.mark.skipif(
    not CRDS.is_dir(), reason=f"CRD files not found at {CRDS} (CI clones shared/ beside the repo)"
)
@pytest.mark.parametrize("stack", CLOUD_STACKS)
def test_custom_resources_validate_against_crds_or_the_gke_schema(
    stack: str, cloud_renders: dict[str, RenderResult]
) -> None:
    kinds = set()
    for manifest in manifests(cloud_renders[stack]):
        if is_core(manifest):
            continue
        if api_group(manifest) == GKE_NETWORKING:
            validate_gke_networking(manifest)
        else:
            assert (api_group(manifest), manifest["kind"]) in CRD_FILES, f"no schema for {manifest['kind']}"
            validate_custom(manifest)
        kinds.add(manifest["kind"])
    expected = {"Gateway", "HTTPRoute", "InferencePool"}  # monitoring off: new clusters have no operator
    assert kinds == (expected | {"Network", "GKENetworkParamSet"} if stack == "gke" else expected)


def test_gke_schema_catches_wrong_device_mode_missing_subnet_and_dangling_device_network(
    cloud_renders: dict[str, RenderResult],
) -> None:
    gke = cloud_renders["gke"]
    params = copy.deepcopy(gke.get("GKENetworkParamSet", "rdma-0").document)
    params["spec"]["deviceMode"] = "Rdma"
    with pytest.raises(jsonschema.ValidationError, match="Rdma"):
        validate_gke_networking(params)
    del params["spec"]["vpcSubnet"]
    params["spec"]["deviceMode"] = "RDMA"
    with pytest.raises(jsonschema.ValidationError, match="vpcSubnet"):
        validate_gke_networking(params)
    network = copy.deepcopy(gke.get("Network", "rdma-0").document)
    del network["spec"]["parametersRef"]
    with pytest.raises(jsonschema.ValidationError, match="parametersRef"):
        validate_gke_networking(network)
    network = copy.deepcopy(gke.get("Network", "rdma-0").document)
    network["metadata"]["namespace"] = "default"
    with pytest.raises(jsonschema.ValidationError):
        validate_gke_networking(network)


def test_strict_core_validation_catches_a_bad_volume(cloud_renders: dict[str, RenderResult]) -> None:
    import kubernetes_validate

    deployment = copy.deepcopy(cloud_renders["gke"].get("Deployment", "llama-70b-decode").document)
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "shm")["emptyDir"]["medum"] = "Memory"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(deployment, "1.35")
