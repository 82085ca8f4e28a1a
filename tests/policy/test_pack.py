"""The Pulumi policy pack: policies wired to the rules, scoping, config, and the served analyzer."""

from __future__ import annotations

import copy
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import llmd_pack
import llmd_rules
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_ARRAY_VALUE, UNKNOWN_STRING_VALUE, unknown_checking_proxy

from tests.support.policy import POLICY_DIR
from tests.support.policy_manifests import container, epp, model_server

STACK_URN = (
    "urn:pulumi:onprem::llmd::llmd:index:LlmdStack$llmd:index:ModelServerPool$kubernetes:apps/v1:Deployment"
)
CHART_URN = "urn:pulumi:onprem::llmd::kubernetes:helm.sh/v4:Chart$kubernetes:apps/v1:DaemonSet::gpu-operator"


def validate(
    policy: ResourceValidationPolicy,
    manifest: dict[str, Any],
    urn: str = STACK_URN + "::decode",
    resource_type: str = "kubernetes:apps/v1:Deployment",
    config: dict[str, Any] | None = None,
) -> list[str]:
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    args = ResourceValidationArgs(
        resource_type, unknown_checking_proxy(manifest), urn, "decode", opts, None, config
    )
    messages: list[str] = []
    policy.validate(args, lambda message, _urn: messages.append(message))
    return messages


def policies() -> dict[str, ResourceValidationPolicy]:
    built = llmd_pack.build_policies()
    assert all(isinstance(p, ResourceValidationPolicy) for p in built)
    return {p.name: p for p in built}


def test_one_policy_per_rule_with_its_description() -> None:
    built = policies()

    assert list(built) == [rule.name for rule in llmd_rules.RULES]
    for rule in llmd_rules.RULES:
        assert built[rule.name].description == rule.description


def test_policies_report_what_the_rules_find_on_resource_props() -> None:
    bad = model_server()
    container(bad, "vllm")["securityContext"]["privileged"] = True
    container(bad, "vllm")["image"] = "vllm/vllm-openai"

    assert validate(policies()["llmd-model-server-privileges"], model_server()) == []
    assert "containers[vllm] is privileged" in validate(policies()["llmd-model-server-privileges"], bad)[0]
    assert "has no tag" in validate(policies()["llmd-images-pinned"], bad)[0]


def test_kind_comes_from_the_type_token_when_props_lack_it() -> None:
    bad = model_server()
    del bad["kind"]
    container(bad, "vllm")["image"] = "vllm/vllm-openai:latest"

    assert len(validate(policies()["llmd-images-pinned"], bad)) == 1


def test_non_kubernetes_resources_are_ignored() -> None:
    bad = model_server()
    container(bad, "vllm")["image"] = "vllm/vllm-openai:latest"

    assert (
        validate(policies()["llmd-images-pinned"], bad, resource_type="gcp:container/cluster:Cluster") == []
    )


def test_chart_children_get_only_the_universal_rules() -> None:
    privileged_operator = model_server()
    container(privileged_operator, "vllm")["securityContext"] = {"privileged": True}
    container(privileged_operator, "vllm")["resources"] = {}
    container(privileged_operator, "vllm")["image"] = "nvcr.io/nvidia/driver:latest"
    built = policies()

    assert llmd_pack.is_third_party(CHART_URN) and not llmd_pack.is_third_party(STACK_URN + "::decode")
    assert validate(built["llmd-model-server-privileges"], privileged_operator, urn=CHART_URN) == []
    assert validate(built["llmd-resource-limits"], privileged_operator, urn=CHART_URN) == []
    assert len(validate(built["llmd-images-pinned"], privileged_operator, urn=CHART_URN)) == 1


def test_policy_config_overrides_the_defaults() -> None:
    manifest = model_server()
    container(manifest, "vllm")["securityContext"]["capabilities"]["add"] = ["IPC_LOCK", "SYS_NICE"]
    built = policies()

    assert len(validate(built["llmd-model-server-privileges"], manifest)) == 1
    allowing = {"allowedCapabilities": ["ipc_lock", "sys_nice"]}
    assert validate(built["llmd-model-server-privileges"], manifest, config=allowing) == []
    strict = {"requiredLimits": ["memory", "cpu"], "requiredRequests": ["cpu"]}
    assert "has no resources.limits.cpu" in validate(built["llmd-resource-limits"], epp(), config=strict)[0]


def test_unknown_preview_values_skip_only_themselves() -> None:
    manifest = model_server()
    container(manifest, "vllm")["image"] = UNKNOWN_STRING_VALUE
    container(manifest, "vllm")["env"] = UNKNOWN_ARRAY_VALUE
    container(manifest, "routing-sidecar")["image"] = "ghcr.io/example/pulumi-llmd-epp:latest"

    messages = validate(policies()["llmd-images-pinned"], manifest)

    assert messages == [
        "spec.template.spec.initContainers[routing-sidecar] image 'ghcr.io/example/pulumi-llmd-epp:latest' "
        "uses the moving tag 'latest'; pin a version tag or a digest"
    ]
    assert validate(policies()["llmd-no-plain-secrets"], manifest) == []


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """The pack exactly as the Pulumi CLI starts it: `python __main__.py`, port on stdout."""
    process = subprocess.Popen(
        [sys.executable, "__main__.py"],
        cwd=POLICY_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline().decode().strip() if ready else ""
        if not line.isdigit():
            stderr = process.stderr.read().decode() if process.poll() is not None and process.stderr else ""
            pytest.fail(f"policy pack did not print its port (got {line!r}): {stderr}")
        with grpc.insecure_channel(f"127.0.0.1:{line}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def struct(manifest: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(manifest)
    return message


def analyze(stub: analyzer_pb2_grpc.AnalyzerStub, manifest: dict[str, Any]) -> dict[str, list[str]]:
    request = analyzer_pb2.AnalyzeRequest(
        type="kubernetes:apps/v1:Deployment", properties=struct(manifest), urn=STACK_URN + "::x", name="x"
    )
    found: dict[str, list[str]] = {}
    for diagnostic in stub.Analyze(request, timeout=30).diagnostics:
        found.setdefault(diagnostic.policyName, []).append(diagnostic.message)
    return found


def test_served_pack_lists_its_policies(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)

    assert info.name == llmd_pack.PACK_NAME
    assert [p.name for p in info.policies] == [rule.name for rule in llmd_rules.RULES]
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}


def test_served_pack_analyzes_resources_like_the_engine_sends_them(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    # Numbers cross the wire as floats (runAsUser 65532.0): the hardened EPP must still pass.
    assert analyze(analyzer, epp()) == {}
    assert analyze(analyzer, model_server()) == {}

    bad = copy.deepcopy(epp())
    container(bad, "epp")["securityContext"] = {"runAsUser": 0}
    container(bad, "epp")["env"] = [{"name": "HF_TOKEN", "value": "literal"}]
    found = analyze(analyzer, bad)

    assert set(found) == {"llmd-epp-hardened", "llmd-no-plain-secrets"}
    assert any("runAsUser: 0" in m for m in found["llmd-epp-hardened"])
