"""P/D end to end: real Envoy -> ``python -m epp`` (P/D profile, static endpoints with roles) ->
the P/D sidecar in front of a simulated decode vLLM, with a simulated prefill vLLM beside it.

Both simulators log every generation request they receive (``--request-log``), so the test sees
the exact two-phase exchange the sidecar produced.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.config.samples import pd_config
from localrun import EnvoyGateway, ManagedProcess, envoy_binary, epp_command, free_port, grpc_ok, http_ok
from localrun.stack import LocalEndpoint, write_endpoints_file
from sidecar.launch import sidecar_command
from tests.support.nixl_wire import PREFILL_KV_REQUEST

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)

MODEL = "pd-tiny"
NON_CACHED_TOKENS = 64  # the decider's threshold: prompts below it are never disaggregated
PD_CONFIG = pd_config(NON_CACHED_TOKENS)
LONG_PROMPT = "Summarise the incident report below for the on-call engineer. " * 64  # ~1000 tokens
SHORT_PROMPT = "Say hi."


@dataclass
class PdStack:
    gateway: EnvoyGateway
    prefill_port: int
    decode_port: int
    sidecar_metrics_port: int
    sidecar_port: int
    prefill_log: Path
    decode_log: Path

    def post(
        self,
        body: dict[str, Any],
        path: str = "/v1/completions",
        port: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """POST through the gateway (or straight to ``port``, e.g. the sidecar)."""
        port = port or self.gateway.config.listen_port
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            all_headers = {"content-type": "application/json", **(headers or {})}
            connection.request("POST", path, json.dumps(body), all_headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    @staticmethod
    def received(log: Path) -> list[dict[str, Any]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    @staticmethod
    def metric(port: int, name: str, **labels: str) -> float:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def sim(port: int, role: str, log: Path, log_dir: Path) -> ManagedProcess:
    command = [
        sys.executable,
        "-m",
        "simulator",
        "--port",
        str(port),
        "--model",
        MODEL,
        "--role",
        role,
        "--request-log",
        str(log),
        "--log-level",
        "WARNING",
    ]
    return ManagedProcess(
        command, ready=http_ok(f"http://127.0.0.1:{port}/health"), name=f"sim-{role}", log_dir=log_dir
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdStack]:
    logs = tmp_path_factory.mktemp("pd-e2e")
    prefill_port, decode_port, sidecar_port, sidecar_metrics = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    )
    grpc_port, health_port, epp_metrics = free_port(), free_port(), free_port()
    endpoints = write_endpoints_file(
        logs / "endpoints.json",
        [
            LocalEndpoint("prefill-0", prefill_port, labels={"llm-d.ai/role": "prefill"}),
            # Traffic goes to the sidecar; the EPP scrapes the decode vLLM behind it.
            LocalEndpoint(
                "decode-0", sidecar_port, metrics_port=decode_port, labels={"llm-d.ai/role": "decode"}
            ),
        ],
    )
    sidecar = ManagedProcess(
        sidecar_command(
            sidecar_port,
            decode_port,
            "--metrics-port",
            str(sidecar_metrics),
            "--prefill-timeout",
            "10",
            # Guarded as the stacks run it (there: private addresses, the model-server port).
            "--enable-ssrf-protection",
            "--prefill-allowlist",
            "127.0.0.1",
            "--prefill-ports",
            str(prefill_port),
        ),
        ready=http_ok(f"http://127.0.0.1:{sidecar_port}/health"),
        name="sidecar",
        log_dir=logs,
    )
    epp = ManagedProcess(
        epp_command(
            endpoints,
            grpc_port,
            health_port,
            epp_metrics,
            "--config-text",
            PD_CONFIG,
            "--served-models",
            MODEL,
        ),
        ready=grpc_ok(health_port),
        name="epp",
        log_dir=logs,
    )
    gateway = EnvoyGateway(
        free_port(), grpc_port, [f"127.0.0.1:{prefill_port}", f"127.0.0.1:{sidecar_port}"], log_dir=logs
    )
    prefill_log, decode_log = logs / "prefill.jsonl", logs / "decode.jsonl"
    with (
        sim(prefill_port, "prefill", prefill_log, logs),
        sim(decode_port, "decode", decode_log, logs),
        sidecar,
        epp,
        gateway,
    ):
        running = PdStack(
            gateway, prefill_port, decode_port, sidecar_metrics, sidecar_port, prefill_log, decode_log
        )
        _wait_until_routable(running)
        yield running


def _wait_until_routable(stack: PdStack, timeout_s: float = 15.0) -> None:
    """The EPP routes once it has scraped both pods; poll with a tiny request until it does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, _ = stack.post({"model": MODEL, "prompt": "ping", "max_tokens": 1})
        if status == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the P/D stack never answered 200")


