"""Shared set-up for the guard-rail tests.

The policy pack is a plain directory the Pulumi CLI runs with itself on sys.path; the tests do the
same. Every example stack is rendered once per session with the offline render command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "policy"
if str(POLICY_DIR) not in sys.path:
    sys.path.insert(0, str(POLICY_DIR))

EXAMPLE_STACKS = sorted(
    p.name[len("Pulumi.") : -len(".yaml")] for p in (REPO / "stacks").glob("Pulumi.*.yaml")
)


@dataclass(frozen=True)
class RenderedManifest:
    stack: str
    file: str
    body: dict[str, Any]


@pytest.fixture(scope="session")
def render_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m components.render` over every stacks/Pulumi.<stack>.yaml, into a temporary directory."""
    out = tmp_path_factory.mktemp("render")
    result = subprocess.run(
        [sys.executable, "-m", "components.render", "--out", str(out)],
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
