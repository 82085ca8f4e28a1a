"""checkov over the rendered manifests of every example stack: no finding without a justification.

checkov lives in its own virtualenv (.venv-checkov, built by `./dev lint-tools`; `./dev test` builds
it first). Findings are either fixed in the components or skipped in .checkov.yaml with a one-line
reason; a skip that no longer matches any finding fails too, so the list cannot rot.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.policy import EXAMPLE_STACKS, REPO

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CONFIG = REPO / ".checkov.yaml"
SKIP_LINE = re.compile(r"^\s*-\s*(CKV2?_[A-Z0-9_]+)\s*(#\s*(?P<reason>.*))?$")


@pytest.fixture(scope="module")
def checkov() -> Path:
    if not CHECKOV.exists():
        message = f"{CHECKOV} missing: run ./dev lint-tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHECKOV


def justified_skips() -> dict[str, str]:
    """check id -> reason, read from the skip-check list's own lines."""
    skips: dict[str, str] = {}
    in_list = False
    for line in CONFIG.read_text().splitlines():
        if re.match(r"^skip-check:\s*$", line):
            in_list = True
            continue
        if in_list and line and not line.startswith((" ", "-")):
            in_list = False
        match = SKIP_LINE.match(line) if in_list else None
        if match:
            skips[match.group(1)] = (match.group("reason") or "").strip()
    return skips


def run_checkov(checkov: Path, config: Path, render_root: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Failed checks, and the stacks checkov evaluated a check on (passed ones only without `quiet`)."""
    result = subprocess.run(
        [str(checkov), "--config-file", str(config), "-d", str(render_root), "-o", "json"],
        cwd=render_root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), (
        f"checkov crashed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports), "checkov could not parse a manifest"
    failed: list[dict[str, Any]] = []
    scanned: set[str] = set()
    for report in reports:
        failed += report["results"]["failed_checks"]
        for check in report["results"]["failed_checks"] + report["results"].get("passed_checks", []):
            scanned.add(Path(check["file_path"]).parts[1])  # "/<stack>/<file>.yaml"
    return failed, scanned


def test_every_skip_has_a_one_line_reason() -> None:
    skips = justified_skips()
    listed = yaml.safe_load(CONFIG.read_text())["skip-check"]

    assert sorted(skips) == sorted(listed), "every skip-check entry must be on its own line"
    for check_id, reason in skips.items():
        assert len(reason) >= 20, f"{check_id} needs a one-line justification in {CONFIG.name}"


def test_checkov_finds_nothing_unjustified(checkov: Path, render_root: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    unskipped = tmp_path / "checkov-no-skips.yaml"
    # Same settings without the skips, and with passed checks reported, to see every stack was scanned.
    unskipped.write_text(
        yaml.safe_dump({**{k: v for k, v in config.items() if k != "skip-check"}, "quiet": False})
    )

    findings, scanned = run_checkov(checkov, unskipped, render_root)
    skips = justified_skips()

    unjustified = sorted(
        f"{f['check_id']} {f['check_name']}: {f['resource']} ({f['file_path']})"
        for f in findings
        if f["check_id"] not in skips
    )
    assert unjustified == [], "fix these or justify them in .checkov.yaml:\n" + "\n".join(unjustified)
    stale = sorted(set(skips) - {f["check_id"] for f in findings})
    assert stale == [], f"these skips no longer match any finding; remove them from .checkov.yaml: {stale}"
    assert scanned == set(EXAMPLE_STACKS), f"checkov scanned only {sorted(scanned)}"


def test_checkov_passes_with_the_project_config(checkov: Path, render_root: Path) -> None:
    findings, _ = run_checkov(checkov, CONFIG, render_root)

    assert findings == []
