"""PodNetworking: what a platform hands the model-server pools, and how the pools use it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pulumi_llmd.components.modelserver import Role, engine_container
from pulumi_llmd.components.platform import PodNetworking
from pulumi_llmd.config import StackConfig, parse_stack_config
from tests.support.stacks import kind_config, model_server_spec

VLLM_MODEL = {"name": "tiny", "uri": "hf://org/tiny", "engine": "vllm"}


def vllm_config(**overrides: Any) -> StackConfig:
    return parse_stack_config(kind_config(model=VLLM_MODEL, **overrides), has_hf_token=True)


def kv_transfer(config: StackConfig, role: Role, networking: PodNetworking) -> dict[str, Any] | None:
    args = engine_container(model_server_spec(config, role, networking), leader=True)["args"]
    if "--kv-transfer-config" not in args:
        return None
    parsed: dict[str, Any] = json.loads(args[args.index("--kv-transfer-config") + 1])
    return parsed


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_pd_pools_pass_the_platforms_nixl_backends_in_order(role: Role) -> None:
    networking = PodNetworking(nixl_backends=("LIBFABRIC", "UCX"))
    assert kv_transfer(vllm_config(), role, networking) == {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"backends": ["LIBFABRIC", "UCX"]},
    }


def test_no_backends_keeps_vllms_default() -> None:
    assert kv_transfer(vllm_config(), "decode", PodNetworking()) == {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_both",
    }


def test_backends_do_not_turn_on_kv_transfer_without_pd() -> None:
    config = vllm_config(prefill={"enabled": False})
    assert kv_transfer(config, "decode", PodNetworking(nixl_backends=("LIBFABRIC",))) is None


def test_a_bare_string_is_refused_rather_than_split_into_letters() -> None:
    with pytest.raises(TypeError, match="must be a tuple of names, got 'LIBFABRIC'"):
        PodNetworking(nixl_backends="LIBFABRIC")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        (("",), r"item \[0\] must not be blank"),  # every config list's rule, checked first
        (("LIB FABRIC",), "'LIB FABRIC' is not a NIXL backend name"),
        (("UCX", "UCX"), "lists a backend twice"),
    ],
)
def test_bad_backend_names_are_named(backends: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PodNetworking(nixl_backends=backends)


@pytest.mark.parametrize(
    ("networking", "problem"),
    [
        ({"nodeSelector": {"bad key!": "x"}}, "podNetworking.nodeSelector label key 'bad key!'"),
        ({"nodeSelector": {"pool": "-gpu-"}}, "podNetworking.nodeSelector label 'pool' has an invalid value"),
        ({"annotations": {"k8s.v1.cni.cncf.io networks": "[]"}}, "podNetworking.annotations annotation key"),
        (
            {"resources": {"rdma/ib": "one"}},
            "podNetworking.resources resource 'rdma/ib' must be a whole count",
        ),
        (
            {"resources": {"rdma/ib": "0.5"}},
            "podNetworking.resources resource 'rdma/ib' must be a whole count",
        ),
        (
            {"resources": {"ib": "1"}},
            "podNetworking.resources resource name 'ib' is not an extended resource",
        ),
        ({"env": {"NCCL=1": "x"}}, "podNetworking.env environment variable name 'NCCL=1'"),
        ({"singleNodeEnv": {"A B": "x"}}, "podNetworking.singleNodeEnv environment variable name 'A B'"),
        ({"multiNode": {"env": {"": "x"}}}, "podNetworking.multiNode.env environment variable name ''"),
        ({"capabilities": ["ipc_lock"]}, "podNetworking.capabilities 'ipc_lock' is not a Linux capability"),
    ],
)
def test_hand_written_pod_networking_is_checked_like_the_api_server_would(
    networking: dict[str, Any], problem: str
) -> None:
    """LlmdStack's podNetworking arg reaches the pod template as is: what the API server would refuse
    (mid-update, once the Deployment is created) is refused before anything is registered, naming the key."""
    from pulumi_llmd.components.stack import parse_llmd_stack_args
    from pulumi_llmd.config import ConfigError

    args = {"model": {"name": "m", "uri": "pvc://models/m"}, "podNetworking": networking}
    with pytest.raises(ConfigError) as raised:
        parse_llmd_stack_args(args)
    (found,) = raised.value.problems
    assert f"{found.path} {found.message}".startswith(problem)
    ok = {
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h200-141gb"},
        "annotations": {"k8s.v1.cni.cncf.io/networks": "[]"},
        "resources": {"rdma/ib": "1", "vpc.amazonaws.com/efa": "32"},
        "env": {"NCCL_IB_HCA": "mlx5"},
        "capabilities": ["IPC_LOCK"],
    }
    parse_llmd_stack_args({**args, "podNetworking": ok})
