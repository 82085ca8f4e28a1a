"""The stack's monitoring against a real Prometheus scraping a real EPP, simulators and the P/D sidecar.

Local processes stand in for the rendered pods (Envoy -> ``python -m epp`` with the P/D profiles ->
the sidecar in front of a simulated decode vLLM, a simulated prefill vLLM beside it). The stack's
PodMonitors become Prometheus scrape jobs with the Prometheus Operator's own relabelings
(tests/support/prometheus.py), its PrometheusRule is loaded as is, and 1 s scrape and evaluation
intervals (plus ``alerts.forDuration: 2s``) make the whole run take tens of seconds. Then:

- every metric an alert, recording rule, dashboard or scaler names is on the live /metrics pages;
- every recording rule, alert expression, dashboard query and KEDA query returns a vector (KEDA's and
  prometheus-adapter's exactly one series), with the labels the rules group by;
- each alert fires when its condition is forced: a saturated pool and a growing queue (a flood on a
  decode server that runs two sequences at a time), TTFT over the objective (the same flood), P/D
  fallbacks and EPP scrape errors (the endpoints file points the prefill at a closed port and adds a
  dead endpoint), no endpoints (an empty endpoints file), a stopped model server and a stopped EPP.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from epp.config.samples import pd_config
from localrun import EnvoyGateway, ManagedProcess, envoy_binary, epp_command, free_port, grpc_ok, http_ok
from localrun.stack import LocalEndpoint, write_endpoints_file
from pulumi_llmd.components.autoscaling import prometheus_adapter_rules
from render.engine import RenderResult
from sidecar.launch import sidecar_command
from tests.support.observability import MODEL, rendered
from tests.support.prometheus import LocalPod, Prometheus, prometheus_binary, scrape_job
from tests.support.promql_names import exposed_names, expressions, metric_names, recorded

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)
if prometheus_binary() is None:  # pragma: no cover - .ci/run installs it
    pytest.skip("prometheus not installed (apt-get install prometheus)", allow_module_level=True)

NAMESPACE, STACK = "llm-d", "t"
LONG_PROMPT = "Summarise the incident report below for the on-call engineer. " * 48


@dataclass
class Ports:
    prefill: int
    decode: int
    sidecar: int
    sidecar_metrics: int
    grpc: int
    health: int
    epp_metrics: int


@dataclass
class Running:
    rendered: RenderResult
    prometheus: Prometheus
    gateway: EnvoyGateway
    ports: Ports
    endpoints_file: Path
    processes: dict[str, ManagedProcess]

    def post(self, body: dict[str, Any], timeout: float = 60) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.gateway.config.listen_port, timeout=timeout)
        try:
            connection.request(
                "POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def endpoints(
        self, prefill_port: int | None = None, extra_dead: bool = False, empty: bool = False
    ) -> None:
        """Rewrite the EPP's endpoints file (it re-reads it on change)."""
        entries: list[LocalEndpoint] = []
        if not empty:
            entries = [
                LocalEndpoint(
                    "prefill-0",
                    prefill_port or self.ports.prefill,
                    metrics_port=self.ports.prefill,
                    labels={"llm-d.ai/role": "prefill"},
                ),
                LocalEndpoint(
                    "decode-0",
                    self.ports.sidecar,
                    metrics_port=self.ports.decode,
                    labels={"llm-d.ai/role": "decode"},
                ),
            ]
            if extra_dead:
                entries.append(
                    LocalEndpoint("prefill-dead", free_port(), labels={"llm-d.ai/role": "prefill"})
                )
        write_endpoints_file(self.endpoints_file, entries)


def sim(port: int, role: str, log_dir: Path, *extra: str) -> ManagedProcess:
    command = [sys.executable, "-m", "simulator", "--port", str(port), "--model", MODEL, "--role", role]
    command += ["--log-level", "WARNING", *extra]
    return ManagedProcess(
        command, ready=http_ok(f"http://127.0.0.1:{port}/health"), name=f"sim-{role}", log_dir=log_dir
    )


