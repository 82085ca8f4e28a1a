"""LoRA with real vLLM 0.32 on CPU: a tiny adapter built locally for the tiny model
(tools/build_tiny_lora.py), served with ``--enable-lora --lora-modules`` behind a real Envoy and
``python -m epp`` configured as the stack renders it (adapter names in ``--served-models``, the
lora-affinity-scorer, an InferenceModelRewrite rule in the static discovery file).

Checks: requests naming the adapter work through the EPP and really use it (greedy output differs
from the base model's); a rewrite name is answered under the name sent; an adapter loaded at run
time (VLLM_ALLOW_RUNTIME_LORA_UPDATING) is served once loaded; ``vllm:lora_requests_info`` moves
while an adapter's request runs and the EPP's parser reads it; and the simulator's LoRA surface
(``/v1/models`` cards, the load/unload answers, the metric's labels) matches vLLM's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.scrape.parser import parse_metrics
from localrun import EnvoyGateway, ManagedProcess, epp_command, free_port, grpc_ok, http_ok
from pulumi_llmd.components.inputs import EndpointPickerInputs
from pulumi_llmd.components.picker import model_rewrite_manifest, picker_config
from pulumi_llmd.config.models import ModelConfig
from tests.slow.conftest import ROOT
from tests.support import requests_shim as http
from tests.support.vllm_server import SERVED_NAME, vllm_process

pytestmark = pytest.mark.slow

LORA_DIR = ROOT / "build" / "tiny-lora"
PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def adapters(vllm_python: Path, tiny_model: Path) -> Path:
    subprocess.run(
        [
            str(vllm_python),
            str(ROOT / "tools" / "build_tiny_lora.py"),
            str(tiny_model),
            str(LORA_DIR),
            "--names",
            "sql",
            "chat",
        ],
        check=True,
        timeout=300,
        cwd=ROOT,
    )
    return LORA_DIR


def lora_flags(adapters: Path) -> list[str]:
    return [
        "--enable-lora",
        "--max-loras",
        "1",
        "--max-lora-rank",
        "8",
        "--lora-modules",
        f"sql={adapters / 'sql'}",
    ]


MODEL = ModelConfig.model_validate(
    {
        "name": SERVED_NAME,
        "uri": "pvc://models/tiny",
        "lora": {
            "maxLoras": 1,
            "runtimeLoading": True,
            "adapters": [{"name": "sql", "uri": "pvc://l/sql"}, {"name": "chat"}],
        },
        "rewrites": [{"model": "sql-latest", "targets": [{"model": "sql"}]}],
    }
)


@pytest.fixture(scope="module")
def served(
    vllm_python: Path, tiny_model: Path, adapters: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("lora-vllm")
    port = free_port()
    inputs = EndpointPickerInputs.model_validate(
        {
            "pool_name": "tiny",
            "namespace": "llm-d",
            "served_models": MODEL.served_names,
            "selector": {"llm-d.ai/model": "tiny"},
            "disaggregated": False,
            "lora": True,
            "rewrites": [r.model_dump() for r in MODEL.rewrites],
        }
    )
    rewrite = model_rewrite_manifest(inputs)
    assert rewrite is not None
    endpoints = logs / "endpoints.json"
    endpoints.write_text(
        json.dumps(
            {
                "endpoints": [{"name": "vllm-0", "address": "127.0.0.1", "port": port, "labels": {}}],
                "modelRewrites": [
                    {"model": rule["matches"][0]["model"]["value"], "targets": rule["targets"]}
                    for rule in rewrite["spec"]["rules"]
                ],
            }
        )
    )
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    vllm = vllm_process(
        vllm_python,
        tiny_model,
        port,
        name="vllm-lora",
        log_dir=logs,
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
        extra_args=lora_flags(adapters),
    )
    epp = ManagedProcess(
        epp_command(
            endpoints,
            grpc_port,
            health_port,
            metrics_port,
            "--served-models",
            ",".join(inputs.served_models),
            "--config-text",
            picker_config(inputs),
        ),
        ready=grpc_ok(health_port),
        name="epp",
        log_dir=logs,
        ready_timeout=120,
    )
    with (
        vllm,
        epp,
        EnvoyGateway(free_port(), grpc_port, [f"127.0.0.1:{port}"], log_dir=logs) as gateway,
    ):
        # Before any request: what a new or restarted pod shows (the EPP only scrapes /metrics).
        fresh = http.request("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
        yield {
            "gateway": gateway.url,
            "vllm": f"http://127.0.0.1:{port}",
            "adapters": adapters,
            "fresh_metrics": fresh,
        }


def complete(url: str, model: str, **extra: Any) -> http.Reply:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **extra}
    return http.request("POST", url + "/v1/completions", body)


def test_the_adapter_works_through_the_epp_and_changes_the_output(served: dict[str, Any]) -> None:
    base, adapter = complete(served["gateway"], SERVED_NAME), complete(served["gateway"], "sql")
    assert base.status == adapter.status == 200, (base.body[:300], adapter.body[:300])
    assert adapter.json()["model"] == "sql"
    assert adapter.json()["choices"][0]["text"] != base.json()["choices"][0]["text"]
    # The same through the gateway as straight to vLLM (greedy): the EPP only routed it.
    direct = complete(served["vllm"], "sql")
    assert direct.json()["choices"][0]["text"] == adapter.json()["choices"][0]["text"]


def test_a_rewrite_name_reaches_the_adapter_and_is_answered_under_its_own_name(
    served: dict[str, Any],
) -> None:
    rewritten, adapter = complete(served["gateway"], "sql-latest"), complete(served["gateway"], "sql")
    assert rewritten.status == 200 and rewritten.json()["model"] == "sql-latest"
    assert rewritten.json()["choices"][0]["text"] == adapter.json()["choices"][0]["text"]


def test_a_run_time_adapter_is_served_once_loaded(served: dict[str, Any]) -> None:
    # The EPP knows the name (it is in the stack's served models), vLLM does not have it yet.
    before = complete(served["gateway"], "chat")
    assert before.status == 404 and "does not exist" in before.json()["error"]["message"]
    path = str(served["adapters"] / "chat")
    loaded = http.request(
        "POST", served["vllm"] + "/v1/load_lora_adapter", {"lora_name": "chat", "lora_path": path}
    )
    assert loaded.status == 200, loaded.body
    after = complete(served["gateway"], "chat")
    assert after.status == 200 and after.json()["model"] == "chat"


def test_the_lora_metric_moves_and_the_epps_parser_reads_it(served: dict[str, Any]) -> None:
    def scrape() -> str:
        return http.request("GET", served["vllm"] + "/metrics").body.decode()

    results: list[http.Reply] = []

    def run_long() -> None:
        # Long enough to be seen running by the polls below; a generous timeout for a busy machine.
        body = {"model": "sql", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "temperature": 0}
        results.append(http.request("POST", served["gateway"] + "/v1/completions", body, timeout=600))

    long = threading.Thread(target=run_long)
    long.start()
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "sql" not in seen:
        seen = set(parse_metrics(scrape(), now=time.monotonic()).running_loras)
        time.sleep(0.1)
    assert seen == {"sql"}
    metrics = parse_metrics(scrape(), now=time.monotonic())
    assert metrics.max_loras == 1 and metrics.waiting_loras == frozenset({"sql"})
    long.join(timeout=600)
    assert [r.status for r in results] == [200]
    time.sleep(1.0)
    assert parse_metrics(scrape(), now=time.monotonic()).running_loras == frozenset()


def _lora_labels(text: str) -> set[str]:
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:lora_requests_info":
            return {label for sample in family.samples for label in sample.labels}
    return set()


def _card_shape(card: dict[str, Any]) -> dict[str, Any]:
    return {key: (type(value).__name__ if key != "permission" else len(value)) for key, value in card.items()}


def test_the_simulator_serves_loras_with_vllms_shapes(served: dict[str, Any], tmp_path: Path) -> None:
    sim_port = free_port()
    cmd = [sys.executable, "-m", "simulator", "--model", SERVED_NAME, "--port", str(sim_port)]
    sim = ManagedProcess(
        [*cmd, *lora_flags(served["adapters"])],
        ready=http_ok(f"http://127.0.0.1:{sim_port}/health"),
        name="sim-lora",
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
        log_dir=tmp_path,
    )
    with sim:
        sim_url = f"http://127.0.0.1:{sim_port}"
        real_cards = {c["id"]: c for c in http.request("GET", served["vllm"] + "/v1/models").json()["data"]}
        sim_cards = {c["id"]: c for c in http.request("GET", sim_url + "/v1/models").json()["data"]}
        assert _card_shape(sim_cards["sql"]) == _card_shape(real_cards["sql"])
        assert (sim_cards["sql"]["parent"], real_cards["sql"]["parent"]) == (SERVED_NAME, SERVED_NAME)
        # vLLM's run-time API: the same statuses, messages and error types.
        for path, body in (
            ("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": "/x"}),
            ("/v1/load_lora_adapter", {"lora_name": SERVED_NAME, "lora_path": "/x"}),
            ("/v1/unload_lora_adapter", {"lora_name": "never-loaded"}),
        ):
            real, simulated = (
                http.request("POST", served["vllm"] + path, body),
                http.request("POST", sim_url + path, body),
            )
            assert simulated.status == real.status, (path, body, real.body)
            assert simulated.json()["error"]["message"] == real.json()["error"]["message"]
            assert simulated.json()["error"]["type"] == real.json()["error"]["type"]
        # A server that has run nothing declares the LoRA family without a sample: the EPP reads
        # max_lora 0 from both, which lora-affinity-scorer takes as room, not as a full server.
        sim_fresh = http.request("GET", sim_url + "/metrics").body.decode()
        for fresh in (served["fresh_metrics"], sim_fresh):
            assert "# TYPE vllm:lora_requests_info gauge" in fresh
            assert "vllm:lora_requests_info{" not in fresh
            assert parse_metrics(fresh, now=0.0).max_loras == 0
        # Both must have run a request to show a sample (run alone, no other test sent vLLM one).
        complete(sim_url, "sql")
        complete(served["vllm"], "sql")
        real_text = http.request("GET", served["vllm"] + "/metrics").body.decode()
        sim_text = http.request("GET", sim_url + "/metrics").body.decode()
        assert (
            _lora_labels(sim_text)
            == _lora_labels(real_text)
            == {
                "max_lora",
                "running_lora_adapters",
                "waiting_lora_adapters",
            }
        )
