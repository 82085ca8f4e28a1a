import pytest

from simulator.__main__ import build_parser, params_from_args
from simulator.transfer import _flatten


def test_cli_maps_every_flag():
    args = build_parser().parse_args(
        [
            "--model",
            "m",
            "--port",
            "9001",
            "--role",
            "prefill",
            "--block-size",
            "32",
            "--kv-cache-tokens",
            "6400",
            "--max-num-seqs",
            "4",
            "--prefill-per-token",
            "0.001",
            "--advertise-host",
            "10.0.0.5",
        ]
    )
    params = params_from_args(args)
    assert (params.model, params.role, params.block_size, params.num_blocks, params.max_num_seqs) == (
        "m",
        "prefill",
        32,
        200,
        4,
    )
    assert (params.prefill_per_token_s, params.advertise_host, params.advertise_port) == (
        0.001,
        "10.0.0.5",
        9001,
    )


def test_advertised_host_defaults_to_the_listen_host(monkeypatch):
    monkeypatch.delenv("VLLM_NIXL_SIDE_CHANNEL_HOST", raising=False)
    params = params_from_args(build_parser().parse_args(["--model", "m", "--host", "127.0.0.2"]))
    assert params.advertise_host == "127.0.0.2"


def test_advertised_host_in_a_pod_comes_from_the_nixl_side_channel_env(monkeypatch):
    # The chart sets VLLM_NIXL_SIDE_CHANNEL_HOST to the pod IP; "0.0.0.0" would send pulls nowhere.
    monkeypatch.setenv("VLLM_NIXL_SIDE_CHANNEL_HOST", "10.1.2.3")
    params = params_from_args(build_parser().parse_args(["--model", "m", "--host", "0.0.0.0"]))
    assert params.advertise_host == "10.1.2.3"


def test_a_wildcard_listen_host_is_never_advertised(monkeypatch):
    monkeypatch.delenv("VLLM_NIXL_SIDE_CHANNEL_HOST", raising=False)
    params = params_from_args(build_parser().parse_args(["--model", "m", "--host", "0.0.0.0"]))
    assert params.advertise_host not in ("0.0.0.0", "")


def test_bad_values_are_named():
    args = build_parser().parse_args(["--model", "m", "--block-size", "0", "--kv-cache-tokens", "8"])
    with pytest.raises(ValueError, match=r"block_size must be >= 1"):
        params_from_args(args)


@pytest.mark.parametrize(("ids", "flat"), [([[1, 2], [3]], [1, 2, 3]), ([4, 5], [4, 5]), ([], [])])
def test_block_ids_per_group_or_flat(ids, flat):
    assert _flatten(ids) == flat


def test_block_ids_must_be_a_list():
    with pytest.raises(TypeError, match="must be a list"):
        _flatten("1,2")


# NaN passed every "< 0" check (all comparisons with NaN are false) and --port had no range check:
# the simulator started and then misbehaved or failed at bind time instead of exiting 2.
@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--step-overhead", "nan", "step_overhead_s"),
        ("--prefill-per-token", "inf", "prefill_per_token_s"),
        ("--kv-hold-timeout", "nan", "kv_hold_timeout_s"),
        ("--lora-load-time", "nan", "lora_load_s"),
        ("--port", "-1", "port"),
        ("--port", "70000", "port"),
    ],
)
def test_non_finite_times_and_bad_ports_are_refused_by_name(flag, value, named):
    # main() turns this ValueError into parser.error: exit 2 with the message, before serving.
    args = build_parser().parse_args(["--model", "m", flag, value])
    with pytest.raises(ValueError, match=named):
        params_from_args(args)
