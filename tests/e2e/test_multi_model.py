"""Two models and LoRA adapters behind one real Envoy: the body router (``python -m bbr``) reads each
request's model and sets the header the per-model routes match, each model's own ``python -m epp``
picks among that model's simulated vLLM pods.

Everything the processes are given comes from the stack's own renderers, so this also checks what a
cluster would run: the body router's table (``routing_table``), each EPP's ``--served-models`` and
EndpointPickerConfig (with adapter affinity), and the InferenceModelRewrite rules (fed to the EPP's
static discovery, which reads the same rule shape as the CRD).

    llama: 2 simulator pods, adapters sql-v1 and sql-v2 (one GPU slot each: --max-loras 1),
           "sql" split 90/10 between them
    qwen:  1 simulator pod
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localrun import ManagedProcess, envoy_binary, epp_command, free_port, grpc_ok, http_ok
from localrun.multimodel import BASE_MODEL_HEADER, ModelPool, MultiModelGateway, bbr_command
from pulumi_llmd.components.bodyrouter import routing_table
from pulumi_llmd.components.inputs import BodyRouterArgs, EndpointPickerInputs, RoutedModel
from pulumi_llmd.components.picker import model_rewrite_manifest, picker_config
from pulumi_llmd.config.models import ModelConfig

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)

START_TIMEOUT = 90.0
# Let the EPPs' scrapers (50 ms period) see the pods' LoRA metrics change.
SCRAPE_SETTLE = 0.5
# Five scrape periods: long enough for the EPP to read a queue emptied by a finished request.
QUEUE_SETTLE = 0.25
# Simulated timing: fast, but a long request really runs for a while.
SIM_TIMING = ["--request-overhead", "0", "--tokenize-per-token", "0", "--step-overhead", "0.002"]

LLAMA = ModelConfig.model_validate(
    {
        "name": "llama",
        "uri": "hf://sim/llama",
        "engine": "simulator",
        "lora": {
            "maxLoras": 1,
            "adapters": [
                {"name": "sql-v1", "uri": "hf://sim/sql-v1"},
                {"name": "sql-v2", "uri": "hf://sim/sql-v2"},
            ],
        },
        "rewrites": [
            {
                "model": "sql",
                "targets": [{"model": "sql-v1", "weight": 90}, {"model": "sql-v2", "weight": 10}],
            }
        ],
    }
)
QWEN = ModelConfig.model_validate({"name": "qwen", "uri": "hf://sim/qwen", "engine": "simulator"})


@dataclass
class Pod:
    name: str
    port: int
    log: Path

    def received(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class MultiStack:
    gateway: MultiModelGateway
    pods: dict[str, list[Pod]]
    router_metrics_port: int
    epp_metrics_ports: dict[str, int]

    def epp_scrape_state(self, model: str) -> str:
        """The EPP's scrape counters and per-pod LoRA view, for a routing assertion's message."""
        url = f"http://127.0.0.1:{self.epp_metrics_ports[model]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as page:
            lines = page.read().decode().splitlines()
        return "\n".join(line for line in lines if "scrape" in line and not line.startswith("#"))

    def call(
        self,
        body: bytes | dict[str, Any] | None,
        path: str = "/v1/completions",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        payload = json.dumps(body).encode() if isinstance(body, dict) else body
        connection = http.client.HTTPConnection("127.0.0.1", self.gateway.config.listen_port, timeout=30)
        try:
            connection.request(
                "POST" if payload is not None else "GET",
                path,
                body=payload,
                headers={"content-type": "application/json", **(headers or {})},
            )
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def served_by(self, model: str) -> dict[str, list[str]]:
        """The model names each pod of ``model`` received, by pod."""
        return {pod.name: [r["body"]["model"] for r in pod.received()] for pod in self.pods[model]}

    def clear(self) -> None:
        for pods in self.pods.values():
            for pod in pods:
                pod.log.unlink(missing_ok=True)


def picker(model: ModelConfig, pool: str) -> EndpointPickerInputs:
    """What the stack hands the model's EndpointPicker."""
    return EndpointPickerInputs.model_validate(
        {
            "pool_name": pool,
            "namespace": "llm-d",
            "served_models": model.served_names,
            "selector": {"llm-d.ai/model": model.label_value},
            "disaggregated": False,
            "lora": model.lora.enabled,
            "rewrites": [r.model_dump() for r in model.rewrites],
        }
    )


def endpoints_document(pods: list[Pod], rewrites: dict[str, Any] | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "endpoints": [{"name": p.name, "address": "127.0.0.1", "port": p.port, "labels": {}} for p in pods]
    }
    if rewrites is not None:
        # The InferenceModelRewrite the stack renders, as the EPP's static discovery reads it.
        document["modelRewrites"] = [
            {"model": rule["matches"][0]["model"]["value"], "targets": rule["targets"]}
            for rule in rewrites["spec"]["rules"]
        ]
    return document


