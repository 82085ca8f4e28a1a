"""Two real vLLM CPU servers with NixlConnector behind the P/D sidecar: the KV really moves.

The prefill server and the decode server run the tiny model with ``NixlConnector`` (UCX over
loopback, KV buffers in CPU memory) and distinct NIXL side-channel ports. Requests go to the
sidecar with ``x-prefiller-host-port`` naming the prefill server, exactly as the EPP sends them.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localrun.process import ManagedProcess, free_port, http_ok
from sidecar.launch import sidecar_command
from tests.support import requests_shim as http
from tests.support.nixl_wire import PREFILL_KV_REQUEST
from tests.support.vllm_server import SERVED_NAME, vllm_process

pytestmark = pytest.mark.slow

NIXL = {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cpu"}
WORDS = ["route", "cache", "block", "token", "prefill", "decode", "engine", "sidecar", "gateway", "picker"]


def metric(port: int, name: str) -> float:
    text = http.request("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.fixture(scope="module")
def pd(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    logs = tmp_path_factory.mktemp("pd-nixl")
    ports = {
        "prefill": free_port(),
        "decode": free_port(),
        "sidecar": free_port(),
        "sidecar_metrics": free_port(),
    }
    # One core each; distinct side channels (both default to 5600 otherwise and collide on one host).
    prefill = vllm_process(
        vllm_python,
        tiny_model,
        ports["prefill"],
        name="vllm-prefill",
        cpu="0",
        kv_transfer_config=NIXL,
        # The address the sidecar sent the prefill to, as the stacks set it (the pod IP): the sidecar
        # ignores transfer params naming any other host (vLLM's default is "localhost").
        env={"VLLM_NIXL_SIDE_CHANNEL_PORT": str(free_port()), "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1"},
        log_dir=logs,
    )
    decode = vllm_process(
        vllm_python,
        tiny_model,
        ports["decode"],
        name="vllm-decode",
        cpu="1",
        kv_transfer_config=NIXL,
        env={"VLLM_NIXL_SIDE_CHANNEL_PORT": str(free_port()), "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1"},
        log_dir=logs,
    )
    sidecar = ManagedProcess(
        sidecar_command(
            ports["sidecar"],
            ports["decode"],
            "--metrics-port",
            str(ports["sidecar_metrics"]),
            "--prefill-timeout",
            "60",
        ),
        ready=http_ok(f"http://127.0.0.1:{ports['sidecar']}/health"),
        name="sidecar",
        log_dir=logs,
    )
    with prefill, decode, sidecar:
        yield ports


def pd_request(pd: dict[str, int], prompt: str) -> http.Reply:
    return http.request(
        "POST",
        f"http://127.0.0.1:{pd['sidecar']}/v1/completions",
        {"model": SERVED_NAME, "prompt": prompt, "max_tokens": 8, "ignore_eos": True},
        headers={"x-prefiller-host-port": f"127.0.0.1:{pd['prefill']}"},
        timeout=180,
    )


def unique_prompt(salt: int) -> str:
    return uuid.uuid4().hex + " " + " ".join(WORDS[(salt + i) % len(WORDS)] for i in range(400))


def test_kv_moves_from_prefill_to_decode(pd):
    # The first transfer between two engines runs the NIXL handshake; on a loaded 2-core host it
    # can exceed vLLM's 5 s handshake timeout, and the sidecar then reruns the request locally.
    # Warm the pair up so the measured requests below show the steady state.
    assert pd_request(pd, unique_prompt(99)).status == 200
    fallbacks_before = metric(pd["sidecar_metrics"], "llmd_sidecar_prefill_fallbacks_total")
    hits_before = metric(pd["decode"], "vllm:external_prefix_cache_hits_total")
    transfers_before = metric(pd["decode"], "vllm:nixl_xfer_time_seconds_count")
    failures_before = metric(pd["decode"], "vllm:nixl_num_failed_transfers_total")
    prompt_tokens = 0
    for round_ in range(3):
        started = time.monotonic()
        reply = pd_request(pd, unique_prompt(round_))
        assert reply.status == 200, reply.body[:500]
        body = reply.json()
        assert body["usage"]["completion_tokens"] == 8
        prompt_tokens += body["usage"]["prompt_tokens"]
        print(
            f"round {round_}: {body['usage']['prompt_tokens']} prompt tokens, "
            f"{time.monotonic() - started:.2f} s through the sidecar"
        )

    assert metric(pd["sidecar_metrics"], "llmd_sidecar_prefill_fallbacks_total") == fallbacks_before
    assert metric(pd["decode"], "vllm:nixl_xfer_time_seconds_count") - transfers_before == 3
    assert metric(pd["decode"], "vllm:nixl_num_failed_transfers_total") == failures_before
    # Every prompt token on the decode side came over NIXL, none was computed there.
    assert metric(pd["decode"], "vllm:external_prefix_cache_hits_total") - hits_before == prompt_tokens


def test_simulator_kv_transfer_params_match_vllm(pd):
    """The simulator's prefill answer carries the same kv_transfer_params fields as vLLM's."""
    request = {
        "model": SERVED_NAME,
        "prompt": "x " * 300,
        "max_tokens": 1,
        "stream": False,
        "kv_transfer_params": PREFILL_KV_REQUEST,
    }
    real = http.request("POST", f"http://127.0.0.1:{pd['prefill']}/v1/completions", request).json()
    sim_port = free_port()
    with ManagedProcess(
        [
            sys.executable,
            "-m",
            "simulator",
            "--model",
            SERVED_NAME,
            "--port",
            str(sim_port),
            "--role",
            "prefill",
        ],
        ready=http_ok(f"http://127.0.0.1:{sim_port}/health"),
        name="sim",
    ):
        sim = http.request("POST", f"http://127.0.0.1:{sim_port}/v1/completions", request).json()
    real_kv, sim_kv = real["kv_transfer_params"], sim["kv_transfer_params"]
    assert set(sim_kv) == set(real_kv)
    assert {k: type(v) for k, v in sim_kv.items() if v is not None} == {
        k: type(v) for k, v in real_kv.items() if v is not None and k in sim_kv and sim_kv[k] is not None
    }
    assert isinstance(real_kv["remote_block_ids"][0], list) and isinstance(
        sim_kv["remote_block_ids"][0], list
    )


def test_every_vllm_metric_the_monitoring_reads_is_on_real_vllm(pd):
    """Dashboards, alerts, recording rules and scalers read these from real vLLM (here with the
    NixlConnector, whose transfer metrics the P/D dashboard shows): each is served by its /metrics."""
    from tests.support.observability import vllm_names_used
    from tests.support.promql_names import exposed_names

    served = set()
    for role in ("prefill", "decode"):
        served |= exposed_names(http.request("GET", f"http://127.0.0.1:{pd[role]}/metrics").body.decode())
    used = vllm_names_used()
    assert len(used) >= 12
    assert sorted(used - served) == []
