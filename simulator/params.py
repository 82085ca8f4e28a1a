"""The simulator's knobs: capacity, timing model, and the figures the defaults come from.

Timing model (one engine step at a time, like vLLM's continuous batching):

    step_time = step_overhead + prefill_per_token * prefill_tokens_in_step + decode_per_seq * decoding_seqs

A request first pays ``request_overhead + tokenize_per_token * prompt_tokens`` (HTTP, tokenising,
block hashing: paid even when the prefix is cached), then waits for a batch slot (``max_num_seqs``)
and free KV blocks, then prefills its *uncached* tokens in chunks of at most
``max_num_batched_tokens`` per step, then emits one token per step. Because every step's length grows
with what the whole batch does, TTFT grows with uncached prompt tokens and with load, and inter-token
latency grows with the batch size.

Where the defaults come from: real vLLM 0.32.0 (CPU, bf16, prefix caching, block size 128,
``--max-num-seqs 8``) serving the tiny 2-layer Llama of ``tools/build_tiny_model.py`` on this
project's 2-core reference machine, measured on 2026-11-24 with

    .venv/bin/python tools/calibrate_sim.py --url http://127.0.0.1:8100 --model tiny --samples 40

which printed (medians of 40 samples; a second run agreed within ~15 % except for noise in the
repeated-prompt latency):

    short prompt, 33 tokens, 1 output token ............ 4.19 ms
    unique prompt, 280 tokens .......................... 6.39 ms
    unique prompt, 1564 tokens ......................... 21.70 ms
    the same 1564-token prompt repeated (cached) ....... 6.48 ms
    decode time per token, batch 1 / batch 8 ........... 1.53 / 2.00 ms

    -> request_overhead 2.33 ms, tokenize_per_token 2.0 us, step_overhead 1.47 ms,
       prefill_per_token 9.9 us, decode_per_seq 66 us

Round trip: the same command pointed at ``python -m simulator --model tiny`` (defaults) recovers
prefill_per_token 9.9 us and a decode step of 2.2 ms; its short-prompt latency is 6.0 ms against
real vLLM's 4.2 ms, because the simulator's own HTTP handling and event-loop wake-ups (~2 ms on
this machine) come on top of the modelled request overhead.

The KV transfer cost is runtime.md's NixlConnector measurement on the same machine (1427 tokens,
3.1 MB, pulled in 17 ms: 12 us per token). The model is tiny, so absolute times are small; scale
``prefill_per_token`` and ``decode_per_seq`` up to mimic a bigger model on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from simulator.lora import LoraModule

Role = Literal["prefill", "decode", "both"]
KvLoadFailurePolicy = Literal["fail", "recompute"]

# Measured with tools/calibrate_sim.py against vLLM 0.32.0 CPU on the tiny model (see above).
MEASURED_REQUEST_OVERHEAD_S = 0.00233
MEASURED_TOKENIZE_PER_TOKEN_S = 0.000002
MEASURED_STEP_OVERHEAD_S = 0.00147
MEASURED_PREFILL_PER_TOKEN_S = 0.0000099
MEASURED_DECODE_PER_SEQ_S = 0.000066
MEASURED_KV_TRANSFER_PER_TOKEN_S = 0.000012


@dataclass(frozen=True, slots=True)
class SimParams:
    model: str
    role: Role = "both"
    max_model_len: int = 4096
    # vLLM's CUDA default; vLLM on CPU reports 128. The EPP auto-tunes from vllm:cache_config_info.
    block_size: int = 16
    # 1 GiB of KV on the tiny model = 524,288 tokens (what the measured server reported).
    kv_cache_tokens: int = 524_288
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    request_overhead_s: float = MEASURED_REQUEST_OVERHEAD_S
    tokenize_per_token_s: float = MEASURED_TOKENIZE_PER_TOKEN_S
    step_overhead_s: float = MEASURED_STEP_OVERHEAD_S
    prefill_per_token_s: float = MEASURED_PREFILL_PER_TOKEN_S
    decode_per_seq_s: float = MEASURED_DECODE_PER_SEQ_S
    kv_transfer_per_token_s: float = MEASURED_KV_TRANSFER_PER_TOKEN_S
    # Output length when the request names no max_tokens (real weights would stop at EOS).
    default_output_tokens: int = 16
    # How long a prefill instance keeps blocks for a remote decoder that never pulls them
    # (vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT default is 480 s).
    kv_hold_timeout_s: float = 480.0
    # What a decode does when the remote KV cannot be pulled: vLLM's kv_load_failure_policy
    # ("fail" answers 500, vLLM's default; "recompute" prefills locally).
    kv_load_failure_policy: KvLoadFailurePolicy = "fail"
    # Host/port advertised in kv_transfer_params; the sim serves pulls over its own HTTP port.
    advertise_host: str = "127.0.0.1"
    advertise_port: int = 8000
    # Debugging and tests: append every generation request (path, x-request-id, body) as JSON lines.
    request_log: str | None = None
    # LoRA (vLLM's --enable-lora, --lora-modules, --max-loras; simulator.lora): the adapters served
    # from start-up, how many one batch may mix, what putting one in a GPU slot costs, and whether
    # the run-time load/unload API is on (VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    enable_lora: bool = False
    lora_modules: tuple[LoraModule, ...] = ()
    max_loras: int = 1
    lora_load_s: float = 0.0
    runtime_lora_updating: bool = False
    # vLLM's --kv-events-config (JSON) and --prefix-caching-hash-algo: with events on, block keys
    # are vLLM's (simulator/kvevents.py) and every cached or evicted block is published.
    kv_events_config: str | None = None
    prefix_caching_hash_algo: str = "sha256"

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "max_model_len",
            "block_size",
            "kv_cache_tokens",
            "max_num_seqs",
            "max_num_batched_tokens",
            "default_output_tokens",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "request_overhead_s",
            "tokenize_per_token_s",
            "step_overhead_s",
            "prefill_per_token_s",
            "decode_per_seq_s",
            "kv_transfer_per_token_s",
            "kv_hold_timeout_s",
        ):
            # "not 0 <= x < inf", not "x < 0": NaN fails every comparison, so it passed the old check
            # (and inf with it), then poisoned every simulated timing.
            if not 0 <= getattr(self, name) < math.inf:
                problems.append(f"{name} must be >= 0 and finite, got {getattr(self, name)}")
        if self.kv_cache_tokens < self.block_size:
            problems.append(
                f"kv_cache_tokens ({self.kv_cache_tokens}) is smaller than one block ({self.block_size})"
            )
        if self.kv_load_failure_policy not in ("fail", "recompute"):
            problems.append(
                f"kv_load_failure_policy must be fail or recompute, got {self.kv_load_failure_policy!r}"
            )
        if self.kv_events_config is not None:
            from simulator.kvevents import KvEventsConfig

            try:
                KvEventsConfig.parse(self.kv_events_config)
            except ValueError as exc:
                problems.append(str(exc))
        if self.prefix_caching_hash_algo not in ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor"):
            problems.append(
                f"prefix_caching_hash_algo {self.prefix_caching_hash_algo!r} is not one of vLLM's"
            )
        if self.role not in ("prefill", "decode", "both"):
            problems.append(f"role must be prefill, decode or both, got {self.role!r}")
        if not self.model:
            problems.append("model (the served model name) must not be empty")
        if self.lora_modules and not self.enable_lora:
            problems.append("lora_modules need enable_lora (vLLM's --enable-lora)")
        names = [module.name for module in self.lora_modules]
        if self.model in names:
            problems.append(f"the lora adapter '{self.model}' conflicts with a served base model")
        if len(set(names)) != len(names):
            problems.append(f"lora_modules name an adapter twice ({', '.join(names)})")
        if self.max_loras < 1:
            problems.append(f"max_loras must be >= 1, got {self.max_loras}")
        if not 0 <= self.lora_load_s < math.inf:
            problems.append(f"lora_load_s must be >= 0 and finite, got {self.lora_load_s}")
        if not 0 <= self.advertise_port < 65536:  # --port; was refused only at bind time
            problems.append(f"port must be a TCP port, got {self.advertise_port}")
        if problems:
            raise ValueError("invalid simulator parameters: " + "; ".join(problems))

    @property
    def num_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size
