"""Other shapes of the stack, rendered through the real program and validated like the examples."""

from __future__ import annotations

from typing import Any

import pytest

from render.engine import RenderResult, run_program
from tests.support.stacks import CRDS, is_core, kind_config, render_config, validate_all, validate_core

ONPREM_VLLM: dict[str, Any] = {
    "platform": "onprem",
    "name": "big",
    "onprem": {"gpuOperator": {"install": False, "version": "v26.7.0", "namespace": "gpu-operator"}},
    "model": {"name": "org/big", "uri": "pvc://models/org/big"},
}


def validate(result: RenderResult, version: str = "1.33") -> None:
    """Core objects always; custom resources too when the CRD files are present."""
    if CRDS.is_dir():
        validate_all(result, version)
        return
    for manifest in result.manifests():
        if is_core(manifest):
            validate_core(manifest, version)


def engine(workload: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "engine")


def test_pd_off_is_one_decode_pool_without_sidecar() -> None:
    result = render_config(kind_config(prefill={"enabled": False}))
    validate(result)
    names = sorted(d["metadata"]["name"] for d in result.manifests("Deployment"))
    assert names == ["t-decode", "t-epp"]
    decode = result.get("Deployment", "t-decode").document
    assert "initContainers" not in decode["spec"]["template"]["spec"]
    container = engine(decode)
    assert [p["containerPort"] for p in container["ports"]] == [8000]
    assert container["args"][container["args"].index("--role") + 1] == "both"
    assert not any(e["name"].startswith("VLLM_NIXL") for e in container["env"])
    [config_map] = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    picker = config_map["data"]["epp-config.yaml"]
    assert "disagg-profile-handler" not in picker and "kv-cache-utilization-scorer" in picker
    policies = sorted(p["metadata"]["name"] for p in result.manifests("NetworkPolicy"))
    assert policies == ["t-decode-ingress", "t-epp-ingress"]


