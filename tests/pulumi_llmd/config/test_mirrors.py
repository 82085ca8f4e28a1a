"""Private and air-gapped clusters (issue 11.5): one `llmd:mirrors` section, applied by one stack
transform to every image, pod spec, Helm chart and remote YAML URL the stack deploys."""

from __future__ import annotations

import copy
from typing import Any

import pulumi
import pytest

from pulumi_llmd.config import ConfigError, parse_stack_config
from pulumi_llmd.config.mirrors import MirrorsConfig
from pulumi_llmd.mirrors import mirror_props, mirror_transform, mirrored_image, rewrite_prefix
from render.engine import RenderResult
from tests.support.stacks import CRDS, is_core, kind_config, render_config, validate_core, validate_custom

MIRRORS: dict[str, Any] = {
    "images": {
        "docker.io": "registry.example.com/hub",
        "ghcr.io/pulumi-llmd": "registry.example.com/llmd",
        "nvcr.io": "registry.example.com/nvcr",
    },
    "charts": {
        "https://helm.ngc.nvidia.com/nvidia": "oci://registry.example.com/charts/nvidia",
        "oci://cr.kgateway.dev/kgateway-dev/charts": "https://charts.example.com/kgateway",
        "oci://cr.agentgateway.dev/charts": "https://charts.example.com/agentgateway",
    },
    "urls": {"https://github.com/": "https://artifacts.example.com/github/"},
    "imagePullSecrets": ["regcred"],
}
SETTINGS = MirrorsConfig.model_validate(MIRRORS)


# --- the rewrite rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "mirrored"),
    [
        ("vllm/vllm-openai:v0.32.0", "registry.example.com/hub/vllm/vllm-openai:v0.32.0"),
        ("docker.io/vllm/vllm-openai:v0.32.0", "registry.example.com/hub/vllm/vllm-openai:v0.32.0"),
        ("python:3.11-slim", "registry.example.com/hub/library/python:3.11-slim"),
        (
            "ghcr.io/pulumi-llmd/epp:0.1.0@sha256:" + "a" * 64,
            "registry.example.com/llmd/epp:0.1.0@sha256:" + "a" * 64,
        ),
        # Whole components only, and registries without a rule stay as they are.
        ("ghcr.io/pulumi-llmdx/epp:0.1.0", "ghcr.io/pulumi-llmdx/epp:0.1.0"),
        ("localhost/pulumi-llmd-epp:dev", "localhost/pulumi-llmd-epp:dev"),
        ("registry.k8s.io/lws/lws:v0.10.0", "registry.k8s.io/lws/lws:v0.10.0"),
    ],
)
def test_images_are_rewritten_by_their_longest_registry_prefix(image: str, mirrored: str) -> None:
    assert mirrored_image(image, SETTINGS) == mirrored


def test_the_longest_prefix_wins() -> None:
    rules = {"ghcr.io": "m.example.com/ghcr", "ghcr.io/llm-d": "m.example.com/llm-d"}
    assert rewrite_prefix("ghcr.io/llm-d/router:v1", rules) == "m.example.com/llm-d/router:v1"
    assert rewrite_prefix("ghcr.io/other/x:v1", rules) == "m.example.com/ghcr/other/x:v1"


