"""Command-line parsing of ``python -m epp``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp.cli import duration, parse_args
from epp.config.loader import DEFAULT_CONFIG
from epp.scheduling.framework import SaturationDetector
from epp.server import Transport
from epp.server.stream import BodyMode
from tests.support.epp_configs import HEADER


@pytest.fixture
def endpoints(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints: []\n")
    return path


def test_defaults_match_the_contract(endpoints: Path) -> None:
    runtime, server, level = parse_args(["--endpoints-file", str(endpoints)])
    assert runtime.config_text == DEFAULT_CONFIG
    assert (runtime.refresh_metrics_interval, runtime.metrics_staleness_threshold) == (0.05, 2.0)
    assert runtime.metrics_name_filter  # filtered pages where a pod verifiably serves them
    assert runtime.pool_namespace == "default" and runtime.pool_group == "inference.networking.k8s.io"
    assert (server.grpc_port, server.grpc_health_port, server.metrics_port) == (9002, 9003, 9090)
    assert server.stream.max_request_body_bytes == 4194304
    assert server.stream.default_body_mode is BodyMode.FULL_DUPLEX_STREAMED
    # Secure serving is on by default, as upstream, with a self-signed pair made at start.
    assert server.tls is not None and server.tls.pair.origin == "self-signed" and level == "info"
    # The asyncio HTTP/2 transport by default (issue 16); grpc.aio stays behind --transport grpc.
    assert server.transport is Transport.H2


def test_llm_d_style_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n")
    runtime, server, _ = parse_args(
        [
            "--pool-name",
            "pool",
            "--pool-namespace",
            "llm",
            "--config-file",
            str(config),
            "--refresh-metrics-interval=50ms",
            "--metrics-staleness-threshold",
            "1m30s",
            "--served-models",
            "a, b",
            "--secure-serving=false",
            "--grpc-port=19002",
            "--body-mode",
            "BUFFERED",
            "--transport",
            "grpc",
            "--metrics-name-filter=false",
        ]
    )
    assert (runtime.pool_name, runtime.pool_namespace) == ("pool", "llm")
    assert runtime.config_text.startswith("apiVersion: llm-d.ai")
    assert runtime.refresh_metrics_interval == pytest.approx(0.05)
    assert runtime.metrics_staleness_threshold == 90
    assert runtime.served_models == frozenset({"a", "b"})
    assert server.grpc_port == 19002 and server.tls is None
    assert server.stream.default_body_mode is BodyMode.BUFFERED
    assert server.transport is Transport.GRPC
    assert not runtime.metrics_name_filter


def test_secure_serving_reads_the_cert_directory(tmp_path: Path, endpoints: Path) -> None:
    from epp.server.tls import self_signed

    pair = self_signed()
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    _, server, _ = parse_args(
        ["--endpoints-file", str(endpoints), "--secure-serving", "--cert-path", str(tmp_path)]
    )
    assert server.tls is not None and server.tls.pair.cert_pem == pair.cert_pem
    assert server.tls.pair.origin == str(tmp_path / "tls.crt")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "exactly one of --pool-name or --endpoints-file"),
        (["--pool-name", "p", "--endpoints-file", "{endpoints}"], "exactly one of"),
        (["--endpoints-file", "/nonexistent/endpoints.yaml"], "no such file"),
        (["--endpoints-file", "{endpoints}", "--cert-path", "/nonexistent"], "cannot read"),
        (["--endpoints-file", "{endpoints}", "--enable-cert-reload"], "needs --cert-path"),
        (["--endpoints-file", "{endpoints}", "--config-file", "/nonexistent.yaml"], "--config-file"),
        (["--endpoints-file", "{endpoints}", "--served-models", ","], "names no model"),
        (["--endpoints-file", "{endpoints}", "--grpc-port", "70000"], "port out of range"),
        (
            ["--endpoints-file", "{endpoints}", "--metrics-port", "9002"],
            "--grpc-port and --metrics-port are both",
        ),
        (
            ["--endpoints-file", "{endpoints}", "--grpc-health-port", "9090"],
            "--grpc-health-port and --metrics-port",
        ),
        (["--endpoints-file", "{endpoints}", "--refresh-metrics-interval", "fast"], "not a duration"),
        (["--endpoints-file", "{endpoints}", "--secure-serving=maybe"], "not a boolean"),
        (["--endpoints-file", "{endpoints}", "--transport", "grpclib"], "invalid choice: 'grpclib'"),
        (["--endpoints-file", "{endpoints}", "--config-text", "x", "--config-file", "y"], "not allowed with"),
    ],
)
def test_bad_command_lines_exit_2_naming_the_problem(
    argv: list[str], message: str, endpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args([a.format(endpoints=endpoints) for a in argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_a_config_file_that_is_not_utf8_or_a_directory_exits_2_naming_it(
    endpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A non-UTF-8 file raised UnicodeDecodeError (a ValueError, not the OSError caught): a traceback.
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\xff\xfe apiVersion: x\n")
    for path, message in ((binary, "not UTF-8"), (tmp_path, "Is a directory")):
        with pytest.raises(SystemExit) as caught:
            parse_args(["--endpoints-file", str(endpoints), "--config-file", str(path)])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert f"--config-file {path}" in err and message in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("0.5", 0.5), ("2s", 2), ("50ms", 0.05), ("1m30s", 90), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "-1", "1s2", "ms", "nan", "-nan", "inf", "Infinity", "1e400"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_invalid_scheduler_config_exits_2_with_the_loader_message(
    endpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from epp.cli import main

    bad = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: no-such-plugin\n"
    assert main(["--endpoints-file", str(endpoints), "--config-text", bad]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "no-such-plugin" in err


def test_the_decision_timeout_is_raised_to_cover_the_flow_control_queue() -> None:
    from epp.cli import UNBOUNDED_QUEUE_DECISION_TIMEOUT, fit_decision_timeout
    from epp.server import ServerOptions, StreamSettings

    options = ServerOptions(stream=StreamSettings(decision_timeout=30.0))
    assert fit_decision_timeout(options, 60.0).stream.decision_timeout == 70.0  # TTL + 10 s margin
    assert fit_decision_timeout(options, 5.0) is options  # already longer than a 5 s queue
    assert fit_decision_timeout(options, 0.0).stream.decision_timeout == UNBOUNDED_QUEUE_DECISION_TIMEOUT


def test_a_released_stream_cannot_feed_the_concurrency_gate() -> None:
    from epp.cli import flow_control_conflict
    from epp.config.loader import load_config
    from epp.server import ServerOptions, StreamSettings

    def flow(detector: str) -> SaturationDetector:
        text = (
            f"{HEADER}featureGates: [flowControl]\nplugins: [{{type: queue-scorer}}, {{type: {detector}}}]\n"
            f"flowControl: {{saturationDetector: {{pluginRef: {detector}}}}}\n"
        )
        loaded = load_config(text).flow_control
        assert loaded is not None
        return loaded.detector

    released = ServerOptions(stream=StreamSettings(release_after_routing=True))
    message = flow_control_conflict(released, flow("concurrency-detector"))
    assert message is not None and "--release-stream-after-routing" in message
    assert flow_control_conflict(released, flow("utilization-detector")) is None  # scraped, still works
    assert flow_control_conflict(ServerOptions(), flow("concurrency-detector")) is None
