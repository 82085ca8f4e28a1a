"""``python -m demo [--keep-running]`` (what ``./dev demo`` runs)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import demo
from demo.cluster import MODEL, PD_NON_CACHED_TOKENS, DemoCluster
from demo.scenario import demo_requests, format_outcomes, run_scenario, ttft_summary
from localrun import ProcessFailed

SCENARIO_TIMEOUT_S = 45.0


class Stop(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived: unwind so every process is stopped."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _say(message: str) -> None:
    print(message, flush=True)


def curl_examples(url: str) -> str:
    completion = f'{{"model":"{MODEL}","prompt":"Write a haiku about caches.","max_tokens":16}}'
    chat = (
        f'{{"model":"{MODEL}","stream":true,"max_tokens":16,'
        '"messages":[{"role":"user","content":"Hello there"}]}'
    )
    return "\n".join(
        [
            f"curl -s {url}/v1/models",
            f"curl -s {url}/v1/completions -H 'content-type: application/json' -d '{completion}'",
            f"curl -sN {url}/v1/chat/completions -H 'content-type: application/json' -d '{chat}'",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev demo", description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the workload, keep the stack up and print curl commands (Ctrl-C stops it)",
    )
    parser.add_argument("--log-dir", type=Path, help="process logs (default: a new temporary directory)")
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="llmd-demo-"))

    cluster = DemoCluster(log_dir)
    atexit.register(cluster.stop)  # a backstop; the finally below normally runs first
    # SIGINT too: a shell starts a background job (`./dev demo --keep-running &`) with SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler, so `kill -INT` would do nothing.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    try:
        _say(
            f"starting Envoy, the EPP, {cluster.prefill_pods} prefill and {cluster.decode_pods} decode "
            f"simulated vLLM pods (decode pods behind the P/D sidecar); logs in {log_dir}"
        )
        started = time.perf_counter()
        cluster.start()
        _say(f"ready in {time.perf_counter() - started:.1f}s; gateway {cluster.url}")
        for pod in cluster.pods:
            port = (
                f"sidecar :{pod.serving_port} -> vLLM :{pod.model_server_port}"
                if pod.role == "decode"
                else f"vLLM :{pod.model_server_port}"
            )
            _say(f"  {pod.name:<10} {pod.role:<8} {port}")
        _say(
            f"\nsending the mixed workload one request at a time (P/D when a decode pod lacks >= "
            f"{PD_NON_CACHED_TOKENS} of the prompt's tokens):\n"
        )
        outcomes = asyncio.run(
            asyncio.wait_for(run_scenario(cluster.url, cluster.pods, demo_requests()), SCENARIO_TIMEOUT_S)
        )
        _say(format_outcomes(outcomes))
        _say("\n" + ttft_summary(outcomes))
        unexpected = [o for o in outcomes if not o.as_expected]
        if args.keep_running:
            _say(f"\nthe stack keeps running; try:\n{curl_examples(cluster.url)}\nCtrl-C stops everything.")
            while True:
                time.sleep(3600)
        return 1 if unexpected else 0
    except (KeyboardInterrupt, Stop) as interrupted:
        _say(f"\ninterrupted ({str(interrupted) or 'SIGINT'}); stopping every process")
        return 130
    except (ProcessFailed, TimeoutError) as exc:
        _say(f"\ndemo failed: {exc}")
        return 1
    finally:
        cluster.stop()
        _say("stopped.")


if __name__ == "__main__":
    sys.exit(main())
