"""Start real vLLM (OpenAI server) processes for the slow tests, through the localrun supervisor."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from localrun.process import ManagedProcess, http_ok

SERVED_NAME = "tiny"
# Compiled start-up is ~50 s here; eager is faster to start and the tests measure no speed.
START_TIMEOUT_S = 300.0


def vllm_process(
    python: Path,
    model: Path,
    port: int,
    *,
    name: str,
    cpu: str = "auto",
    kv_transfer_config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    cmd = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        SERVED_NAME,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--enable-prefix-caching",
        "--max-num-seqs",
        "8",
        "--max-num-batched-tokens",
        "2048",
        "--enforce-eager",
    ]
    if kv_transfer_config is not None:
        cmd += ["--kv-transfer-config", json.dumps(kv_transfer_config)]
    cmd += list(extra_args)
    environment = {
        # Without it, vLLM's EngineCore<->Worker shared-memory queue can lose a wake-up and sleep
        # out its 5 s recheck, several times in a row while a request waits for remote KV: the
        # "~30 s stall" of P/D on CPU. Cause and measurements: the sidecar module docstring.
        "VLLM_USE_SPINLOOP_EXT": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": cpu,
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": "INFO",
        **(env or {}),
    }
    return ManagedProcess(
        cmd,
        ready=http_ok(f"http://127.0.0.1:{port}/health"),
        name=name,
        env=environment,
        ready_timeout=START_TIMEOUT_S,
        stop_timeout=20.0,
        log_dir=log_dir,
    )
