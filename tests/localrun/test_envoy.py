"""The local harness: rendered Envoy bootstraps pass Envoy's own validation; the supervisor starts,
waits for and stops processes (whole process groups)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epp.server.stream import BodyMode
from localrun import (
    EppEndpoint,
    FailureMode,
    GatewayConfig,
    Limits,
    ManagedProcess,
    ProcessFailed,
    Upstream,
    envoy_binary,
    free_port,
    http_ok,
    render_bootstrap,
    tcp_ok,
)

POOL = ("127.0.0.1:8001", "127.0.0.1:8002")


@pytest.mark.parametrize("upstream", list(Upstream))
@pytest.mark.parametrize("mode", list(BodyMode))
@pytest.mark.parametrize("failure_mode", list(FailureMode))
def test_bootstrap_passes_envoy_validation(
    tmp_path: Path, upstream: Upstream, mode: BodyMode, failure_mode: FailureMode
) -> None:
    config = GatewayConfig(
        10000, 9002, POOL, admin_port=9901, mode=mode, failure_mode=failure_mode, upstream=upstream
    )
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(render_bootstrap(config)))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _filters(config: GatewayConfig) -> list[dict]:
    listener = render_bootstrap(config)["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


def test_client_steering_headers_are_stripped_before_ext_proc() -> None:
    filters = _filters(GatewayConfig(1, 2, POOL))
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.set_metadata",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    removed = {m["remove"] for m in filters[0]["typed_config"]["mutations"]["request_mutations"]}
    assert {"x-gateway-destination-endpoint", "x-prefiller-host-port"} <= removed


def _ext_proc(config: GatewayConfig) -> dict:
    wrapper = _filters(config)[2]["typed_config"]
    return dict(wrapper["extension_config"]["typed_config"])


def test_failure_mode_and_processing_mode_reach_ext_proc() -> None:
    ext_proc = _ext_proc(GatewayConfig(1, 2, POOL, failure_mode=FailureMode.FAIL_OPEN))
    assert ext_proc["failure_mode_allow"] is True
    assert ext_proc["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert ext_proc["processing_mode"]["request_trailer_mode"] == "SEND"
    buffered = _ext_proc(GatewayConfig(1, 2, POOL, mode=BodyMode.BUFFERED))
    assert buffered["failure_mode_allow"] is False
    assert buffered["processing_mode"]["request_body_mode"] == "BUFFERED"


def test_fallback_route_exists_only_for_fail_open_original_dst() -> None:
    def routes(**kw: object) -> list[dict]:
        listener = render_bootstrap(GatewayConfig(1, 2, POOL, **kw))["static_resources"]["listeners"][0]  # type: ignore[arg-type]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        return hcm["route_config"]["virtual_hosts"][0]["routes"]

    assert [r["route"]["cluster"] for r in routes()] == ["original_destination_cluster"]
    assert [r["route"]["cluster"] for r in routes(failure_mode=FailureMode.FAIL_OPEN)] == [
        "original_destination_cluster",
        "inference_pool",
    ]
    override = routes(upstream=Upstream.OVERRIDE_HOST)
    assert [r["route"]["cluster"] for r in override] == ["inference_pool"]
    assert override[0]["route"]["retry_policy"]["num_retries"] == 2


@pytest.mark.parametrize("endpoints", [(), ("no-port",), ("127.0.0.1:http",)])
def test_bad_pool_endpoints_are_rejected(endpoints: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="pool"):
        GatewayConfig(1, 2, endpoints)


def test_managed_process_waits_for_readiness_and_stops_the_group(tmp_path: Path) -> None:
    port = free_port()
    # The server spawns a grandchild that must die with it (same process group).
    script = (
        "import subprocess, sys, http.server\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"server = http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)\n"
        "server.serve_forever()\n"
    )
    process = ManagedProcess(
        [sys.executable, "-c", script],
        ready=http_ok(f"http://127.0.0.1:{port}/"),
        name="web",
        cwd=tmp_path,
        log_dir=tmp_path,
    )
    with process:
        assert process.running() and tcp_ok(port)()
        group = os.getpgid(process.pid)
        assert group == process.pid
    assert not process.running()
    deadline = time.monotonic() + 5
    while _live_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_members(group) == []


def _live_members(group: int) -> list[int]:
    """PIDs in process group ``group`` that are not zombies (PID 1 here may not reap orphans)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state != "Z":
            members.append(int(entry.name))
    return members


