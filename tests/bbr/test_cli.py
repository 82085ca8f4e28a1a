"""``python -m bbr``'s command line: defaults (TLS on, the payload processor's ports), and each bad
combination refused with exit status 2 and a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbr.cli import parse_args
from epp.server.state import BodyMode


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text("models:\n- model: llama\n  names: [llama, sql]\n")
    return path


def test_defaults_serve_tls_on_the_payload_processors_ports(table: Path) -> None:
    routes, options, level = parse_args(["--config-file", str(table)])
    assert routes.base_of("sql") == "llama"
    assert (options.grpc_port, options.grpc_health_port, options.metrics_port) == (9004, 9005, 9090)
    assert options.tls is not None and options.tls.pair.origin == "self-signed"
    assert options.settings.default_body_mode is BodyMode.FULL_DUPLEX_STREAMED
    assert level == "info"


def test_plaintext_and_limits(table: Path) -> None:
    _, options, _ = parse_args(
        [
            "--config-file",
            str(table),
            "--secure-serving=false",
            "--max-request-body-bytes",
            "1024",
            "--body-mode",
            "BUFFERED",
            "--drain-timeout",
            "2s",
        ]
    )
    assert options.tls is None and options.settings.max_request_body_bytes == 1024
    assert options.settings.default_body_mode is BodyMode.BUFFERED and options.drain_timeout == 2.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: --config-file"),
        (
            ["--config-file", "/nonexistent/routes.yaml"],
            "--config-file /nonexistent/routes.yaml: No such file",
        ),
        (["--secure-serving=false", "--cert-path", "/tmp"], "need --secure-serving (it is off)"),
        (["--cert-path", "/nonexistent"], "--cert-path: cannot read"),
        (["--grpc-port", "70000"], "port out of range"),
        (["--grpc-port", "9090"], "--grpc-port and --metrics-port are both 9090"),
        (["--grpc-health-port", "9004"], "--grpc-port and --grpc-health-port are both 9004"),
    ],
)
def test_bad_command_lines_exit_2_naming_the_problem(
    table: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = args if args == [] or args[0] == "--config-file" else ["--config-file", str(table), *args]
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_table_stops_the_router_naming_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("models:\n- model: a\n  names: [a, x]\n- model: b\n  names: [b, x]\n")
    with pytest.raises(SystemExit):
        parse_args(["--config-file", str(path)])
    assert "models[1].names[1]: 'x' is already routed by models[0]" in capsys.readouterr().err