def test_long_prompt_is_prefilled_remotely_then_decoded(stack):
    prefill_before = len(stack.received(stack.prefill_log))
    decode_before = len(stack.received(stack.decode_log))
    request = {
        "model": MODEL,
        "prompt": LONG_PROMPT,
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, body = stack.post(request)
    assert status == 200
    frames = body.decode().split("\n\n")[:-1]
    assert frames[-1] == "data: [DONE]"
    usage = json.loads(frames[-2].removeprefix("data: "))["usage"]  # include_usage: the last chunk
    assert usage["completion_tokens"] == 5

    [prefill] = stack.received(stack.prefill_log)[prefill_before:]
    assert prefill["path"] == "/v1/completions"
    assert prefill["body"] == {
        "model": MODEL,
        "prompt": LONG_PROMPT,
        "temperature": 0,
        "stream": False,
        "max_tokens": 1,
        "max_completion_tokens": 1,
        "kv_transfer_params": PREFILL_KV_REQUEST,
    }
    [decode] = stack.received(stack.decode_log)[decode_before:]
    kv = decode["body"].pop("kv_transfer_params")
    assert decode["body"] == request
    assert kv["do_remote_prefill"] is True and kv["remote_port"] == stack.prefill_port
    assert kv["remote_host"] == "127.0.0.1" and kv["remote_engine_id"] and kv["remote_block_ids"]
    assert prefill["x-request-id"] and prefill["x-request-id"] == decode["x-request-id"]

    # The decode pod pulled the prefilled KV instead of computing it.
    assert stack.metric(stack.decode_port, "vllm:external_prefix_cache_hits_total") == usage["prompt_tokens"]
    assert stack.metric(stack.decode_port, "vllm:nixl_num_failed_transfers_total") == 0
    assert stack.metric(stack.sidecar_metrics_port, "llmd_sidecar_requests_total", mode="disaggregated") >= 1
    assert stack.metric(stack.sidecar_metrics_port, "llmd_sidecar_prefill_fallbacks_total") == 0


def test_short_prompt_is_not_disaggregated(stack):
    prefill_before = len(stack.received(stack.prefill_log))
    decode_before = len(stack.received(stack.decode_log))
    request = {"model": MODEL, "messages": [{"role": "user", "content": SHORT_PROMPT}], "max_tokens": 3}
    status, body = stack.post(request, "/v1/chat/completions")
    assert status == 200, body[:300]
    assert json.loads(body)["usage"]["completion_tokens"] == 3
    assert stack.received(stack.prefill_log)[prefill_before:] == []
    [decode] = stack.received(stack.decode_log)[decode_before:]
    assert decode["body"] == request  # untouched: no kv_transfer_params


def test_prompt_cached_on_the_decode_pod_stays_local(stack):
    prompt = "Rewrite this changelog entry in plain words. " * 60
    first = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    assert stack.post(first)[0] == 200
    prefill_before = len(stack.received(stack.prefill_log))
    # Same prompt plus a short question: the decode pod holds all but a few tokens of it.
    status, _ = stack.post({"model": MODEL, "prompt": prompt + "Why?", "max_tokens": 2})
    assert status == 200
    assert stack.received(stack.prefill_log)[prefill_before:] == []


def test_client_transfer_params_never_reach_a_model_server(stack):
    """SSRF through the body (issue 12): a client naming a host for the decode engine to contact."""
    decode_before = len(stack.received(stack.decode_log))
    evil = {"do_remote_prefill": True, "remote_host": "169.254.169.254", "remote_port": 80}
    request = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 2, "kv_transfer_params": evil}
    status, body = stack.post(request)  # through the gateway: the EPP refuses it
    assert status == 400 and b"kv_transfer_params" in body
    status, body = stack.post(request, port=stack.sidecar_port)  # around the gateway: so does the sidecar
    assert status == 400 and b"kv_transfer_params" in body
    assert stack.received(stack.decode_log)[decode_before:] == []


def test_the_sidecar_prefills_only_on_guarded_targets(stack):
    request = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 2}
    for target, status in (("10.0.0.1:%d", 403), ("127.0.0.1:1", 403), ("127.0.0.1/x:%d", 400)):
        header = target % stack.prefill_port if "%d" in target else target
        got, _ = stack.post(request, port=stack.sidecar_port, headers={"x-prefiller-host-port": header})
        assert got == status, header


def test_a_client_gone_mid_request_aborts_it_on_the_decode_pod(stack):
    """A client that hangs up: Envoy closes its connection to the sidecar, the sidecar's handler is
    cancelled and closes its own to the decode vLLM, which aborts the request (freeing its slot and
    KV blocks). Before, the sidecar kept that connection open: a non-streaming request generated to
    its end for nobody (finished "length", never "abort")."""
    aborted = {"finished_reason": "abort"}
    before = stack.metric(stack.decode_port, "vllm:request_success_total", **aborted)
    # ~3,000 tokens at the simulator's measured step time: several seconds of decoding.
    body = json.dumps({"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 3000}).encode()
    with socket.create_connection(("127.0.0.1", stack.gateway.config.listen_port)) as client:
        client.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )

        def decoding() -> bool:
            return stack.metric(stack.decode_port, "vllm:num_requests_running") >= 1

        assert _poll(decoding, 10.0), "the request never reached the decode pod"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset

    def aborted_on_decode() -> bool:
        return stack.metric(stack.decode_port, "vllm:request_success_total", **aborted) > before

    assert _poll(aborted_on_decode, 10.0)
    assert stack.metric(stack.decode_port, "vllm:num_requests_running") == 0


def _poll(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