def start_pod(name: str, model: ModelConfig, log_dir: Path) -> tuple[Pod, ManagedProcess]:
    port = free_port()
    pod = Pod(name, port, log_dir / f"{name}.requests.jsonl")
    cmd = [sys.executable, "-m", "simulator", "--port", str(port), "--model", model.name, *SIM_TIMING]
    cmd += ["--request-log", str(pod.log)]
    if model.lora.enabled:
        adapters = [f"{a.name}={a.uri}" for a in model.lora.adapters]
        cmd += ["--enable-lora", "--max-loras", str(model.lora.max_loras or 1), "--lora-modules", *adapters]
    process = ManagedProcess(
        cmd,
        ready=http_ok(f"http://127.0.0.1:{port}/health"),
        name=name,
        log_dir=log_dir,
        ready_timeout=START_TIMEOUT,
    )
    return pod, process


@contextlib.contextmanager
def multi_stack(log_dir: Path, *, router: bool = True, **gateway_options: Any) -> Iterator[MultiStack]:
    """Pods, an EPP per model, the body router (unless ``router`` is False: nothing listens on its
    port) and the gateway; everything stopped on exit."""
    processes: list[ManagedProcess] = []
    try:
        pods: dict[str, list[Pod]] = {}
        pools: list[ModelPool] = []
        epp_metrics_ports: dict[str, int] = {}
        routed: list[RoutedModel] = []
        for model, replicas in ((LLAMA, 2), (QWEN, 1)):
            pool_name = f"mm-{model.name}"
            pods[model.name] = []
            for index in range(replicas):
                pod, process = start_pod(f"{model.name}-{index}", model, log_dir)
                processes.append(process.start())
                pods[model.name].append(pod)
            inputs = picker(model, pool_name)
            endpoints = log_dir / f"{pool_name}-endpoints.json"
            endpoints.write_text(
                json.dumps(endpoints_document(pods[model.name], model_rewrite_manifest(inputs)))
            )
            grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
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
                name=f"epp-{model.name}",
                log_dir=log_dir,
                ready_timeout=START_TIMEOUT,
            )
            processes.append(epp.start())
            epp_metrics_ports[model.name] = metrics_port
            pools.append(
                ModelPool(model.name, grpc_port, tuple(f"127.0.0.1:{p.port}" for p in pods[model.name]))
            )
            routed.append(RoutedModel(model=model.name, names=model.served_names, pool_name=pool_name))
        router_port, router_health, router_metrics = free_port(), free_port(), free_port()
        if router:
            table = log_dir / "routes.yaml"
            args = BodyRouterArgs(instance="mm", namespace="llm-d", provider="istio", models=routed)
            table.write_text(routing_table(args))
            bbr = ManagedProcess(
                bbr_command(table, router_port, router_health, router_metrics),
                ready=grpc_ok(router_health),
                name="bbr",
                log_dir=log_dir,
                ready_timeout=START_TIMEOUT,
            )
            processes.append(bbr.start())
        gateway = MultiModelGateway(
            listen_port=free_port(),
            router_port=router_port,
            pools=tuple(pools),
            log_dir=log_dir,
            **gateway_options,
        )
        gateway.start()
        try:
            yield MultiStack(gateway, pods, router_metrics, epp_metrics_ports)
        finally:
            gateway.stop()
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiStack]:
    with multi_stack(tmp_path_factory.mktemp("multi-model")) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").clear()
    yield


