"""Fixtures for the guard-rail tests: every example stack rendered once per session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.policy import EXAMPLE_STACKS, REPO, RenderedManifest


@pytest.fixture(scope="session")
def render_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m render` over every stacks/Pulumi.<stack>.yaml, into a temporary directory."""
    out = tmp_path_factory.mktemp("render")
    result = subprocess.run(
        [sys.executable, "-m", "render", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"render failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="session")
def rendered_manifests(render_root: Path) -> list[RenderedManifest]:
    manifests = []
    for stack in EXAMPLE_STACKS:
        index = json.loads((render_root / stack / "index.json").read_text())
        for entry in index:
            if entry["source"] == "k8s":
                body = yaml.safe_load((render_root / stack / entry["file"]).read_text())
                manifests.append(RenderedManifest(stack, entry["file"], body))
    return manifests
