import sys

import pytest

from sidecar.config import SidecarOptions, build_parser, options_from_args, parse_allowlist
from sidecar.launch import sidecar_command
from sidecar.pd import decode_body, kv_params_from_prefill, parse_host_port, prefill_body


def test_prefill_body_is_a_rewritten_copy():
    original = {
        "prompt": "p",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 9,
        "nested": {"a": 1},
    }
    body = prefill_body(original)
    body["nested"]["a"] = 2
    assert original["nested"] == {"a": 1} and original["stream"] is True
    assert (body["stream"], body["max_tokens"], body["max_completion_tokens"]) == (False, 1, 1)
    assert "stream_options" not in body and body["kv_transfer_params"]["do_remote_decode"] is True


def test_decode_body_keeps_the_client_request():
    original = {"prompt": "p", "max_tokens": 9, "stream": True}
    assert decode_body(original, {"x": 1}) == {**original, "kv_transfer_params": {"x": 1}}
    assert "kv_transfer_params" not in original


@pytest.mark.parametrize("answer", [[], {"kv_transfer_params": None}, {"kv_transfer_params": {}}])
def test_unusable_prefill_answers_are_rejected(answer):
    with pytest.raises(ValueError):
        kv_params_from_prefill(answer)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("10.1.2.3:8000", ("10.1.2.3", 8000)), ("[fd00::1]:8000", ("fd00::1", 8000)), (" pod:1 ", ("pod", 1))],
)
def test_host_port(value, parsed):
    assert parse_host_port(value) == parsed


@pytest.mark.parametrize("value", ["10.1.2.3", ":80", "h:0", "h:99999", "h:x", "[::1]"])
def test_bad_host_port(value):
    with pytest.raises(ValueError, match="host:port"):
        parse_host_port(value)


def test_cli_defaults_match_the_contract():
    options = options_from_args(build_parser().parse_args([]))
    assert (options.port, options.model_server_port, options.kv_connector) == (8000, 8200, "nixlv2")
    assert options.prefill_allowlist is None and options.guard() is None
    assert not options.forward_credentials_to_prefill


async def test_allowlist():
    options = options_from_args(
        build_parser().parse_args(
            ["--enable-ssrf-protection", "--prefill-allowlist", "10.0.0.0/8, 192.168.1.7"]
        )
    )
    guard = options.guard()
    assert guard is not None
    assert await guard.allows("10.4.5.6", 8000) is None and await guard.allows("192.168.1.7", 1) is None
    assert await guard.allows("192.168.1.8", 8000) == "192.168.1.8 is not an allowed prefill host"
    assert await guard.allows("evil.example", 8000) == "evil.example is not an IP address"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--kv-connector", "lmcache"], "--kv-connector 'lmcache' is not supported"),
        (["--enable-ssrf-protection"], "needs --prefill-allowlist or --prefill-pool-dns"),
        (["--enable-ssrf-protection", "--prefill-allowlist", " , "], "--prefill-allowlist is empty"),
        (["--prefill-allowlist", "10.0.0.0/8"], "needs --enable-ssrf-protection"),
        (["--prefill-pool-dns", "prefill.ns"], "needs --enable-ssrf-protection"),
        (["--prefill-ports", "8000"], "needs --enable-ssrf-protection"),
        (["--enable-ssrf-protection", "--prefill-allowlist", "10.0.0.300"], "not an IP address, a CIDR"),
        (
            ["--enable-ssrf-protection", "--prefill-allowlist", "private", "--prefill-ports", "80x"],
            "not a TCP port",
        ),
        (["--prefill-timeout", "0"], "prefill_timeout_s must be > 0"),
    ],
)
def test_bad_options_are_named(argv, error):
    with pytest.raises(ValueError, match=error):
        options_from_args(build_parser().parse_args(argv))


def test_allowlist_parser_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        parse_allowlist(" , ")
    assert SidecarOptions().metrics_port == 0


def test_sidecar_command_runs_the_module_on_loopback_with_nixlv2():
    command = sidecar_command(8000, 8200, "--metrics-port", "9100", "--prefill-timeout", "10")
    assert command[:3] == [sys.executable, "-m", "sidecar"]
    options = options_from_args(build_parser().parse_args(command[3:]))
    assert (options.host, options.port, options.model_server_port) == ("127.0.0.1", 8000, 8200)
    assert (options.kv_connector, options.metrics_port, options.prefill_timeout_s) == ("nixlv2", 9100, 10.0)


# NaN and infinity passed the "<= 0" checks (every comparison with NaN is false) and an infinite
# timeout never fires; --metrics-port had no range check at all and failed only at bind time.
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--prefill-timeout", "nan"),
        ("--connect-timeout", "inf"),
        ("--read-timeout", "1e400"),
        ("--metrics-port", "-1"),
        ("--metrics-port", "70000"),
    ],
)
def test_non_finite_timeouts_and_bad_ports_are_refused_by_name(flag, value):
    # main() turns this ValueError into parser.error: exit 2 with the message, before serving.
    args = build_parser().parse_args([flag, value])
    with pytest.raises(ValueError, match=flag.lstrip("-").replace("-", "_")):
        options_from_args(args)
