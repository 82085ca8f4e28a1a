"""``python -m simulator``: run one simulated vLLM server (see :mod:`simulator` for the model)."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from runloop import configure_logging, run_until_signalled
from simulator.lora import parse_lora_modules
from simulator.params import SimParams
from simulator.server import serve


def build_parser() -> argparse.ArgumentParser:
    d = SimParams(model="x")
    p = argparse.ArgumentParser(prog="python -m simulator", description="A simulated vLLM OpenAI server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument(
        "--role",
        choices=("prefill", "decode", "both"),
        default=d.role,
        help="which side of P/D this instance serves (default: both)",
    )
    p.add_argument("--max-model-len", type=int, default=d.max_model_len)
    p.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV block")
    p.add_argument("--kv-cache-tokens", type=int, default=d.kv_cache_tokens, help="KV capacity in tokens")
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="batch limit")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=d.max_num_batched_tokens,
        help="token budget per engine step (chunked prefill)",
    )
    p.add_argument("--request-overhead", type=float, default=d.request_overhead_s, metavar="SECONDS")
    p.add_argument("--tokenize-per-token", type=float, default=d.tokenize_per_token_s, metavar="SECONDS")
    p.add_argument("--step-overhead", type=float, default=d.step_overhead_s, metavar="SECONDS")
    p.add_argument("--prefill-per-token", type=float, default=d.prefill_per_token_s, metavar="SECONDS")
    p.add_argument("--decode-per-seq", type=float, default=d.decode_per_seq_s, metavar="SECONDS")
    p.add_argument(
        "--kv-transfer-per-token", type=float, default=d.kv_transfer_per_token_s, metavar="SECONDS"
    )
    p.add_argument("--default-output-tokens", type=int, default=d.default_output_tokens)
    p.add_argument(
        "--kv-hold-timeout",
        type=float,
        default=d.kv_hold_timeout_s,
        metavar="SECONDS",
        help="how long a prefill keeps blocks nobody pulls",
    )
    p.add_argument(
        "--kv-load-failure-policy",
        choices=("fail", "recompute"),
        default=d.kv_load_failure_policy,
        help="when a remote KV pull fails: answer 500 (fail, vLLM's default) or prefill locally (recompute)",
    )
    p.add_argument(
        "--advertise-host",
        default=None,
        help="host put in kv_transfer_params.remote_host (default: $VLLM_NIXL_SIDE_CHANNEL_HOST, as vLLM "
        "does, else --host, else this host's address when --host is a wildcard)",
    )
    p.add_argument(
        "--request-log",
        default=None,
        metavar="PATH",
        help="append each generation request (path, x-request-id, body) to PATH as JSON lines",
    )
    p.add_argument(
        "--kv-events-config",
        default=None,
        metavar="JSON",
        help="vLLM's KV-event publisher config, e.g. "
        '\'{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557"}\'',
    )
    p.add_argument(
        "--prefix-caching-hash-algo",
        choices=("sha256", "sha256_cbor", "xxhash", "xxhash_cbor"),
        default=d.prefix_caching_hash_algo,
        help="block hash of the published keys (seeded by PYTHONHASHSEED, as vLLM's)",
    )
    lora = p.add_argument_group("LoRA (vLLM's flags; see simulator.lora)")
    lora.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters")
    lora.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help='adapters served from start-up: name=path, or vLLM\'s JSON form {"name": ..., "path": ...}',
    )
    lora.add_argument("--max-loras", type=int, default=d.max_loras, help="adapters one batch may mix")
    lora.add_argument("--max-lora-rank", type=int, default=None, help="accepted for vLLM compatibility")
    lora.add_argument("--max-cpu-loras", type=int, default=None, help="accepted for vLLM compatibility")
    lora.add_argument(
        "--lora-load-time",
        type=float,
        default=d.lora_load_s,
        metavar="SECONDS",
        help="engine time to put an adapter into a GPU slot (counted in simulator:lora_loads_total)",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def runtime_lora_updating() -> bool:
    """vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING (vllm/envs.py: "1" or "true", any case)."""
    return os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")


def advertised_host(listen_host: str) -> str:
    """Where remote decoders reach this instance: a wildcard listen address is no destination."""
    from_env = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST")
    if from_env:
        return from_env
    if listen_host not in ("0.0.0.0", "::", ""):
        return listen_host
    return socket.gethostbyname(socket.gethostname())


def params_from_args(args: argparse.Namespace) -> SimParams:
    return SimParams(
        model=args.model,
        role=args.role,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        kv_cache_tokens=args.kv_cache_tokens,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        request_overhead_s=args.request_overhead,
        tokenize_per_token_s=args.tokenize_per_token,
        step_overhead_s=args.step_overhead,
        prefill_per_token_s=args.prefill_per_token,
        decode_per_seq_s=args.decode_per_seq,
        kv_transfer_per_token_s=args.kv_transfer_per_token,
        default_output_tokens=args.default_output_tokens,
        kv_hold_timeout_s=args.kv_hold_timeout,
        kv_load_failure_policy=args.kv_load_failure_policy,
        advertise_host=args.advertise_host or advertised_host(args.host),
        advertise_port=args.port,
        request_log=args.request_log,
        enable_lora=args.enable_lora,
        lora_modules=tuple(parse_lora_modules(args.lora_modules)),
        max_loras=args.max_loras,
        lora_load_s=args.lora_load_time,
        runtime_lora_updating=args.enable_lora and runtime_lora_updating(),
        kv_events_config=args.kv_events_config,
        prefix_caching_hash_algo=args.prefix_caching_hash_algo,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        params = params_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    run_until_signalled(serve(params, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
