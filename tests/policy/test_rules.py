"""Each guard-rail rule passes a known-good manifest and catches the bad variant it exists for."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import llmd_rules
import pytest

from tests.support.policy_manifests import container, epp, leader_worker_set, model_server

Mutation = Callable[[dict[str, Any]], None]


def test_good_manifests_pass_every_rule() -> None:
    for manifest in (model_server(), epp(), leader_worker_set()):
        assert llmd_rules.check_all(manifest) == {}


def mutated(build: Callable[[], dict[str, Any]], mutate: Mutation) -> dict[str, Any]:
    manifest = copy.deepcopy(build())
    mutate(manifest)
    return manifest


def set_in(name: str, path: tuple[str, ...], value: Any) -> Mutation:
    def apply(manifest: dict[str, Any]) -> None:
        target = container(manifest, name)
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return apply


def pod_spec(key: str, value: Any) -> Mutation:
    return lambda m: m["spec"]["template"]["spec"].__setitem__(key, value)


BAD_CASES: list[tuple[str, Callable[[], dict[str, Any]], Mutation, str, str]] = [
    # rule, good manifest, mutation, expected fragment of the message, case id
    (
        "llmd-model-server-privileges",
        model_server,
        set_in("vllm", ("securityContext", "privileged"), True),
        "containers[vllm] is privileged",
        "privileged",
    ),
    (
        "llmd-model-server-privileges",
        model_server,
        set_in("vllm", ("securityContext", "capabilities", "add"), ["IPC_LOCK", "SYS_ADMIN"]),
        "adds capabilities SYS_ADMIN",
        "sys-admin",
    ),
    (
        "llmd-model-server-privileges",
        model_server,
        set_in("routing-sidecar", ("securityContext", "capabilities", "add"), ["ALL"]),
        "initContainers[routing-sidecar] adds capabilities ALL",
        "all-caps-on-init-container",
    ),
    ("llmd-model-server-privileges", model_server, pod_spec("hostPID", True), "hostPID is true", "host-pid"),
    (
        "llmd-epp-hardened",
        epp,
        set_in("epp", ("securityContext",), {"runAsNonRoot": False, "readOnlyRootFilesystem": True}),
        "may run as root",
        "root",
    ),
    (
        "llmd-epp-hardened",
        epp,
        set_in("epp", ("securityContext",), {"readOnlyRootFilesystem": True}),
        "may run as root",
        "no-security-context",
    ),
    ("llmd-epp-hardened", epp, set_in("epp", ("securityContext", "runAsUser"), 0), "runAsUser: 0", "uid-0"),
    (
        "llmd-epp-hardened",
        epp,
        set_in("epp", ("securityContext", "readOnlyRootFilesystem"), False),
        "readOnlyRootFilesystem: true",
        "writable-root",
    ),
    (
        "llmd-epp-hardened",
        epp,
        set_in("epp", ("securityContext", "allowPrivilegeEscalation"), True),
        "allowPrivilegeEscalation: true",
        "escalation",
    ),
    (
        "llmd-resource-limits",
        model_server,
        set_in("vllm", ("resources", "limits"), {"nvidia.com/gpu": "1"}),
        "containers[vllm] has no resources.limits.memory",
        "no-memory-limit",
    ),
    (
        "llmd-resource-limits",
        epp,
        set_in("epp", ("resources",), {}),
        "has no resources.limits.memory",
        "none",
    ),
    (
        "llmd-resource-limits",
        model_server,
        set_in("routing-sidecar", ("resources", "requests"), {"memory": "1Gi"}),
        "routing-sidecar] has no resources.requests.cpu",
        "no-cpu-request",
    ),
    (
        "llmd-images-pinned",
        model_server,
        set_in("vllm", ("image",), "vllm/vllm-openai:latest"),
        "moving tag 'latest'",
        "latest",
    ),
    (
        "llmd-images-pinned",
        model_server,
        set_in("vllm", ("image",), "vllm/vllm-openai"),
        "has no tag",
        "untagged",
    ),
    (
        "llmd-images-pinned",
        epp,
        set_in("epp", ("image",), "registry.local:5000/llmd/epp"),
        "has no tag",
        "registry-port-untagged",
    ),
    (
        "llmd-images-pinned",
        epp,
        set_in("epp", ("image",), "ghcr.io/x/epp@sha256:abc"),
        "malformed digest",
        "bad-digest",
    ),
    (
        "llmd-no-plain-secrets",
        model_server,
        set_in("vllm", ("env",), [{"name": "HF_TOKEN", "value": "abc"}]),
        "env HF_TOKEN carries a literal value",
        "token-name",
    ),
    (
        "llmd-no-plain-secrets",
        epp,
        set_in("epp", ("env",), [{"name": "DB_PASSWORD", "value": "hunter2"}]),
        "env DB_PASSWORD carries a literal value",
        "password-name",
    ),
    (
        "llmd-no-plain-secrets",
        epp,
        set_in("epp", ("env",), [{"name": "OPENAI_API_KEY", "value": "x"}]),
        "env OPENAI_API_KEY carries a literal value",
        "api-key-name",
    ),
    (
        "llmd-no-plain-secrets",
        model_server,
        set_in("vllm", ("env",), [{"name": "EXTRA", "value": "hf_" + "a1B2" * 9}]),
        "env EXTRA holds what looks like a credential",
        "token-value",
    ),
    (
        "llmd-no-plain-secrets",
        model_server,
        set_in("vllm", ("args",), ["--model", "m", "--api-key", "sk-" + "x" * 32]),
        "credential on its command line",
        "token-in-args",
    ),
]


@pytest.mark.parametrize(
    ("rule", "build", "mutate", "message", "case"), BAD_CASES, ids=[c[-1] for c in BAD_CASES]
)
def test_rule_catches_its_bad_manifest(
    rule: str, build: Callable[[], dict[str, Any]], mutate: Mutation, message: str, case: str
) -> None:
    results = llmd_rules.check_all(mutated(build, mutate))

    assert rule in results, f"{case}: {rule} did not fire; got {results}"
    assert any(message in v for v in results[rule]), results[rule]


def test_every_rule_has_a_bad_case() -> None:
    assert {r.name for r in llmd_rules.RULES} == {case[0] for case in BAD_CASES}


def test_leader_worker_set_templates_are_both_checked() -> None:
    lws = leader_worker_set()
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    worker["securityContext"]["privileged"] = True
    worker["image"] = "vllm/vllm-openai:latest"

    results = llmd_rules.check_all(lws)

    assert results["llmd-model-server-privileges"] == [
        "spec.leaderWorkerTemplate.workerTemplate.spec.containers[vllm] is privileged; grant the devices "
        "it needs (GPU/RDMA resources) and at most these capabilities instead: "
        "IPC_LOCK, NET_ADMIN, NET_RAW, SYS_RAWIO"
    ]
    assert len(results["llmd-images-pinned"]) == 1


@pytest.mark.parametrize(
    "manifest",
    [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "c"},
            "spec": {
                "jobTemplate": {
                    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
                }
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        },
    ],
    ids=["cronjob", "pod", "daemonset"],
)
def test_all_workload_kinds_are_inspected(manifest: dict[str, Any]) -> None:
    results = llmd_rules.check_all(manifest)

    assert "has no tag" in results["llmd-images-pinned"][0]
    assert "has no resources.limits.memory" in results["llmd-resource-limits"][0]


def test_non_workloads_and_non_model_pods_are_out_of_scope() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "stringData": {"token": "hf_" + "a" * 40},
    }
    gateway_pod = mutated(epp, lambda m: m["spec"]["template"]["metadata"].__setitem__("labels", {}))
    container(gateway_pod, "epp").update(
        command=["envoy"], securityContext={"capabilities": {"add": ["NET_ADMIN"]}}
    )

    assert llmd_rules.check_all(secret) == {}
    # Not an EPP and not a model server: capability and hardening rules do not apply.
    assert llmd_rules.check_all(gateway_pod) == {}


def test_the_epp_is_recognised_by_command_or_upstream_image_without_labels() -> None:
    by_command = mutated(epp, lambda m: m["spec"]["template"]["metadata"].__setitem__("labels", {}))
    container(by_command, "epp")["securityContext"] = {}
    upstream = copy.deepcopy(by_command)
    container(upstream, "epp").update(
        command=None, args=None, image="ghcr.io/llm-d/llm-d-inference-scheduler:v0.3.0"
    )

    for manifest in (by_command, upstream):
        assert "llmd-epp-hardened" in llmd_rules.check_all(manifest)
    # A container that runs another module of ours (the P/D sidecar, the simulator) is not the EPP,
    # whatever its image is called.
    for module in ("sidecar", "simulator"):
        body = {"image": "ghcr.io/pulumi-llmd/epp:0.1.0", "command": ["python", "-m", module]}
        assert llmd_rules.is_epp_container(llmd_rules.Container("x", body)) is False
    # An upstream image with its own entrypoint but extra flags is still the EPP.
    upstream_with_flags = {
        "image": "registry.k8s.io/gateway-api-inference-extension/epp:v1.0.0",
        "args": ["--pool-name", "llmd"],
    }
    assert llmd_rules.is_epp_container(llmd_rules.Container("x", upstream_with_flags)) is True


def test_pod_level_security_context_counts_for_the_epp() -> None:
    manifest = epp()
    container(manifest, "epp")["securityContext"] = {"readOnlyRootFilesystem": True}
    manifest["spec"]["template"]["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000}

    assert llmd_rules.check_all(manifest) == {}


def test_unknown_preview_values_are_not_violations() -> None:
    unknown = llmd_rules.UNKNOWN
    manifest = model_server()
    container(manifest, "vllm").update(image=unknown, resources=unknown)
    container(manifest, "vllm")["env"].append({"name": "API_KEY", "value": unknown})
    container(manifest, "vllm")["securityContext"]["capabilities"]["add"].append(unknown)

    assert llmd_rules.check_all(manifest) == {}


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("vllm/vllm-openai:v0.11.0", True),
        ("localhost:5000/epp:1.2", True),
        ("ghcr.io/a/b@sha256:" + "0" * 64, True),
        ("ghcr.io/a/b:v1@sha256:" + "0" * 64, True),
        ("localhost:5000/epp", False),
        ("epp:", False),
        ("epp:LATEST", False),
    ],
)
def test_image_pinning(image: str, pinned: bool) -> None:
    assert (llmd_rules.image_pin_problem(image) is None) is pinned


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("HF_TOKEN", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("OPENAI_API_KEY", True),
        ("DB_PASSWORD", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("HF_TOKEN_PATH", False),
        ("TLS_KEY_FILE", False),
        ("UCX_TLS", False),
        ("VLLM_NIXL_SIDE_CHANNEL_PORT", False),
        ("MONKEY", False),
    ],
)
def test_secret_env_names(name: str, secret: bool) -> None:
    assert llmd_rules.is_secret_env_name(name) is secret


def test_secret_env_names_may_point_at_mounted_secret_files() -> None:
    manifest = epp()
    env = container(manifest, "epp")["env"]
    env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/run/secrets/gcp/key.json"})
    assert llmd_rules.check_all(manifest) == {}

    env[-1]["value"] = "not-a-path"
    assert "llmd-no-plain-secrets" in llmd_rules.check_all(manifest)
