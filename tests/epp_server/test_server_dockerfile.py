"""epp/Dockerfile, checked without a Docker engine: base image, non-root user, entry point, and that
everything it copies exists in (and is not excluded from) the build context."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "epp" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_base_image_is_python_311_slim() -> None:
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert froms == ["python:3.11-slim"]


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [args for keyword, args in instructions() if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, users[-1]
    assert not group or (group.isdigit() and int(group) != 0)
    # The Kubernetes manifests pin the same UID (runAsUser) for the hardened securityContext.
    assert int(user) == 65532


def test_entry_point_is_python_m_epp_in_exec_form() -> None:
    entrypoints = [args for keyword, args in instructions() if keyword == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["python", "-m", "epp"]]


def _dockerignore_excludes(relative: str) -> bool:
    """Apply .dockerignore rules in order (last match wins, ``!`` re-includes)."""
    ignore_file = ROOT / ".dockerignore"
    excluded = False
    for raw in ignore_file.read_text().splitlines() if ignore_file.exists() else []:
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/").removeprefix("**/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(parts[-1], pattern):
            excluded = not negate
    return excluded


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    copies = [args.split() for keyword, args in instructions() if keyword == "COPY"]
    assert copies
    for arguments in copies:
        sources = [a for a in arguments[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
            assert not _dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"


def test_requirements_match_pyproject_pins() -> None:
    pins = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    requirements = [
        line.strip()
        for line in (ROOT / "epp" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert requirements
    assert [r for r in requirements if r not in pins] == []
    assert not any(r.lower().startswith("pulumi") for r in requirements)


def test_image_writes_nothing_at_run_time() -> None:
    env = " ".join(args for keyword, args in instructions() if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem: no __pycache__ writes
    assert "HOME=/tmp" in env
