"""SUMMARY.md as a review summary: images and their pins, replicas, accelerators per pod, cloud GPU
capacity, chart versions, remote YAML URLs and object counts, read from the rendered objects."""

from __future__ import annotations

import pytest

from render.engine import RenderResult
from render.summary import ImageRef, accelerators, summary_markdown, workloads
from tests.support.stacks import render_config


def section(summary: str, title: str) -> list[list[str]]:
    """The rows of one table of the summary, as cells."""
    body = summary.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ")][1:]  # minus the header
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


@pytest.mark.parametrize(
    ("reference", "repository", "tag", "digest"),
    [
        ("docker.io/vllm/vllm-openai:v0.19.1", "docker.io/vllm/vllm-openai", "v0.19.1", None),
        ("localhost:5000/epp", "localhost:5000/epp", None, None),
        ("localhost:5000/epp:dev", "localhost:5000/epp", "dev", None),
        ("ghcr.io/x/epp@sha256:abc", "ghcr.io/x/epp", None, "sha256:abc"),
        ("ghcr.io/x/epp:1.0@sha256:abc", "ghcr.io/x/epp", "1.0", "sha256:abc"),
    ],
)
def test_image_references_split_into_repository_tag_and_digest(
    reference: str, repository: str, tag: str | None, digest: str | None
) -> None:
    assert ImageRef.parse(reference) == ImageRef(repository, tag, digest)


DIGEST = "sha256:" + "0" * 64


def test_pins_are_shown_and_floating_images_flagged_by_the_config_rule() -> None:
    assert ImageRef.parse("a/b:1.2").pin == "`1.2`"
    assert ImageRef.parse(f"a/b:1.2@{DIGEST}").pin == f"`1.2` @ `{DIGEST}`"
    assert ImageRef.parse(f"a/b@{DIGEST}").pin == f"`{DIGEST}`"
    assert ImageRef.parse("a/b").pin == "- **has no tag or digest (it would pull :latest); " + (
        "pin a version tag or a digest (name@sha256:<64 hex digits>)**"
    )
    assert "moving tag 'latest'" in ImageRef.parse("a/b:latest").pin
    assert "malformed digest" in ImageRef.parse("a/b@sha256:abc").pin


def test_kind_summary_lists_images_workloads_charts_and_crd_urls(renders: dict[str, RenderResult]) -> None:
    summary = summary_markdown(renders["kind"])
    assert section(summary, "Images") == [
        ["`localhost/pulumi-llmd-epp`", "`dev`", "sim-epp/epp"],
        ["`localhost/pulumi-llmd-sidecar`", "`dev`", "sim-decode/routing-sidecar"],
        ["`localhost/pulumi-llmd-simulator`", "`dev`", "sim-decode/engine, sim-prefill/engine"],
    ]
    assert section(summary, "Workloads") == [
        ["sim-decode", "Deployment", "llm-d", "2", "routing-sidecar (sidecar), engine", "-"],
        ["sim-epp", "Deployment", "llm-d", "2", "epp", "-"],
        ["sim-prefill", "Deployment", "llm-d", "1", "engine", "-"],
    ]
    charts = {row[0]: row[1] for row in section(summary, "Helm charts")}
    assert charts == {
        "`oci://cr.agentgateway.dev/charts/agentgateway-crds`": "`v1.4.1`",
        "`oci://cr.agentgateway.dev/charts/agentgateway`": "`v1.4.1`",
    }
    urls = {row[0]: (row[1], row[2]) for row in section(summary, "Remote YAML")}
    assert urls["gateway-api-v1.6.1"] == (
        "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.1/standard-install.yaml",
        "yes",
    )
    assert "Cloud capacity" not in summary


def test_counts_add_up_to_the_rendered_objects(renders: dict[str, RenderResult]) -> None:
    for result in renders.values():
        summary = summary_markdown(result)
        counts = {kind: int(n) for kind, n in section(summary, "Object counts")}
        assert sum(counts.values()) == len(result.of_source("k8s")) + len(result.of_source("cloud"))
        assert counts["Deployment"] == len(result.manifests("Deployment"))
        assert f"{len(result.objects)} files: {len(result.of_source('k8s'))} Kubernetes objects" in summary


def test_onprem_accelerators_per_pod_include_the_rdma_device(renders: dict[str, RenderResult]) -> None:
    rows = {row[0]: row for row in section(summary_markdown(renders["onprem"]), "Workloads")}
    assert rows["llama-8b-decode"][5] == "nvidia.com/gpu: 2, rdma/rdma_shared_device_a: 1"
    assert rows["llama-8b-epp"][5] == "-"
    charts = {row[0]: (row[1], row[2]) for row in section(summary_markdown(renders["onprem"]), "Helm charts")}
    assert charts["`gpu-operator`"] == ("`v26.7.0`", "https://helm.ngc.nvidia.com/nvidia")


def test_cloud_stacks_show_the_gpu_capacity_they_provision(cloud_renders: dict[str, RenderResult]) -> None:
    gke = {row[0]: row for row in section(summary_markdown(cloud_renders["gke"]), "Cloud capacity")}
    assert gke["h200"][1:] == ["GKE node pool", "a3-ultragpu-8g", "8 x nvidia-h200-141gb", "2"]
    assert gke["system"][3] == "-"
    eks = {row[0]: row for row in section(summary_markdown(cloud_renders["eks"]), "Cloud capacity")}
    assert eks["h200"][1:] == ["EKS node group (GPU AMI)", "p5en.48xlarge", "8 x H200", "2 (0-2)"]
    workloads_gke = {row[0]: row[5] for row in section(summary_markdown(cloud_renders["gke"]), "Workloads")}
    assert workloads_gke["llama-70b-decode"] == "nvidia.com/gpu: 8"


def test_leaderworkersets_show_groups_and_both_templates() -> None:
    config = {
        "platform": "onprem",
        "name": "big",
        "onprem": {"gpuOperator": {"install": False, "version": "v26.7.0", "namespace": "gpu-operator"}},
        "model": {"name": "org/big", "uri": "pvc://models/org/big"},
        "decode": {"replicas": 2, "tensorParallel": 8, "nodesPerReplica": 3},
        "prefill": {"enabled": False},
    }
    result = render_config(config)
    (lws,) = [w for w in workloads(result) if w.rendered.kind == "LeaderWorkerSet"]
    assert [(t.role, t.pods) for t in lws.templates] == [("leader", 1), ("worker", 2)]
    rows = {row[0]: row for row in section(summary_markdown(result), "Workloads")}
    assert rows["big-decode (leader)"][3] == "2 groups x 3 pods"
    assert rows["big-decode (worker)"][5].startswith("nvidia.com/gpu: 8")
    assert accelerators(lws.templates[1].spec)["nvidia.com/gpu"] == 8


def test_an_unpinned_image_in_a_rendered_workload_is_flagged(renders: dict[str, RenderResult]) -> None:
    """The config refuses unpinned images; the summary still flags one that reaches a manifest."""
    import copy

    from render.engine import render_registrations

    registrations = copy.deepcopy(renders["kind"].registrations)
    decode = next(
        r for r in registrations if r.pulumi_type.endswith(":Deployment") and r.name == "sim-decode"
    )
    decode.inputs["spec"]["template"]["spec"]["containers"][0]["image"] = "example.org/sim"
    summary = summary_markdown(render_registrations("kind", registrations))
    (row,) = [r for r in section(summary, "Images") if r[0] == "`example.org/sim`"]
    assert row[1].startswith("- **has no tag or digest") and row[2] == "sim-decode/engine"