def local_pods(rendered: RenderResult, ports: Ports, admin_port: int) -> list[LocalPod]:
    """The rendered pod templates, their named container ports mapped to the local processes."""
    serving = {
        "t-epp": {"grpc": ports.grpc, "grpc-health": ports.health, "metrics": ports.epp_metrics},
        "t-prefill": {"http": ports.prefill},
        "t-decode": {
            "http": ports.sidecar,
            "sidecar-metrics": ports.sidecar_metrics,
            "vllm-http": ports.decode,
        },
    }
    pods = []
    for deployment in rendered.manifests("Deployment"):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        containers = {}
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            # A named port no local process serves (e.g. NIXL's) gets a closed port: it is never scraped.
            containers[container["name"]] = {
                p["name"]: serving[name].get(p["name"], free_port()) for p in container.get("ports", [])
            }
        pods.append(
            LocalPod(
                f"{name}-0", deployment["metadata"]["namespace"], template["metadata"]["labels"], containers
            )
        )
    # kgateway's Envoy pod (made by its controller, not by the stack): the Gateway's name label and port.
    gateway_labels = {"gateway.networking.k8s.io/gateway-name": "t-gateway"}
    pods.append(
        LocalPod("t-gateway-0", NAMESPACE, gateway_labels, {"kgateway": {"http-monitoring": admin_port}})
    )
    return pods


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    logs = tmp_path_factory.mktemp("prometheus-e2e")
    rendered_stack = rendered()
    ports = Ports(*(free_port() for _ in range(7)))
    endpoints_file = logs / "endpoints.json"
    processes = {
        "prefill": sim(ports.prefill, "prefill", logs),
        # Two sequences at a time and slow decode steps: a flood of requests queues on this pod.
        "decode": sim(ports.decode, "decode", logs, "--max-num-seqs", "2", "--decode-per-seq", "0.01"),
        "sidecar": ManagedProcess(
            sidecar_command(
                ports.sidecar,
                ports.decode,
                "--metrics-port",
                str(ports.sidecar_metrics),
                "--prefill-timeout",
                "5",
            ),
            ready=http_ok(f"http://127.0.0.1:{ports.sidecar}/health"),
            name="sidecar",
            log_dir=logs,
        ),
    }
    gateway = EnvoyGateway(
        free_port(), ports.grpc, [f"127.0.0.1:{ports.prefill}", f"127.0.0.1:{ports.sidecar}"], log_dir=logs
    )
    jobs = []
    for monitor in rendered_stack.manifests("PodMonitor"):
        # kgateway serves Envoy's stats at /metrics on its own port; the local Envoy only has its admin page.
        path = "/stats/prometheus" if monitor["metadata"]["name"] == "t-gateway" else None
        jobs.append(
            scrape_job(
                monitor, local_pods(rendered_stack, ports, gateway.config.admin_port), metrics_path=path
            )
        )
    (rule,) = rendered_stack.manifests("PrometheusRule")
    try:
        for process in processes.values():
            process.start()
        placeholder = Running(rendered_stack, None, gateway, ports, endpoints_file, processes)  # type: ignore[arg-type]
        placeholder.endpoints()
        processes["epp"] = ManagedProcess(
            epp_command(
                endpoints_file,
                ports.grpc,
                ports.health,
                ports.epp_metrics,
                "--config-text",
                pd_config(64),
                "--served-models",
                MODEL,
            ),
            ready=grpc_ok(ports.health),
            name="epp",
            log_dir=logs,
        ).start()
        gateway.start()
        with Prometheus(logs / "prometheus", jobs, rule["spec"]["groups"]) as prometheus:
            yield Running(rendered_stack, prometheus, gateway, ports, endpoints_file, processes)
    finally:
        gateway.stop()
        for process in reversed(list(processes.values())):
            process.stop()


def traffic(stack: Running) -> None:
    """Normal requests: disaggregated (long prompts) and local (short), streamed, plus one for a model
    the pool does not serve (a rejection)."""
    deadline = time.monotonic() + 30
    while stack.post({"model": MODEL, "prompt": "ping", "max_tokens": 1}) != 200:
        assert time.monotonic() < deadline, "the stack never answered 200"
        time.sleep(0.2)
    for i in range(6):
        assert (
            stack.post({"model": MODEL, "prompt": f"{i} {LONG_PROMPT}", "max_tokens": 4, "stream": True})
            == 200
        )
        assert stack.post({"model": MODEL, "prompt": f"hi {i}", "max_tokens": 4, "stream": True}) == 200
    assert stack.post({"model": "not-served", "prompt": "x"}) == 404


