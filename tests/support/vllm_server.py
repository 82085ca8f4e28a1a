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
        # VLLM_USE_SPINLOOP_EXT (below) keeps every engine and worker process spinning while
        # vLLM runs. At the default priority two such servers own both cores of a 2-core CI
        # host, and whatever a test starts beside them starves: CI on e84b4e4 failed because a
        # simulator did not answer /health within 30 s next to the P/D pair (it is ready in
        # 0.4 s alone), and 028e131 met the same starvation at SIGKILL. At nice 10 the spinners
        # yield the CPU to the tests' own processes (CFS weight 110 against 1024) and still take
        # every idle cycle, so vLLM's own speed is unchanged when nothing else wants the CPU.
        "nice",
        "-n",
        "10",
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