def test_process_that_exits_early_reports_its_log(tmp_path: Path) -> None:
    process = ManagedProcess(
        [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(3)"],
        ready=tcp_ok(free_port()),
        name="early",
        log_dir=tmp_path,
    )
    with pytest.raises(ProcessFailed, match=r"exited with 3(.|\n)*bad flag"):
        process.start()


def test_process_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    process = ManagedProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        ready=tcp_ok(free_port()),
        name="slow",
        ready_timeout=0.3,
        log_dir=tmp_path,
    )
    with pytest.raises(ProcessFailed, match="not ready within"):
        process.start()
    assert not process.running()


def test_several_epps_are_health_checked_on_their_readiness() -> None:
    epps = (EppEndpoint(9002, 9003), EppEndpoint(9012, 9013, "127.0.0.2"))
    [epp] = [
        c
        for c in render_bootstrap(GatewayConfig(1, 2, POOL, epps=epps))["static_resources"]["clusters"]
        if c["name"] == "epp"
    ]
    endpoints = [e["endpoint"] for e in epp["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert [
        (e["address"]["socket_address"]["port_value"], e["health_check_config"]["port_value"])
        for e in endpoints
    ] == [
        (9002, 9003),
        (9012, 9013),
    ]
    [check] = epp["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "readiness"}
    assert check["no_traffic_interval"] == check["interval"] == "0.5s"
    assert epp["outlier_detection"]["consecutive_local_origin_failure"] == 1
    retry = _ext_proc(GatewayConfig(1, 2, POOL, epps=epps))["grpc_service"]["retry_policy"]
    assert retry["num_retries"] == 1 and "connect-failure" in retry["retry_on"]
    # One EPP given by port only: no health port, so no active checks (nothing to check against).
    [single] = [
        c
        for c in render_bootstrap(GatewayConfig(1, 2, POOL))["static_resources"]["clusters"]
        if c["name"] == "epp"
    ]
    assert "health_checks" not in single


def test_limits_are_set_deliberately_on_every_cluster() -> None:
    for upstream in Upstream:
        clusters = render_bootstrap(GatewayConfig(1, 2, POOL, upstream=upstream))["static_resources"][
            "clusters"
        ]
        for cluster in clusters:
            [threshold] = cluster["circuit_breakers"]["thresholds"]
            # Envoy's defaults are 1,024 (3 retries): far below a busy gateway's concurrency.
            assert threshold["max_requests"] == threshold["max_pending_requests"] == 40_000, cluster["name"]
            assert threshold["max_connections"] == 40_000 and threshold["max_retries"] == 1_024
    small = Limits(max_requests=10, max_pending_requests=5)
    [epp] = [
        c
        for c in render_bootstrap(GatewayConfig(1, 2, POOL, epp_limits=small))["static_resources"]["clusters"]
        if c["name"] == "epp"
    ]
    assert epp["circuit_breakers"]["thresholds"][0]["max_requests"] == 10


def test_ext_proc_is_skipped_for_requests_envoy_never_decoded() -> None:
    marker, wrapped = _filters(GatewayConfig(1, 2, POOL))[1:3]
    assert marker["typed_config"]["metadata"][0]["metadata_namespace"] == "llm-d.gateway"
    matcher = wrapped["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]
    predicate = matcher["predicate"]["single_predicate"]
    assert predicate["input"]["typed_config"]["filter"] == "llm-d.gateway"
    assert predicate["custom_match"]["typed_config"]["invert"] is True
    assert matcher["on_match"]["action"]["name"] == "skip"


def test_bootstrap_with_several_epps_passes_envoy_validation(tmp_path: Path) -> None:
    config = GatewayConfig(
        10000, 9002, POOL, admin_port=9901, epps=(EppEndpoint(9002, 9003), EppEndpoint(9004, 9005))
    )
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(render_bootstrap(config)))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize(("alpn", "offered"), [(("h2",), ["h2"]), ((), None)], ids=["h2", "none"])
def test_the_epp_is_dialed_over_tls_offering_the_chosen_alpn(
    tmp_path: Path, alpn: tuple[str, ...], offered: list[str] | None
) -> None:
    """Empty: no ALPN at all, as kgateway's ext_proc cluster (an UpstreamTlsContext without
    alpn_protocols); the rendered bootstrap still passes Envoy's validation."""
    config = GatewayConfig(10000, 9002, POOL, admin_port=9901, ext_proc_alpn=alpn)
    [epp] = [c for c in render_bootstrap(config)["static_resources"]["clusters"] if c["name"] == "epp"]
    context = epp["transport_socket"]["typed_config"]["common_tls_context"]
    assert context.get("alpn_protocols") == offered
    assert "validation_context" not in context  # nothing is verified, as every gateway dials the EPP
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(render_bootstrap(config)))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