def flood(stack: Running, count: int, max_tokens: int) -> threading.Thread:
    def run() -> None:
        threads = [
            threading.Thread(
                target=stack.post,
                args=({"model": MODEL, "prompt": f"q{i}", "max_tokens": max_tokens, "stream": True},),
            )
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def metrics_page(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return str(reply.read().decode())


def test_targets_carry_the_stack_labels(running: Running) -> None:
    prometheus = running.prometheus

    def all_up() -> bool:
        targets = prometheus.targets()
        return len(targets) == 5 and all(t["health"] == "up" for t in targets)

    # Prometheus syncs discovered targets every 5 s: the first sync takes that long.
    prometheus.wait_until("the five targets are up", all_up)
    targets = {t["labels"]["job"]: t["labels"] for t in prometheus.targets()}
    assert set(targets) == {
        f"{NAMESPACE}/{m}" for m in ("t-epp", "t-prefill", "t-decode", "t-decode-sidecar", "t-gateway")
    }
    assert targets["llm-d/t-decode"]["llmd_role"] == "decode"
    assert targets["llm-d/t-decode"]["llmd_model"] == MODEL
    assert targets["llm-d/t-decode"]["container"] == "engine"
    assert targets["llm-d/t-decode-sidecar"]["container"] == "routing-sidecar"
    assert targets["llm-d/t-epp"]["llmd_component"] == "epp"
    assert all(
        labels["llmd_stack"] == STACK and labels["namespace"] == NAMESPACE for labels in targets.values()
    )


def test_every_named_metric_is_on_the_live_pages(running: Running) -> None:
    traffic(running)
    manifests = running.rendered.manifests()
    pages = {
        "epp": exposed_names(metrics_page(running.ports.epp_metrics)),
        "vllm": exposed_names(metrics_page(running.ports.decode))
        | exposed_names(metrics_page(running.ports.prefill)),
        "sidecar": exposed_names(metrics_page(running.ports.sidecar_metrics)),
        "envoy": exposed_names(metrics_page(running.gateway.config.admin_port, "/stats/prometheus")),
    }
    synthetic = {"up"} | recorded(manifests)  # Prometheus's own series and our recording rules
    named = {name for e in expressions(manifests) for name in metric_names(e.expr)}
    adapter = {rule["seriesQuery"].split("{")[0] for rule in prometheus_adapter_rules()}
    missing = []
    for name in sorted(named | adapter):
        if name in synthetic:
            continue
        source = (
            "vllm"
            if name.startswith("vllm:")
            else "sidecar"
            if name.startswith("llmd_sidecar_")
            else ("envoy" if name.startswith("envoy_") else "epp")
        )
        if name not in pages[source]:
            missing.append(f"{name} (not on the {source} page)")
    assert not missing, missing
    assert len(named) > 30


def _vector(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    data = prometheus.query(expr)
    assert data["resultType"] == "vector", (expr, data["resultType"])
    return list(data["result"])


def test_alerts_fire_when_forced_and_every_query_returns_data(running: Running) -> None:
    prometheus = running.prometheus
    traffic(running)
    prometheus.wait_until(
        "the pool recording rules have data", lambda: bool(_vector(prometheus, "llmd:vllm_pods:count"))
    )
    assert not prometheus.firing() & {
        "LlmdPoolSaturated",
        "LlmdQueueGrowing",
        "LlmdEppDown",
        "LlmdPdPrefillFallbacks",
    }

    # A saturated pool, a growing queue and TTFT past its objective: 24 requests on a decode server
    # that runs two at a time.
    flooding = flood(running, 24, 120)
    prometheus.wait_firing("LlmdPoolSaturated")
    prometheus.wait_firing("LlmdQueueGrowing")
    # The recording rule the queue alert reads saw the decode pool's queue (before it drains).
    waiting = f'max_over_time(llmd:vllm_requests_waiting:sum{{llmd_role="decode",llmd_stack="{STACK}"}}[1m])'
    (queue,) = _vector(prometheus, waiting)
    assert float(queue["value"][1]) >= 4
    prometheus.wait_firing("LlmdTtftBudgetBurn")
    flooding.join(timeout=120)

    # P/D fallbacks and EPP scrape errors: the prefill pod's serving port closed, a dead endpoint added.
    running.endpoints(prefill_port=free_port(), extra_dead=True)
    time.sleep(1)
    for i in range(8):
        assert running.post({"model": MODEL, "prompt": f"fallback {i} {LONG_PROMPT}", "max_tokens": 2}) == 200
    prometheus.wait_firing("LlmdPdPrefillFallbacks")
    prometheus.wait_firing("LlmdEppScrapeErrors")

    # Every expression has data now (each alert's condition has been met once).
    manifests = running.rendered.manifests()
    empty = []
    for expression in expressions(manifests):
        result = _vector(prometheus, expression.expr)
        if expression.kind == "keda":
            assert len(result) == 1 and result[0]["metric"] == {}, (expression.where, result)
        elif not result and expression.kind != "alert":  # alerts return nothing once their condition passes
            empty.append(expression.where)
    assert not empty, empty
    pools = _vector(prometheus, f'llmd:vllm_requests_running:sum{{llmd_stack="{STACK}"}}')
    assert {
        (p["metric"]["llmd_role"], p["metric"]["llmd_model"], p["metric"]["namespace"]) for p in pools
    } == {
        ("prefill", MODEL, NAMESPACE),
        ("decode", MODEL, NAMESPACE),
    }
    for rule in prometheus_adapter_rules():  # mode hpa: the adapter's query for the decode HPA's selector
        name = rule["seriesQuery"].split("{")[0]
        selector = f'namespace="{NAMESPACE}",llmd_stack="{STACK}"'
        selector += ',profile="decode"' if name.startswith("epp_") else ',llmd_role="decode"'
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", selector)
            .replace("<<.GroupBy>>", "namespace")
        )
        assert len(_vector(prometheus, query)) == 1, query

    # No ready endpoints.
    running.endpoints(empty=True)
    prometheus.wait_firing("LlmdPoolNoEndpoints")

    # A stopped model server, then a stopped EPP.
    running.processes["prefill"].stop()
    prometheus.wait_firing("LlmdScrapeTargetDown")
    running.processes["epp"].stop()
    prometheus.wait_firing("LlmdEppDown")