def test_every_pod_template_kind_gets_mirrored_images_and_pull_secrets() -> None:
    pod = {
        "containers": [{"name": "c", "image": "nvcr.io/nvidia/driver:1"}],
        "imagePullSecrets": [{"name": "own"}],
    }
    cases = {
        "kubernetes:apps/v1:DaemonSet": {"spec": {"template": {"spec": pod}}},
        "kubernetes:batch/v1:CronJob": {"spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}},
        "kubernetes:core/v1:Pod": {"spec": pod},
        "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet": {
            "spec": {
                "leaderWorkerTemplate": {"leaderTemplate": {"spec": pod}, "workerTemplate": {"spec": pod}}
            }
        },
    }
    for resource_type, props in cases.items():
        before = copy.deepcopy(props)
        out = mirror_props(resource_type, props, SETTINGS)
        assert props == before, "the transform must not edit its input"
        assert out is not None
        text = repr(out)
        assert "registry.example.com/nvcr/nvidia/driver:1" in text and "nvcr.io/" not in text
        assert text.count("'regcred'") == text.count("'own'")  # added beside the object's own secret
    assert mirror_props("kubernetes:core/v1:ConfigMap", {"data": {"image": "nvcr.io/x:1"}}, SETTINGS) is None
    assert mirror_props("gcp:container/nodePool:NodePool", {"name": "x"}, SETTINGS) is None


def test_charts_move_between_repositories_and_oci() -> None:
    nvidia = {
        "chart": "gpu-operator",
        "version": "v26.7.0",
        "repositoryOpts": {"repo": "https://helm.ngc.nvidia.com/nvidia"},
    }
    assert mirror_props("kubernetes:helm.sh/v4:Chart", nvidia, SETTINGS) == {
        "chart": "oci://registry.example.com/charts/nvidia/gpu-operator",
        "version": "v26.7.0",
    }
    kgateway = {"chart": "oci://cr.kgateway.dev/kgateway-dev/charts/kgateway", "version": "v2.1.0"}
    assert mirror_props("kubernetes:helm.sh/v4:Chart", kgateway, SETTINGS) == {
        "chart": "kgateway",
        "version": "v2.1.0",
        "repositoryOpts": {"repo": "https://charts.example.com/kgateway"},
    }
    other = {
        "chart": "aws-efa-k8s-device-plugin",
        "repositoryOpts": {"repo": "https://aws.github.io/eks-charts"},
    }
    assert mirror_props("kubernetes:helm.sh/v4:Chart", other, SETTINGS) is None


def test_the_transform_hands_pulumi_the_rewritten_props() -> None:
    transform = mirror_transform(SETTINGS)
    args = pulumi.ResourceTransformArgs(
        custom=False,
        type_="kubernetes:yaml/v2:ConfigFile",
        name="crds",
        props={"file": "https://github.com/kubernetes-sigs/lws/releases/download/v0.10.0/manifests.yaml"},
        opts=pulumi.ResourceOptions(),
    )
    result = transform(args)
    assert result is not None
    assert (
        result.props["file"]
        == "https://artifacts.example.com/github/kubernetes-sigs/lws/releases/download/v0.10.0/manifests.yaml"
    )
    assert result.opts is args.opts


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            {"images": {"docker.io": "Registry.Example.com/Hub"}},
            "mirror 'Registry.Example.com/Hub' is not a registry prefix",
        ),
        (
            {"images": {"docker.io/vllm:v1": "r.example.com"}},
            "source 'docker.io/vllm:v1' is not a registry prefix",
        ),
        (
            {"charts": {"helm.ngc.nvidia.com/nvidia": "oci://r.example.com/c"}},
            "must be a chart repository URL",
        ),
        ({"urls": {"https://github.com/": "ftp://mirror/"}}, "must be an http(s):// URL prefix"),
        ({"imagePullSecrets": ["Reg_Cred"]}, "'Reg_Cred' is not a Secret name"),
    ],
)
def test_bad_mirror_rules_are_refused_with_the_key(section: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(kind_config(mirrors=section), has_hf_token=False)
    (found,) = caught.value.problems
    key = next(iter(section))
    assert str(found).startswith(f"llmd:mirrors.{key}") and problem in str(found)


# --- rendered everywhere -----------------------------------------------------------------------


def onprem_with_mirrors() -> RenderResult:
    return render_config(
        {
            "platform": "onprem",
            "name": "air",
            "model": {"name": "org/m", "uri": "pvc://models/org/m"},
            "prefill": {"replicas": 1},
            "onprem": {
                "rdmaNetworks": [{"name": "roce-0", "master": "ens1f0np0", "ipamRange": "192.168.100.0/24"}],
            },
            "mirrors": MIRRORS,
        }
    )


def pod_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    kind = manifest["kind"]
    if kind == "Deployment":
        return [manifest["spec"]["template"]["spec"]]
    if kind == "LeaderWorkerSet":
        group = manifest["spec"]["leaderWorkerTemplate"]
        return [group["leaderTemplate"]["spec"], group["workerTemplate"]["spec"]]
    return []


def test_the_stack_renders_every_image_chart_and_url_from_the_mirrors() -> None:
    result = onprem_with_mirrors()
    specs = [spec for manifest in result.manifests() for spec in pod_specs(manifest)]
    assert len(specs) == 3  # prefill, decode, EPP
    for spec in specs:
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["image"].startswith("registry.example.com/"), container["image"]
    engine = result.get("Deployment", "air-decode").document["spec"]["template"]["spec"]["containers"][0]
    assert engine["image"] == "registry.example.com/hub/vllm/vllm-openai:v0.32.0"
    for manifest in result.manifests():
        if is_core(manifest):
            validate_core(manifest, "1.33")

    policy = result.get("NicClusterPolicy", "nic-cluster-policy").document
    components = [policy["spec"]["nvIpam"], *policy["spec"]["secondaryNetwork"].values()]
    components.append(policy["spec"]["rdmaSharedDevicePlugin"])
    for component in components:
        assert component["repository"] == "registry.example.com/nvcr/nvidia/mellanox"
        assert component["imagePullSecrets"] == ["regcred"]
    if CRDS.is_dir():
        validate_custom(policy)

    for chart in ("gpu-operator", "network-operator"):
        document = result.get("Chart", chart).document
        assert document["chart"] == f"oci://registry.example.com/charts/nvidia/{chart}"
        assert document.get("repository") is None
    for chart in ("agentgateway-crds", "agentgateway"):  # the default gateway provider's charts
        document = result.get("Chart", chart).document
        assert (document["chart"], document["repository"]) == (
            chart,
            "https://charts.example.com/agentgateway",
        )
    urls = [o.document["file"] for o in result.of_source("yaml")]
    assert urls and all(url.startswith("https://artifacts.example.com/github/") for url in urls)


def test_without_mirrors_nothing_is_rewritten(renders: dict[str, RenderResult]) -> None:
    for result in renders.values():
        for manifest in result.manifests():
            for spec in pod_specs(manifest):
                assert "imagePullSecrets" not in spec
    assert (
        renders["onprem"].get("Chart", "gpu-operator").document["repository"]
        == "https://helm.ngc.nvidia.com/nvidia"
    )