def completion(model: str, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": 2, **extra}


def test_each_model_reaches_only_its_own_pods(stack: MultiStack) -> None:
    for index in range(4):
        assert stack.call(completion("qwen", f"q{index}")).status == 200
        assert stack.call(completion("llama", f"l{index}")).status == 200
    llama, qwen = stack.served_by("llama"), stack.served_by("qwen")
    assert sorted(m for models in llama.values() for m in models) == ["llama"] * 4
    assert qwen == {"qwen-0": ["qwen"] * 4}


def test_an_adapter_is_served_by_its_base_models_pool_under_its_own_name(stack: MultiStack) -> None:
    reply = stack.call(completion("sql-v2", "SELECT 1"))
    assert reply.status == 200 and reply.json()["model"] == "sql-v2"
    assert [m for models in stack.served_by("llama").values() for m in models] == ["sql-v2"]
    assert stack.served_by("qwen") == {"qwen-0": []}


def test_a_rewrite_name_is_split_by_weight_and_answered_under_the_name_sent(stack: MultiStack) -> None:
    replies = [stack.call(completion("sql", f"split {i}")) for i in range(30)]
    assert {r.status for r in replies} == {200}
    assert {r.json()["model"] for r in replies} == {"sql"}  # the EPP rewrites the answer back
    sent = Counter(m for models in stack.served_by("llama").values() for m in models)
    assert set(sent) <= {"sql-v1", "sql-v2"} and sum(sent.values()) == 30
    # 90/10: sql-v1 carries most of them (P(sql-v1 <= 18 of 30) < 1e-4).
    assert sent["sql-v1"] > 18, sent


def test_chat_requests_route_by_body_too(stack: MultiStack) -> None:
    body = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    reply = stack.call(body, path="/v1/chat/completions")
    assert reply.status == 200 and reply.json()["model"] == "qwen"
    assert [r["path"] for r in stack.pods["qwen"][0].received()] == ["/v1/chat/completions"]


def test_a_client_cannot_pick_another_models_pool(stack: MultiStack) -> None:
    reply = stack.call(completion("llama", "steer"), headers={BASE_MODEL_HEADER: "qwen"})
    assert reply.status == 200
    assert stack.served_by("qwen") == {"qwen-0": []}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (completion("gpt-9"), 404, 'model "gpt-9" is not served by this gateway'),
        (b"{not json", 400, "not valid JSON"),
        (b'{"prompt": "no model"}', 400, "no 'model' field"),
        (b'{"model": "llama", "prompt": "\\ud800"}', 400, "lone UTF-16 surrogate"),
    ],
)
def test_unknown_models_and_bad_bodies_get_the_routers_4xx(
    stack: MultiStack, body: Any, status: int, message: str
) -> None:
    reply = stack.call(body)
    assert reply.status == status, reply.body[:300]
    assert message in reply.json()["error"]["message"]
    assert all(not pod.received() for pods in stack.pods.values() for pod in pods)


def test_the_gateway_lists_every_model_and_adapter(stack: MultiStack) -> None:
    reply = stack.call(None, path="/v1/models")
    assert reply.status == 200
    assert [m["id"] for m in reply.json()["data"]] == ["llama", "sql-v1", "sql-v2", "sql", "qwen"]


def test_adapter_affinity_follows_the_pods_real_lora_metrics(stack: MultiStack) -> None:
    """One adapter slot per pod: while sql-v1 runs on one pod, more sql-v1 requests go there (the
    pod reports it in vllm:lora_requests_info) and sql-v2 requests go to the other pod (the busy
    one has no free slot)."""
    long = completion("sql-v1", "a long answer", max_tokens=4000, ignore_eos=True, stream=True)
    connection = http.client.HTTPConnection("127.0.0.1", stack.gateway.config.listen_port, timeout=60)
    try:
        connection.request("POST", "/v1/completions", json.dumps(long), {"content-type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        response.read(64)  # it is running
        time.sleep(SCRAPE_SETTLE)
        [busy] = [name for name, models in stack.served_by("llama").items() if models]
        for index in range(4):
            # Each request sits in the pod's waiting queue until the simulator's next engine step
            # picks it up; a scrape that lands in those few milliseconds shows vllm:num_requests_waiting
            # 1 there, and queue-scorer (weight 2) then outweighs lora-affinity (weight 1) for the next
            # request, as it would with real vLLM. Wait for the scrapes to see every queue empty, so
            # the adapters are the only difference between the pods.
            assert stack.call(completion("sql-v1", f"same adapter {index}")).status == 200
            time.sleep(QUEUE_SETTLE)
            assert stack.call(completion("sql-v2", f"other adapter {index}")).status == 200
            time.sleep(QUEUE_SETTLE)
        served = stack.served_by("llama")
        other = next(name for name in served if name != busy)
        assert served[busy] == ["sql-v1"] * 5, f"{served}\nEPP scrapes:\n{stack.epp_scrape_state('llama')}"
        assert served[other] == ["sql-v2"] * 4, served
    finally:
        connection.close()


def test_without_the_router_fail_close_refuses_and_fail_open_reaches_the_first_model(tmp_path: Path) -> None:
    """The router's failure mode, as the stack renders it: FailClose (default) answers an error while
    the router is unreachable; FailOpen lets requests through without the header, to the first
    model's pool, whose EPP still refuses other models' names. BUFFERED: Envoy keeps the body while
    the ext_proc call fails (in FULL_DUPLEX_STREAMED, a failed-open body request may still 500)."""
    from epp.server.state import BodyMode

    with multi_stack(tmp_path / "closed", router=False, mode=BodyMode.BUFFERED) as closed:
        reply = closed.call(completion("llama"))
        assert reply.status >= 500 and not any(p.received() for ps in closed.pods.values() for p in ps)
    with multi_stack(
        tmp_path / "open", router=False, mode=BodyMode.BUFFERED, router_fail_open=True
    ) as opened:
        assert opened.call(completion("llama", "through")).status == 200
        assert [m for ms in opened.served_by("llama").values() for m in ms] == ["llama"]
        refused = opened.call(completion("qwen"))
        assert refused.status == 404 and "not served by this pool" in refused.json()["error"]["message"]
