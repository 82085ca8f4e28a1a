"""The four images (epp/, bbr/, sidecar/, simulator/ Dockerfiles), checked without a Docker engine:
base image, non-root user, entry point, that each copies every module its process imports and no
package it does not, and that everything it copies exists in (and is not excluded from) the build
context."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
# image -> the top-level package its entry point runs
IMAGES = {"epp": "epp", "bbr": "bbr", "sidecar": "sidecar", "simulator": "simulator"}
# Top-level packages of this checkout that an image might copy.
CHECKOUT_PACKAGES = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}


def instructions(image: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / image / "Dockerfile").read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def copied_sources(image: str) -> list[str]:
    sources = []
    for keyword, args in instructions(image):
        if keyword == "COPY":
            arguments = args.split()
            sources += [a for a in arguments[:-1] if not a.startswith("--")]
    return sources


def _imported_names(path: Path) -> list[str]:
    """Absolute module names a file imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``: the
    latter counts only when it is a module)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def needed_files(package: str) -> set[Path]:
    """Every checkout file ``package``'s process loads: all of the package, and (transitively) each
    module it imports from elsewhere with the ``__init__`` of every package above it, which Python
    runs on import. Module by module, so an image can ship part of another package (the body
    router ships the EPP's ext_proc modules, not its scheduler)."""
    pending = sorted((ROOT / package).rglob("*.py"))
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path):
            parts = name.split(".")
            if parts[0] not in CHECKOUT_PACKAGES:
                continue
            for depth in range(1, len(parts) + 1):
                found = _module_file(parts[:depth])
                if found is not None:
                    pending.append(found)
    return seen


def imported_checkout_packages(package: str) -> set[str]:
    """Top-level checkout packages ``package``'s process loads modules of."""
    return {path.relative_to(ROOT).parts[0] for path in needed_files(package)}


def copied_files(image: str) -> set[Path]:
    files: set[Path] = set()
    for source in copied_sources(image):
        path = ROOT / source
        if path.is_dir():
            files |= set(path.rglob("*.py"))
        elif path.suffix == ".py":
            files.add(path)
    return files


BASE = re.compile(r"python:3\.11-slim@(sha256:[0-9a-f]{64})")


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_image_is_python_311_slim_pinned_by_digest(image: str) -> None:
    froms = [args for keyword, args in instructions(image) if keyword == "FROM"]
    assert len(froms) == 1 and BASE.fullmatch(froms[0]), froms


def test_the_images_share_one_base_digest() -> None:
    """One base for the three images (one Dependabot update moves them together)."""
    digests = {
        image: BASE.fullmatch(args)[1]  # type: ignore[index]
        for image in IMAGES
        for keyword, args in instructions(image)
        if keyword == "FROM" and BASE.fullmatch(args)
    }
    assert len(digests) == len(IMAGES) and len(set(digests.values())) == 1, digests


def test_dependabot_keeps_the_base_digest_and_the_action_pins_fresh() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    updates = {u["package-ecosystem"]: u for u in config["updates"]}

    docker = updates["docker"]
    assert set(docker["directories"]) == {f"/{image}" for image in IMAGES}
    # Digest updates within python:3.11-slim only: moving to 3.12 is a decision, not a refresh.
    ignored = {i["dependency-name"]: set(i["update-types"]) for i in docker["ignore"]}
    assert ignored["python"] == {"version-update:semver-major", "version-update:semver-minor"}
    assert updates["github-actions"]["directories"] == ["/"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_runs_as_a_numeric_non_root_user(image: str) -> None:
    users = [args for keyword, args in instructions(image) if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, users[-1]
    assert not group or (group.isdigit() and int(group) != 0)
    # The Kubernetes manifests pin the same UID (runAsUser) for the hardened securityContext.
    assert int(user) == 65532


@pytest.mark.parametrize(("image", "package"), sorted(IMAGES.items()))
def test_entry_point_runs_its_package_in_exec_form(image: str, package: str) -> None:
    entrypoints = [args for keyword, args in instructions(image) if keyword == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["python", "-m", package]]


@pytest.mark.parametrize(("image", "package"), sorted(IMAGES.items()))
def test_each_image_ships_exactly_the_packages_its_process_imports(image: str, package: str) -> None:
    copied = {Path(source).parts[0] for source in copied_sources(image) if not source.endswith(".txt")}
    assert copied == imported_checkout_packages(package)


@pytest.mark.parametrize(("image", "package"), sorted(IMAGES.items()))
def test_each_image_ships_every_module_its_process_loads(image: str, package: str) -> None:
    missing = needed_files(package) - copied_files(image)
    assert sorted(str(p.relative_to(ROOT)) for p in missing) == []


def test_module_closure_follows_package_inits_and_stops_at_what_is_imported() -> None:
    """The body router loads epp.server (and so epp/__init__.py and what epp.server imports), not
    the EPP's scheduler or discovery."""
    files = {str(p.relative_to(ROOT)) for p in needed_files("bbr")}
    assert {"epp/__init__.py", "epp/server/__init__.py", "epp/server/tls.py", "jsonbody/__init__.py"} <= files
    assert not any(f.startswith(("epp/scheduling/", "epp/discovery/", "epp/plugins/")) for f in files)


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


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_copied_path_exists_and_is_in_the_build_context(image: str) -> None:
    sources = copied_sources(image)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
        assert not _dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"


def _pins(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_requirements_match_pyproject_pins(image: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["optional-dependencies"]["runtime"])
    requirements = _pins(ROOT / image / "requirements.txt")
    assert requirements
    assert [r for r in requirements if r not in pins] == []
    assert not any(r.lower().startswith("pulumi") for r in requirements)


@pytest.mark.parametrize(("image", "package"), sorted(IMAGES.items()))
def test_requirements_cover_every_third_party_import(image: str, package: str) -> None:
    """What the modules the image's process loads import from outside the standard library and the
    checkout must be installed by its requirements (import names mapped to distribution names)."""
    distribution = {
        "grpc": "grpcio",
        "grpc_health": "grpcio-health-checking",
        "google": "protobuf",
        "envoy": "xds-protos",
        "yaml": "PyYAML",
        "prometheus_client": "prometheus-client",
        "multidict": "aiohttp",  # installed with aiohttp
        "httpx2": "lightkube",  # lightkube's HTTP client, installed with it
        "zmq": "pyzmq",
        "opentelemetry": "opentelemetry-sdk",  # api, sdk and the OTLP exporter share the namespace
    }
    wanted: set[str] = set()
    for path in needed_files(package):
        for name in _imported_names(path):
            root = name.split(".")[0]
            if root not in sys.stdlib_module_names and root not in CHECKOUT_PACKAGES:
                wanted.add(distribution.get(root, root))
    installed = {pin.split("==")[0].lower() for pin in _pins(ROOT / image / "requirements.txt")}
    assert {w.lower() for w in wanted} - installed == set()


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_writes_nothing_at_run_time(image: str) -> None:
    env = " ".join(args for keyword, args in instructions(image) if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem: no __pycache__ writes
    assert "HOME=/tmp" in env
