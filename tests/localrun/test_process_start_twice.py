"""ManagedProcess refuses a second start while its process runs: the first would be orphaned."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from localrun import ManagedProcess


def test_starting_a_running_process_again_is_refused_and_nothing_is_orphaned(tmp_path: Path) -> None:
    process = ManagedProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"], name="sleeper", log_dir=tmp_path
    )
    with process:
        pid = process.pid
        with pytest.raises(RuntimeError, match="already running"):
            process.start()
        assert process.pid == pid
    # Stopped once it has exited: starting again is allowed.
    process.start()
    process.stop()
