"""The diff command against the real offline render (`python -m render`) of the example stacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from render import diff
from tests.support.paths import REPO_ROOT

REPO = REPO_ROOT
STACKS = ["kind", "onprem"]


@pytest.fixture(scope="module")
def render_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("render")
    result = subprocess.run(
        [sys.executable, "-m", "render", *STACKS, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_a_render_compared_with_itself_is_unchanged(render_root: Path) -> None:
    render = diff.load_render(render_root)
    result = diff.diff_renders(render, render)

    assert sorted(render) == STACKS
    assert not result.changed
    for stack in result.stacks:
        sources = {key.source for key in render[stack.stack]}
        assert stack.unchanged == len(render[stack.stack]) and {"k8s", "helm", "yaml"} <= sources


def test_an_edited_render_shows_the_edited_fields(render_root: Path, tmp_path: Path) -> None:
    head = tmp_path / "head"
    shutil.copytree(render_root, head)
    decode = next((head / "onprem").glob("Deployment--*-decode.yaml"))
    body = yaml.safe_load(decode.read_text())
    old_replicas = body["spec"]["replicas"]
    body["spec"]["replicas"] = old_replicas + 1
    decode.write_text(yaml.safe_dump(body))

    result = diff.diff_renders(diff.load_render(render_root), diff.load_render(head))
    onprem = next(s for s in result.stacks if s.stack == "onprem")

    assert [(c.status, c.key.kind) for c in onprem.changes] == [("changed", "apps/Deployment")]
    assert [(f.path, f.old, f.new) for f in onprem.changes[0].fields] == [
        ("spec.replicas", old_replicas, old_replicas + 1)
    ]


def test_rendered_secrets_stay_masked(render_root: Path, tmp_path: Path) -> None:
    head = tmp_path / "head"
    shutil.copytree(render_root, head)
    secret = next((head / "onprem").glob("Secret--*.yaml"))
    body = yaml.safe_load(secret.read_text())
    key = next(iter(body["stringData"]))
    body["stringData"][key] = "hf_" + "z" * 34
    secret.write_text(yaml.safe_dump(body))

    report = diff.render_text(diff.diff_renders(diff.load_render(render_root), diff.load_render(head)))

    assert "z" * 34 not in report
    assert f"stringData.{key}: <secret> → <secret> (secret value changed)" in report


def test_revisions_of_this_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """HEAD against itself through temporary worktrees of a local clone: renders run, nothing changes."""
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True, timeout=120
    )

    code = diff.main(["--revs", "HEAD", "HEAD", "--repo", str(clone), "--stacks", "kind"])

    out = capsys.readouterr().out
    assert code == diff.EXIT_UNCHANGED, out
    assert out.startswith("stack kind: 0 added, 0 removed, 0 changed, ")
