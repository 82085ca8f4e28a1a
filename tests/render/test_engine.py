"""The offline render: full object set per example stack, file layout, determinism, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from render import engine
from render.engine import RenderResult, load_stack_file, render_stack, write_render

KIND_FILES = {
    "ConfigMap--llm-d--sim-dashboard-epp.yaml",
    "ConfigMap--llm-d--sim-dashboard-pd.yaml",
    "ConfigMap--llm-d--sim-dashboard-pools.yaml",
    "ConfigMap--llm-d--sim-epp.yaml",
    "Deployment--llm-d--sim-decode.yaml",
    "Deployment--llm-d--sim-epp.yaml",
    "Deployment--llm-d--sim-prefill.yaml",
    "Gateway--llm-d--sim-gateway.yaml",
    "HTTPRoute--llm-d--sim.yaml",
    "InferencePool--llm-d--sim.yaml",
    "Namespace--_cluster--agentgateway-system.yaml",
    "Namespace--_cluster--llm-d.yaml",
    "NetworkPolicy--llm-d--sim-decode-ingress.yaml",
    "NetworkPolicy--llm-d--sim-epp-ingress.yaml",
    "NetworkPolicy--llm-d--sim-prefill-ingress.yaml",
    "PodDisruptionBudget--llm-d--sim-decode.yaml",
    "PodDisruptionBudget--llm-d--sim-epp.yaml",
    "PodDisruptionBudget--llm-d--sim-prefill.yaml",
    "Role--llm-d--sim-epp.yaml",
    "RoleBinding--llm-d--sim-epp.yaml",
    "Service--llm-d--sim-epp.yaml",
    "ServiceAccount--llm-d--sim-epp.yaml",
    "_helm--agentgateway-crds.yaml",
    "_helm--agentgateway.yaml",
    "_yaml--gateway-api-v1.6.1.yaml",
    "_yaml--inference-extension-v1.6.2.yaml",
    "_yaml--llm-d-router-v0.10.0.yaml",
}

ONPREM_EXTRA = {
    "Namespace--_cluster--gpu-operator.yaml",
    "Namespace--_cluster--nvidia-network-operator.yaml",
    "NetworkAttachmentDefinition--llm-d--roce-0.yaml",
    "NetworkAttachmentDefinition--llm-d--roce-1.yaml",
    # The kind stack turns the Prometheus Operator objects off (a fresh kind cluster has no operator).
    "PodMonitor--llm-d--llama-8b-decode-sidecar.yaml",
    "PodMonitor--llm-d--llama-8b-decode.yaml",
    "PodMonitor--llm-d--llama-8b-epp.yaml",
    "PodMonitor--llm-d--llama-8b-gateway.yaml",
    "PodMonitor--llm-d--llama-8b-prefill.yaml",
    "PrometheusRule--llm-d--llama-8b-rules.yaml",
    "NicClusterPolicy--_cluster--nic-cluster-policy.yaml",
    "IPPool--nvidia-network-operator--llama-8b-roce-0.yaml",
    "IPPool--nvidia-network-operator--llama-8b-roce-1.yaml",
    "Secret--llm-d--llama-8b-hf-token.yaml",
    "_helm--gpu-operator.yaml",
    "_helm--network-operator.yaml",
}


def test_kind_object_set(renders: dict[str, RenderResult]) -> None:
    assert {o.file for o in renders["kind"].objects} == KIND_FILES


def test_onprem_object_set(renders: dict[str, RenderResult]) -> None:
    expected = {f.replace("--sim", "--llama-8b") for f in KIND_FILES} | ONPREM_EXTRA
    assert {o.file for o in renders["onprem"].objects} == expected


def test_component_tree(renders: dict[str, RenderResult]) -> None:
    components = {r.pulumi_type for r in renders["onprem"].registrations if not r.custom}
    assert {
        "llmd:index:LlmdStack",
        "llmd:index:ClusterCrds",
        "llmd:index:GatewayControlPlane",
        "llmd:index:EndpointPicker",
        "llmd:index:ModelServerPool",
        "llmd:index:InferenceGateway",
        "llmd:index:InferenceNetworkPolicies",
        "llmd:index:OnPremAccelerators",
        "llmd:index:RdmaNetworks",
    } <= components


def test_written_layout_index_and_summary(renders: dict[str, RenderResult], tmp_path: Path) -> None:
    target = write_render(renders["kind"], tmp_path)
    names = {p.name for p in target.iterdir()}
    assert names == KIND_FILES | {"index.json", "SUMMARY.md"}

    index = json.loads((target / "index.json").read_text())
    assert [e["file"] for e in index] == sorted(KIND_FILES)
    pool = next(e for e in index if e["kind"] == "InferencePool")
    assert pool == {
        "file": "InferencePool--llm-d--sim.yaml",
        "source": "k8s",
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "namespace": "llm-d",
        "name": "sim",
        "pulumiType": "kubernetes:inference.networking.k8s.io/v1:InferencePool",
        "urn": pool["urn"],
        "secretPaths": [],
    }
    assert pool["urn"].endswith("::sim")
    assert {e["source"] for e in index} == {"k8s", "helm", "yaml"}

    deployment = yaml.safe_load((target / "Deployment--llm-d--sim-decode.yaml").read_text())
    assert deployment["apiVersion"] == "apps/v1" and deployment["spec"]["replicas"] == 2

    summary = (target / "SUMMARY.md").read_text()
    assert "| kind | name | namespace | source |" in summary
    assert "| InferencePool | sim | llm-d | k8s |" in summary
    assert "| Chart | agentgateway | agentgateway-system | helm |" in summary
    assert "remote components under mocks" in summary


def test_render_is_deterministic(renders: dict[str, RenderResult], tmp_path: Path) -> None:
    first = write_render(renders["onprem"], tmp_path / "a")
    second = write_render(render_stack("onprem"), tmp_path / "b")
    for path in sorted(first.iterdir()):
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_rewrite_removes_stale_files(renders: dict[str, RenderResult], tmp_path: Path) -> None:
    target = tmp_path / "kind"
    target.mkdir()
    (target / "Deployment--llm-d--gone.yaml").write_text("stale")
    write_render(renders["kind"], tmp_path)
    assert not (target / "Deployment--llm-d--gone.yaml").exists()


def test_helm_and_remote_yaml_say_they_are_opaque(renders: dict[str, RenderResult]) -> None:
    controller = renders["onprem"].get("Chart", "agentgateway").document
    assert controller["chart"] == "oci://cr.agentgateway.dev/charts/agentgateway"
    assert controller["version"] == "v1.4.1"
    assert controller["values"] == {"inferenceExtension": {"enabled": True}}
    assert "not rendered" in controller["note"]
    gpu = renders["onprem"].get("Chart", "gpu-operator").document
    assert gpu["repository"] == "https://helm.ngc.nvidia.com/nvidia"
    # The Network Operator deploys NFD; a second NFD from the GPU Operator would fight it.
    assert gpu["values"] == {"nfd": {"enabled": False}}
    # Since v24.10 the chart creates no NicClusterPolicy; the stack creates it (tests/pulumi_llmd/
    # components/test_onprem_rdma.py), and passes only values the v26.4 chart has.
    network = renders["onprem"].get("Chart", "network-operator").document
    assert (network["version"], network["values"]) == ("v26.4.1", {"nfd": {"enabled": True}})
    crds = renders["onprem"].get("ConfigFile", "gateway-api-v1.6.1").document
    assert crds["file"].endswith("/v1.6.1/standard-install.yaml")
    assert "not rendered" in crds["note"]


def test_secure_config_stays_secret_and_is_masked(renders: dict[str, RenderResult]) -> None:
    values, secret_keys = load_stack_file(engine.STACKS_DIR / "Pulumi.onprem.yaml")
    assert secret_keys == ["llmd:hfToken"]
    assert "only the Pulumi CLI can decrypt" in values["llmd:hfToken"]

    secret = renders["onprem"].get("Secret", "llama-8b-hf-token")
    assert secret.registration.secret_paths == ["stringData"]
    assert secret.document["stringData"] == {"HF_TOKEN": engine.SECRET_MARK}
    assert secret.document["type"] == "Opaque"
    # The token reaches vLLM only by reference, never as a literal env value.
    decode = renders["onprem"].get("Deployment", "llama-8b-decode").document
    (vllm,) = decode["spec"]["template"]["spec"]["containers"]
    token_env = next(e for e in vllm["env"] if e["name"] == "HF_TOKEN")
    assert token_env == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "llama-8b-hf-token", "key": "HF_TOKEN"}},
    }
    for rendered in renders["onprem"].objects:
        assert "placeholder" not in yaml.safe_dump(rendered.document), rendered.file


def test_stack_file_values_become_pulumi_strings(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(
        "config:\n  llmd:platform: kind\n  llmd:flag: true\n  llmd:model: {name: m}\n  llmd:n: 3\n"
    )
    values, secrets = load_stack_file(path)
    assert values == {
        "llmd:platform": "kind",
        "llmd:flag": "true",
        "llmd:model": '{"name": "m"}',
        "llmd:n": "3",
    }
    assert secrets == []


def test_unknown_stack_is_a_clear_error() -> None:
    with pytest.raises(
        FileNotFoundError, match=r"no stack file .*Pulumi\.nope\.yaml \(stacks: .*kind.*onprem"
    ):
        render_stack("nope")


def test_cli_writes_every_requested_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert engine.main(["kind", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "kind" / "InferencePool--llm-d--sim.yaml").is_file()
    assert "kind: 27 files (22 k8s, 2 helm, 3 yaml)" in capsys.readouterr().out


def test_remote_components_of_other_packages_render_as_opaque_cloud_files() -> None:
    from render.engine import Registration, render_registrations

    def registration(typ: str, name: str, custom: bool) -> Registration:
        return Registration(
            pulumi_type=typ,
            name=name,
            urn=f"urn:pulumi:s::llmd::{typ}::{name}",
            parent="",
            custom=custom,
            inputs={
                "region": "us-east-1",
                "token": {engine._SECRET_SIG_KEY: engine._SECRET_SIG, "value": "x"},
            },
            provider="",
            dependencies=[],
            retain_on_delete=False,
            protect=False,
            transforms=0,
            secret_paths=["token"],
        )

    result = render_registrations(
        "s",
        [
            registration("llmd:index:LlmdStack", "mine", custom=False),
            registration("eks:index:Cluster", "c", custom=False),
            registration("aws:ec2/vpc:Vpc", "v", custom=True),
        ],
    )
    assert [o.file for o in result.objects] == [
        "_cloud--aws_ec2_vpc_Vpc--v.yaml",
        "_cloud--eks_index_Cluster--c.yaml",
    ]
    cluster = result.get("Cluster", "c").document
    assert "not rendered" in cluster["note"] and cluster["inputs"]["token"] == engine.SECRET_MARK
    assert "note" not in result.get("Vpc", "v").document
