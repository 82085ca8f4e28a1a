"""Static findings of issue 12.8 on the pods: the kind stack's simulator runs without the vLLM
engine's root user and IPC_LOCK, on a read-only root filesystem, even where the platform adds RDMA
capabilities. (GKE's host paths: tests/pulumi_llmd/cloud/test_gke_stack.py.)"""

from __future__ import annotations

from typing import Any

from render.engine import RenderResult
from tests.support.stacks import render_config, validate_core

HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def engine_and_pod(result: RenderResult, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = result.get("Deployment", name).document["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "engine"), pod


def test_kind_simulators_run_hardened_with_a_writable_tmp(renders: dict[str, RenderResult]) -> None:
    for name in ("sim-prefill", "sim-decode"):
        engine, pod = engine_and_pod(renders["kind"], name)
        assert engine["securityContext"] == HARDENED
        tmp = next(m for m in engine["volumeMounts"] if m["mountPath"] == "/tmp")
        assert {"name": tmp["name"], "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
        validate_core(renders["kind"].get("Deployment", name).document, "1.33")


def test_a_simulator_on_an_rdma_platform_gets_no_capabilities() -> None:
    result = render_config(
        {
            "platform": "onprem",
            "name": "s",
            "model": {"name": "m", "uri": "hf://org/m", "engine": "simulator"},
            "prefill": {"accelerator": {"count": 0}},
            "decode": {"accelerator": {"count": 0}},
            "onprem": {
                "gpuOperator": {"install": False, "version": "v26.7.0", "namespace": "gpu-operator"},
                "rdmaNetworks": [{"name": "roce-0", "master": "ens1f0np0", "ipamRange": "192.168.100.0/24"}],
            },
        }
    )
    engine, _pod = engine_and_pod(result, "s-decode")
    assert engine["securityContext"] == HARDENED
    assert not [r for r in engine["resources"]["limits"] if r.startswith("rdma/")]


def test_vllm_engines_keep_the_capabilities_rdma_needs(renders: dict[str, RenderResult]) -> None:
    engine, _pod = engine_and_pod(renders["onprem"], "llama-8b-decode")
    assert engine["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["IPC_LOCK"]},
    }
