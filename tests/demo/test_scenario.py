"""The demo's attribution and formatting, from hand-made counters (no processes)."""

from __future__ import annotations

import json

from demo.cluster import Pod
from demo.scenario import (
    DemoRequest,
    Outcome,
    PodCounters,
    demo_requests,
    format_outcomes,
    parse_pod_counters,
    ttft_summary,
)

METRICS = """\
# TYPE vllm:request_success counter
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 3.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 752.0
# TYPE vllm:external_prefix_cache_hits counter
vllm:external_prefix_cache_hits_total{engine="0",model_name="m"} 1953.0
"""


def test_pod_counters_sum_every_label_set() -> None:
    assert parse_pod_counters(METRICS) == PodCounters(
        requests=4.0, cached_tokens=752.0, transferred_tokens=1953.0
    )


def test_workload_mixes_what_the_demo_promises() -> None:
    requests = demo_requests()
    assert sum(r.stream for r in requests) >= 2 and sum(not r.stream for r in requests) >= 2
    assert {r.path for r in requests} == {"/v1/completions", "/v1/chat/completions"}
    malformed = [r for r in requests if r.expected_status == 400]
    assert len(malformed) == 1
    for request in requests:
        if request is malformed[0]:
            continue
        body = json.loads(request.body)
        assert body.get("stream", False) == request.stream
        if request.stream:  # usage arrives in the last event
            assert body["stream_options"] == {"include_usage": True}


def outcome(
    label: str,
    status: int,
    expected: int,
    *,
    ttft: float | None,
    decode: str | None,
    prefill: str | None = None,
    cached: int = 0,
    error: str | None = None,
) -> Outcome:
    request = DemoRequest(label, "/v1/completions", b"{}", stream=ttft is not None, expected_status=expected)
    return Outcome(request, status, ttft, 0.5, decode, prefill, 100, cached, 0, error)


def test_table_and_summary_flag_what_went_wrong() -> None:
    outcomes = [
        outcome("long", 200, 200, ttft=0.4, decode="decode-1", prefill="prefill-0"),
        outcome("cached", 200, 200, ttft=0.02, decode="decode-1", cached=90),
        outcome("broken", 503, 400, ttft=None, decode=None, error="no healthy upstream"),
    ]
    table = format_outcomes(outcomes)
    assert "yes (prefill-0)" in table
    assert "503 (expected 400)" in table
    assert "#3 broken: HTTP 503: no healthy upstream" in table
    summary = ttft_summary(outcomes)
    assert summary.splitlines()[0] == "TTFT over 2 streamed requests: min 20 ms, median 210 ms, max 400 ms"
    assert "long: 400 ms on decode-1 (P/D via prefill-0)" in summary
    assert "cached: 20 ms on decode-1 (90 prompt tokens cached)" in summary


def test_decode_pod_endpoint_points_the_gateway_at_the_sidecar() -> None:
    pod = Pod("decode-0", "decode", model_server_port=8200, serving_port=8000)
    assert pod.endpoint.port == 8000 and pod.endpoint.metrics_port == 8200
    assert pod.endpoint.labels["llm-d.ai/role"] == "decode"
    assert pod.metrics_url == "http://127.0.0.1:8200/metrics"
