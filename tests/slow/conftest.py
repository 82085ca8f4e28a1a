"""Real vLLM on CPU (``.venv-vllm``, built by ``./dev vllm-env``) serving the tiny local model.

These tests are marked ``slow`` and run only when asked for (``./dev test-slow`` sets
LLMD_RUN_SLOW=1, or ``pytest -m slow``): each vLLM start-up costs 40-110 s of a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.vllm_server import START_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
MODEL_DIR = ROOT / "build" / "tiny-llama"
# Two servers started in turn, plus the test itself.
SLOW_TEST_TIMEOUT_S = 2 * START_TIMEOUT_S + 300


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = os.environ.get("LLMD_RUN_SLOW") == "1" or "slow" in (config.getoption("markexpr") or "")
    skip = pytest.mark.skip(reason="real-vLLM test: run `./dev test-slow` (or pytest -m slow)")
    for item in items:
        if "slow" not in item.keywords:
            continue
        if not asked:
            item.add_marker(skip)
        elif item.get_closest_marker("timeout") is None:
            # pytest-timeout counts a test's fixture set-up against its limit, and the first test of a
            # module pays for the module's vLLM servers: test_pd_nixl starts two, one after the other,
            # and on a loaded 2-core host that took 285 s of the suite-wide 300 s (CI, 2026-11-28).
            # Each start has its own readiness deadline (START_TIMEOUT_S, a clear failure naming the
            # server), so the hang guard here only has to outlast them.
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if not VLLM_PYTHON.exists():
        pytest.skip("no .venv-vllm: build it with `./dev vllm-env`")
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path) -> Path:
    subprocess.run(
        [str(vllm_python), str(ROOT / "tools" / "build_tiny_model.py"), str(MODEL_DIR)],
        check=True,
        timeout=300,
        cwd=ROOT,
    )
    return MODEL_DIR
