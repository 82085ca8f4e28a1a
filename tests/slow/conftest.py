"""Real vLLM on CPU (``.venv-vllm``, built by ``./dev vllm-env``) serving the tiny local model.

These tests are marked ``slow`` and run only when asked for (``./dev test-slow`` sets
LLMD_RUN_SLOW=1, or ``pytest -m slow``): each vLLM start-up costs 40-110 s of a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
MODEL_DIR = ROOT / "build" / "tiny-llama"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = os.environ.get("LLMD_RUN_SLOW") == "1" or "slow" in (config.getoption("markexpr") or "")
    skip = pytest.mark.skip(reason="real-vLLM test: run `./dev test-slow` (or pytest -m slow)")
    for item in items:
        if "slow" in item.keywords and not asked:
            item.add_marker(skip)


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
