"""Every rendered object validates: core kinds with kubernetes-validate (strict) for the configured
Kubernetes version, custom resources against their CRD's openAPIV3Schema from ../shared/crds."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from render.engine import STACKS_DIR, RenderResult, load_stack_file
from tests.support.stacks import (
    CRD_FILES,
    CRDS,
    EXAMPLE_STACKS,
    OWN_SCHEMAS,
    api_group,
    is_core,
    validate_core,
    validate_custom,
)

needs_crds = pytest.mark.skipif(
    not CRDS.is_dir(), reason=f"CRD files not found at {CRDS} (CI clones shared/ beside the repository)"
)


def objects(renders: dict[str, RenderResult], core: bool) -> list[tuple[str, str, dict]]:
    return [
        (stack, f"{stack}/{o.file}", o.document)
        for stack in EXAMPLE_STACKS
        for o in renders[stack].of_source("k8s")
        if is_core(o.document) == core
    ]


def test_core_objects_validate_strictly(renders: dict[str, RenderResult]) -> None:
    checked = 0
    for stack, _file, manifest in objects(renders, core=True):
        values, _ = load_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")
        validate_core(manifest, values["llmd:kubernetesVersion"])
        checked += 1
    assert checked == 41  # 19 for kind, 22 for onprem (3 dashboard ConfigMaps each)


def test_strict_core_validation_catches_a_typo(renders: dict[str, RenderResult]) -> None:
    deployment = copy.deepcopy(renders["kind"].get("Deployment", "sim-decode").document)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(deployment, "1.33")


@needs_crds
def test_custom_resources_validate_against_their_crds(renders: dict[str, RenderResult]) -> None:
    kinds = set()
    for _stack, file, manifest in objects(renders, core=False):
        key = (api_group(manifest), manifest["kind"])
        assert key in CRD_FILES or key in OWN_SCHEMAS, f"{file}: no CRD known for this kind"
        validate_custom(manifest)
        kinds.add(manifest["kind"])
    assert kinds == {
        "Gateway",
        "HTTPRoute",
        "InferencePool",
        "NetworkAttachmentDefinition",
        "PodMonitor",
        "PrometheusRule",
        "NicClusterPolicy",
        "IPPool",
    }


@needs_crds
def test_crd_validation_catches_a_wrong_field(renders: dict[str, RenderResult]) -> None:
    pool = copy.deepcopy(renders["kind"].get("InferencePool", "sim").document)
    pool["spec"]["targetPort"] = 8000  # the pre-v1 spelling
    with pytest.raises(jsonschema.ValidationError, match="targetPort"):
        validate_custom(pool)
    pool = copy.deepcopy(renders["kind"].get("InferencePool", "sim").document)
    pool["spec"]["endpointPickerRef"]["failureMode"] = "Open"
    with pytest.raises(jsonschema.ValidationError, match="Open"):
        validate_custom(pool)