def test_multi_node_replicas_become_leaderworkersets() -> None:
    config = {**ONPREM_VLLM, "decode": {"replicas": 2, "tensorParallel": 8, "nodesPerReplica": 2}}
    result = render_config(config)
    validate(result)
    lws = result.get("LeaderWorkerSet", "big-decode")
    spec = lws.document["spec"]
    assert spec["replicas"] == 2
    group = spec["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = group["leaderTemplate"], group["workerTemplate"]
    # Only leaders serve: the pool must not pick Ray workers.
    assert leader["metadata"]["labels"]["llm-d.ai/inference-serving"] == "true"
    assert "llm-d.ai/inference-serving" not in worker["metadata"]["labels"]
    leader_engine = engine({"spec": {"template": leader}})
    worker_engine = engine({"spec": {"template": worker}})
    assert "ray start --head" in leader_engine["args"][0]
    assert "--pipeline-parallel-size 2" in leader_engine["args"][0]
    assert "$LWS_LEADER_ADDRESS" in worker_engine["args"][0]
    assert leader_engine["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert worker_engine["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert [c["name"] for c in leader["spec"]["initContainers"]] == ["routing-sidecar"]
    assert "initContainers" not in worker["spec"]
    for template in (leader, worker):
        validate_core(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template},
            "1.33",
        )
    # LWS itself is installed (CRD + controller) and the group waits for it.
    install = result.get("ConfigFile", "leaderworkerset-v0.10.0")
    assert install.document["file"].endswith("/lws/releases/download/v0.10.0/manifests.yaml")
    assert install.registration.urn in lws.registration.dependencies
    # Ray/NCCL between the group's pods is allowed.
    policy = result.get("NetworkPolicy", "big-decode-ingress").document
    same_role = {
        "podSelector": {"matchLabels": {"app.kubernetes.io/instance": "big", "llm-d.ai/role": "decode"}}
    }
    assert {"from": [same_role]} in policy["spec"]["ingress"]


def test_pvc_model_mounts_the_claim_read_only() -> None:
    result = render_config({**ONPREM_VLLM, "prefill": {"enabled": False}})
    decode = result.get("Deployment", "big-decode").document
    spec = decode["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "model-cache")
    assert volume == {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    container = engine(decode)
    assert container["args"][0] == "/model-cache/org/big"
    assert not any(e["name"] == "HF_TOKEN" for e in container["env"])
    assert result.manifests("Secret") == []
    # Operators toggled off are not installed; the network operator still is.
    assert [o.name for o in result.of_source("helm") if o.name.endswith("operator")] == ["network-operator"]


def test_hf_token_becomes_a_secret_only_with_vllm() -> None:
    config = {**ONPREM_VLLM, "model": {"name": "org/m", "uri": "hf://org/m"}}
    result = render_config(config, secrets={"hfToken": "hf_test_token"})
    secret = result.get("Secret", "big-hf-token")
    assert secret.registration.secret_paths == ["stringData"]
    assert "hf_test_token" not in str(secret.document)
    decode = result.get("Deployment", "big-decode")
    assert secret.registration.urn in decode.registration.dependencies


def test_leader_election_adds_leases_and_the_flag() -> None:
    result = render_config(kind_config(epp={"replicas": 2, "leaderElection": True}))
    (role,) = result.manifests("Role")
    groups = [(r["apiGroups"], r["resources"]) for r in role["rules"]]
    assert (["coordination.k8s.io"], ["leases"]) in groups and ([""], ["events"]) not in groups
    epp = result.get("Deployment", "t-epp").document
    container = epp["spec"]["template"]["spec"]["containers"][0]
    assert "--ha-enable-leader-election" in container["args"]
    # The Lease holder identity; readiness follows the Lease, so the probe must be the readiness one.
    pod_name = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert pod_name in container["env"]
    assert container["readinessProbe"]["grpc"]["service"] == "readiness"


def test_switches_drop_crds_gateway_controller_and_policies() -> None:
    result = render_config(
        kind_config(crds={"install": False}, gateway={"install": False}, networkPolicy={"enabled": False})
    )
    assert result.of_source("yaml") == [] and result.of_source("helm") == []
    assert result.manifests("NetworkPolicy") == []
    assert [g["spec"]["gatewayClassName"] for g in result.manifests("Gateway")] == ["agentgateway"]


def test_custom_picker_config_is_used_verbatim_and_rolls_the_epp() -> None:
    import hashlib

    text = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: random-picker\n"
    result = render_config(kind_config(epp={"config": text}))
    [config_map] = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    assert config_map["data"]["epp-config.yaml"] == text
    annotations = result.get("Deployment", "t-epp").document["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"llm-d.ai/epp-config-sha256": hashlib.sha256(text.encode()).hexdigest()}


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_other_kubernetes_versions_validate(version: str) -> None:
    result = render_config(kind_config(kubernetesVersion=version))
    validate(result, version)


def test_a_tls_secret_is_mounted_and_reloaded() -> None:
    result = render_config(kind_config(epp={"tlsSecretName": "epp-cert"}))
    spec = result.get("Deployment", "t-epp").document["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "--secure-serving=true" in container["args"]
    assert container["args"][container["args"].index("--cert-path") + 1] == "/etc/epp/tls"
    assert "--enable-cert-reload" in container["args"]
    assert {"name": "tls", "mountPath": "/etc/epp/tls", "readOnly": True} in container["volumeMounts"]
    assert {"name": "tls", "secret": {"secretName": "epp-cert"}} in spec["volumes"]
    validate(result)


def test_the_epp_serves_tls_by_default_with_a_certificate_it_makes() -> None:
    result = render_config(kind_config())
    spec = result.get("Deployment", "t-epp").document["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "--secure-serving=true" in container["args"]
    assert "--cert-path" not in container["args"] and "--enable-cert-reload" not in container["args"]
    assert "tls" not in {v["name"] for v in spec["volumes"]}
    (service,) = result.manifests("Service")
    # HTTP/2 whether or not TLS wraps it, as llm-d-router's chart declares it.
    assert service["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"


def test_two_stacks_in_one_program_have_distinct_resources() -> None:
    import pulumi
    import pulumi_kubernetes as k8s

    from pulumi_llmd import LlmdStack, llmd_stack_args, parse_stack_config

    def program() -> None:
        provider = k8s.Provider("shared-cluster")
        opts = pulumi.ResourceOptions(providers=[provider])
        first = parse_stack_config(kind_config(name="a", namespace="team-a"), has_hf_token=False)
        # Cluster-wide pieces (CRDs, the gateway control plane) come from the first stack only.
        shared_off = {"crds": {"install": False}, "gateway": {"install": False}}
        second_raw = kind_config(name="b", namespace="team-b", **shared_off)
        second = parse_stack_config(second_raw, has_hf_token=False)
        LlmdStack("a", llmd_stack_args(first), opts=opts)
        LlmdStack("b", llmd_stack_args(second), opts=opts)

    registrations, _ = run_program("two", {}, program=program)
    urns = [r.urn for r in registrations]
    assert len(urns) == len(set(urns))
    pools = [r for r in registrations if r.pulumi_type.endswith(":InferencePool")]
    placed = sorted((r.inputs["metadata"]["namespace"], r.name) for r in pools)
    assert placed == [("team-a", "a"), ("team-b", "b")]


@pytest.mark.parametrize("option", ["provider", "providers"])
def test_the_provider_and_dependencies_in_opts_reach_every_object(option: str) -> None:
    """A local LlmdStack takes the Kubernetes provider as `provider=` or `providers=[...]`; every
    object (typed, custom, Helm, remote YAML) inherits it and waits for the stack's `depends_on`."""
    import pulumi
    import pulumi_kubernetes as k8s

    from pulumi_llmd import LlmdStack, llmd_stack_args, parse_stack_config

    def program() -> None:
        cluster = k8s.Provider("cluster")
        ready = k8s.core.v1.Namespace("gpu-nodes-ready")
        given = {"provider": cluster} if option == "provider" else {"providers": [cluster]}
        config = parse_stack_config(kind_config(), has_hf_token=False)
        opts = pulumi.ResourceOptions(depends_on=[ready], **given)
        LlmdStack("t", llmd_stack_args(config), opts=opts)

    registrations, _ = run_program("opts", {}, program=program)
    provider = next(r.urn for r in registrations if r.pulumi_type == "pulumi:providers:kubernetes")
    ready_urn = next(r.urn for r in registrations if r.name == "gpu-nodes-ready")
    objects = [
        r for r in registrations if r.pulumi_type.startswith("kubernetes:") and r.name != "gpu-nodes-ready"
    ]
    # 19 objects of the kind stack, 5 PodMonitors, a PrometheusRule, 3 dashboards; 2 charts, 3 remote YAML
    assert len(objects) == 33
    for registration in objects:
        assert registration.provider.startswith(provider + "::"), registration.name
        assert ready_urn in registration.dependencies, registration.name
