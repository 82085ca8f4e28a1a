"""`python -m render.diff --revs BASE HEAD`: render two git revisions in temporary worktrees.

A throwaway repository carries a stand-in `render/__main__.py` that writes the agreed render layout
from `stacks/Pulumi.<stack>.yaml`, so the worktree/subprocess flow is tested without the mock engine.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from render import diff

STAND_IN_RENDER = textwrap.dedent(
    '''
    """Writes build/render/<stack>/ from stacks/Pulumi.<stack>.yaml (objects listed under `objects`)."""
    import argparse, json, pathlib, sys, yaml

    parser = argparse.ArgumentParser()
    parser.add_argument("stacks", nargs="*")
    parser.add_argument("--out", default="build/render")
    args = parser.parse_args()
    for stack in args.stacks:
        config = yaml.safe_load(pathlib.Path(f"stacks/Pulumi.{stack}.yaml").read_text())
        if config.get("broken"):
            sys.exit(f"config error in {stack}: llmd:decode.replicas must be >= 1")
        out = pathlib.Path(args.out) / stack
        out.mkdir(parents=True)
        index = []
        for obj in config["objects"]:
            ns, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
            file = f"{obj['kind']}--{ns or '_cluster'}--{name}.yaml"
            (out / file).write_text(yaml.safe_dump(obj))
            index.append({"file": file, "source": "k8s", "apiVersion": obj["apiVersion"],
                          "kind": obj["kind"], "namespace": ns, "name": name})
        (out / "index.json").write_text(json.dumps(index))
    '''
)


def configmap(name: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "llm-d"},
        "data": {"value": value},
    }


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def commit_stacks(repo: Path, stacks: dict[str, dict[str, object]], message: str) -> str:
    for old in repo.glob("stacks/Pulumi.*.yaml"):
        old.unlink()
    for name, config in stacks.items():
        (repo / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(config))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "render").mkdir(parents=True)
    (root / "stacks").mkdir()
    (root / "render" / "__init__.py").write_text("")
    (root / "render" / "__main__.py").write_text(STAND_IN_RENDER)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "diff-test@example.invalid")
    git(root, "config", "user.name", "diff test")
    return root


def test_two_revisions_are_rendered_and_compared(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = commit_stacks(repo, {"kind": {"objects": [configmap("a", "1"), configmap("b", "1")]}}, "base")
    head = commit_stacks(
        repo,
        {
            "kind": {"objects": [configmap("a", "2"), configmap("c", "1")]},
            "onprem": {"objects": [configmap("x", "1")]},
        },
        "head",
    )

    code = diff.main(["--revs", base, head, "--repo", str(repo)])
    out = capsys.readouterr().out

    assert code == diff.EXIT_CHANGED
    assert "stack kind: 1 added, 1 removed, 1 changed, 0 unchanged" in out
    assert 'data.value: "1" → "2"' in out
    # A stack that exists only at HEAD shows every object as added.
    assert "stack onprem: 1 added, 0 removed, 0 changed, 0 unchanged" in out
    # Temporary worktrees are gone afterwards.
    assert git(repo, "worktree", "list").count("\n") == 0


def test_stack_filter_and_unchanged_revisions(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = commit_stacks(
        repo, {"kind": {"objects": [configmap("a", "1")]}, "onprem": {"objects": []}}, "base"
    )
    head = commit_stacks(
        repo,
        {"kind": {"objects": [configmap("a", "1")]}, "onprem": {"objects": [configmap("n", "")]}},
        "head",
    )

    assert diff.main(["--revs", base, head, "--repo", str(repo), "--stacks", "kind"]) == diff.EXIT_UNCHANGED
    assert "stack onprem" not in capsys.readouterr().out
    assert (
        diff.main(["--revs", "HEAD~1", "HEAD", "--repo", str(repo), "--stacks", "onprem"])
        == diff.EXIT_CHANGED
    )


@pytest.mark.parametrize(
    ("revs", "stacks", "message"),
    [
        (("no-such-rev", "HEAD"), [], "revision 'no-such-rev'"),
        (("HEAD", "HEAD"), ["gke"], "neither HEAD nor HEAD has stacks/Pulumi.<stack>.yaml for gke"),
    ],
)
def test_bad_revisions_and_stacks_exit_2(
    repo: Path, capsys: pytest.CaptureFixture[str], revs: tuple[str, str], stacks: list[str], message: str
) -> None:
    commit_stacks(repo, {"kind": {"objects": [configmap("a", "1")]}}, "only")
    argv = ["--revs", *revs, "--repo", str(repo)] + (["--stacks", *stacks] if stacks else [])

    assert diff.main(argv) == diff.EXIT_ERROR
    assert message in capsys.readouterr().err


def test_a_failing_render_reports_its_error(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = commit_stacks(repo, {"kind": {"objects": []}}, "base")
    head = commit_stacks(repo, {"kind": {"broken": True}}, "head")

    assert diff.main(["--revs", base, head, "--repo", str(repo)]) == diff.EXIT_ERROR
    err = capsys.readouterr().err
    assert f"rendering {head} ({head[:12]}) failed (exit 1)" in err
    assert "llmd:decode.replicas must be >= 1" in err
    assert git(repo, "worktree", "list").count("\n") == 0


def test_a_revision_without_the_render_command_is_named(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "render" / "__main__.py").unlink()
    base = commit_stacks(repo, {"kind": {"objects": []}}, "before the render command")
    (repo / "render" / "__main__.py").write_text(STAND_IN_RENDER)
    head = commit_stacks(repo, {"kind": {"objects": []}}, "with it")

    assert diff.main(["--revs", base, head, "--repo", str(repo)]) == diff.EXIT_ERROR
    assert "has no offline renderer" in capsys.readouterr().err


def test_a_revision_before_the_reshape_renders_with_its_own_layout(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pull request that crosses the move of components/render.py to render/ still gets a diff."""
    (repo / "render" / "__main__.py").unlink()
    (repo / "render" / "__init__.py").unlink()
    (repo / "components").mkdir()
    (repo / "components" / "__init__.py").write_text("")
    (repo / "components" / "render.py").write_text(STAND_IN_RENDER)
    base = commit_stacks(repo, {"kind": {"objects": [configmap("a", "1")]}}, "old layout")
    (repo / "components" / "render.py").unlink()
    (repo / "components" / "__init__.py").unlink()
    (repo / "render" / "__init__.py").write_text("")
    (repo / "render" / "__main__.py").write_text(STAND_IN_RENDER)
    head = commit_stacks(repo, {"kind": {"objects": [configmap("a", "2")]}}, "new layout")

    assert diff.main(["--revs", base, head, "--repo", str(repo)]) == diff.EXIT_CHANGED
    assert "stack kind: 0 added, 0 removed, 1 changed, 0 unchanged" in capsys.readouterr().out
