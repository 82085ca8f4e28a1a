"""``python -m demo`` as a user runs it: its output, and that no process it started survives it.

Every process the demo starts inherits its environment, so a marker variable set for the demo alone
finds them all in /proc, whichever session they run in.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
MARKER = "LLMD_DEMO_TEST_MARKER"

pytestmark = pytest.mark.e2e


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone already, or not ours to read
            continue
        if f"{MARKER}={marker}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def wait_until_gone(marker: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = processes_with(marker)
        if not left:
            return []
        time.sleep(0.1)
    return processes_with(marker)


def _ignore_sigint() -> None:
    """What a shell does to a background job (`./dev demo &`): SIGINT starts out ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_demo(tmp_path: Path, *args: str, background_job: bool = False) -> tuple[subprocess.Popen[str], str]:
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "demo", "--log-dir", str(tmp_path / "logs"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ignore_sigint if background_job else None,
    )
    return process, marker


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float = 30.0) -> str:
    """Output up to and including the first line matching ``pattern``."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output so far:\n{''.join(seen)}")


def kill_leftovers(marker: str) -> None:
    for pid in processes_with(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def row(output: str, label: str) -> str:
    for line in output.splitlines():
        if re.match(rf"\d+\s+{re.escape(label)}\s", line):
            return line
    raise AssertionError(f"no row for {label!r} in:\n{output}")


def test_demo_runs_the_mixed_workload_and_leaves_nothing_behind(tmp_path: Path) -> None:
    process, marker = start_demo(tmp_path)
    try:
        output, _ = process.communicate(timeout=90)
    finally:
        process.kill()
        leftovers = wait_until_gone(marker)
        kill_leftovers(marker)
    assert process.returncode == 0, output
    assert leftovers == [], f"processes outlived the demo: {leftovers}\n{output}"
    # The long prompt is disaggregated; the short one is not; the malformed body gets its 400.
    assert re.search(r"\s200\s+decode-\d\s+yes \(prefill-\d\)", row(output, "long prompt (stream)"))
    assert re.search(r"\s200\s+decode-\d\s+no\s", row(output, "short prompt"))
    assert re.search(r"\s400\s+-\s+-\s", row(output, "malformed JSON body"))
    assert "HTTP 400: request body is not valid JSON" in output
    # The second user of the shared system prompt lands on the same decode pod, from its cache.
    first = re.search(r"\s(decode-\d)\s", row(output, "chat user A"))
    second = re.search(
        r"\s(decode-\d)\s+no\s+\d+\s+(\d+)\s", row(output, "chat user B, same system (stream)")
    )
    assert first and second and first.group(1) == second.group(1)
    assert int(second.group(2)) > 500  # most of the ~760-token system prompt was a cache hit
    assert re.search(r"TTFT over 4 streamed requests: min \d+ ms, median \d+ ms, max \d+ ms", output)
    assert output.rstrip().endswith("stopped.")


def test_sigint_mid_run_stops_every_process(tmp_path: Path) -> None:
    process, marker = start_demo(tmp_path)
    try:
        read_until(process, r"sending the mixed workload")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        leftovers = wait_until_gone(marker)
        kill_leftovers(marker)
    assert process.returncode == 130, output
    assert "interrupted (SIGINT)" in output and output.rstrip().endswith("stopped.")
    assert leftovers == [], f"processes outlived the interrupted demo: {leftovers}"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_keep_running_serves_curl_until_signalled(tmp_path: Path, stop_signal: signal.Signals) -> None:
    """SIGINT is checked with the demo started as a background job (SIGINT ignored on entry)."""
    process, marker = start_demo(tmp_path, "--keep-running", background_job=stop_signal == signal.SIGINT)
    try:
        output = read_until(process, r"Ctrl-C stops everything", timeout=60)
        commands = re.findall(r"^curl .*$", output, flags=re.MULTILINE)
        assert len(commands) == 3
        gateway = re.search(r"gateway (http://127\.0\.0\.1:\d+)", output)
        assert gateway is not None
        request = urllib.request.Request(
            gateway.group(1) + "/v1/completions",
            data=b'{"model":"demo-llama","prompt":"Hello","max_tokens":3}',
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200 and b'"text_completion"' in reply.read()
        assert process.poll() is None  # still serving
        process.send_signal(stop_signal)
        rest, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        leftovers = wait_until_gone(marker)
        kill_leftovers(marker)
    assert f"interrupted ({stop_signal.name})" in rest and rest.rstrip().endswith("stopped.")
    assert leftovers == [], f"processes outlived the demo: {leftovers}"
