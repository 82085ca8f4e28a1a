"""The release workflow (.github/workflows/release.yml), read the way the runner would run it: what it
builds (every Dockerfile, both platforms), the names and tags it pushes (project_image()), the SBOM,
provenance and signature it attaches, its permissions and action pins, and the version check that
gates it. ``release_problems`` holds every rule; the mutation tests show each rule catches the change
it exists for (an image or a platform dropped, signing removed, a permission widened ...).

actionlint also lints this file (test_workflows.py::test_actionlint_reports_nothing).
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pulumi_llmd.config import models
from tests.support.paths import REPO_ROOT

RELEASE = REPO_ROOT / ".github" / "workflows" / "release.yml"
SCRIPT = REPO_ROOT / "tools" / "release_version.py"
# What must be built: every image directory with a Dockerfile (bbr, epp, sidecar, simulator).
DOCKERFILES = sorted(p.parent.name for p in REPO_ROOT.glob("*/Dockerfile"))
PLATFORMS = {"linux/amd64", "linux/arm64"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OWNER = models.PROJECT_IMAGE_REGISTRY.removeprefix("ghcr.io/")
OIDC_ISSUER = "https://token.actions.githubusercontent.com"
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")
SHA_PINNED = re.compile(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}")
VERSION_COMMENT = re.compile(r"\s+#\s+v\d+\.\d+\.\d+\s*$")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("release_version", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


release_version = load_script()


def parse(text: str) -> dict[Any, Any]:
    workflow = yaml.safe_load(text)
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on` as True
    return workflow


def expand(template: str, values: dict[str, str]) -> str:
    """Substitute ${{ expr }} the way the runner would, for the expressions this workflow uses."""

    def one(match: re.Match[str]) -> str:
        expression = match[1].strip()
        if expression not in values:
            raise KeyError(f"unexpected expression {expression!r} in {template!r}")
        return values[expression]

    return re.sub(r"\$\{\{(.*?)\}\}", one, template)


def step_using(job: dict[str, Any], action: str) -> tuple[int, dict[str, Any]] | None:
    for index, step in enumerate(job.get("steps", [])):
        if str(step.get("uses", "")).split("@")[0] == action:
            return index, step
    return None


def step_running(job: dict[str, Any], command: str) -> tuple[int, dict[str, Any]] | None:
    for index, step in enumerate(job.get("steps", [])):
        if command in str(step.get("run", "")):
            return index, step
    return None


def release_problems(workflow: dict[str, Any], text: str) -> list[str]:
    """Every way the release workflow falls short; empty when it does what the README promises."""
    found: list[str] = []
    version = models.PROJECT_IMAGE_TAG
    registry = models.PROJECT_IMAGE_REGISTRY

    # Triggers: a version tag, or by hand; never anything a pull request can start.
    triggers = workflow.get("on") or {}
    tag_patterns = ((triggers.get("push") or {}).get("tags")) or []
    if not any(fnmatch.fnmatchcase(f"v{version}", pattern) for pattern in tag_patterns):
        found.append(f"no push trigger for the tag v{version}")
    if "workflow_dispatch" not in triggers:
        found.append("cannot be run by hand (workflow_dispatch)")
    for unsafe in ("pull_request", "pull_request_target", "workflow_run"):
        if unsafe in triggers:
            found.append(f"runs on {unsafe}")

    # Least privilege: nothing by default, each job exactly what it uses.
    if workflow.get("permissions") != {}:
        found.append(f"workflow-level permissions are {workflow.get('permissions')!r}, not {{}}")
    jobs = workflow.get("jobs") or {}
    wanted_permissions = {
        "version": {"contents": "read"},
        "image": {"contents": "read", "packages": "write", "id-token": "write"},
    }
    if set(jobs) != set(wanted_permissions):
        found.append(f"jobs are {sorted(jobs)}, expected {sorted(wanted_permissions)}")
    for name, permissions in wanted_permissions.items():
        if name in jobs and jobs[name].get("permissions") != permissions:
            found.append(f"job {name} has permissions {jobs[name].get('permissions')!r}, not {permissions!r}")

    # Every action pinned by a full commit SHA, with the release it is in a comment.
    for number, line in enumerate(text.splitlines(), 1):
        uses = USES_LINE.match(line)
        if uses and not (SHA_PINNED.fullmatch(uses[1]) and VERSION_COMMENT.fullmatch(uses[2])):
            found.append(f"line {number}: {uses[1]} is not pinned by commit SHA with a '# vX.Y.Z' comment")

    # The version gate: the tag must equal the package version and PROJECT_IMAGE_TAG.
    version_job = jobs.get("version", {})
    check = step_running(version_job, "tools/release_version.py")
    if check is None:
        found.append("no tools/release_version.py step: the tag is never checked against the versions")
    else:
        env = check[1].get("env") or {}
        if env.get("TAG") != "${{ github.ref_name }}" or env.get("REF_TYPE") != "${{ github.ref_type }}":
            found.append("the version check is not given the pushed ref (github.ref_name, github.ref_type)")
        if check[1].get("id") != "check" or '>> "$GITHUB_OUTPUT"' not in check[1]["run"]:
            found.append("the version check's outputs are not step outputs of a step with id check")
    if version_job.get("outputs") != {
        "registry": "${{ steps.check.outputs.registry }}",
        "version": "${{ steps.check.outputs.version }}",
    }:
        found.append("the version job does not hand the checked registry and version to the builds")

    image_job = jobs.get("image", {})
    if image_job.get("needs") not in ("version", ["version"]):
        found.append("the image builds do not wait for the version check (needs: version)")

    # What is built: every Dockerfile, both platforms.
    matrix_images = ((image_job.get("strategy") or {}).get("matrix") or {}).get("image") or []
    if sorted(matrix_images) != DOCKERFILES:
        found.append(f"builds {sorted(matrix_images)}, not every image with a Dockerfile {DOCKERFILES}")
    build = step_using(image_job, "docker/build-push-action")
    if build is None:
        found.append("no docker/build-push-action step")
        return found
    build_index, build_step = build
    inputs = build_step.get("with") or {}
    if build_step.get("id") != "build":
        found.append("the build step's id is not build (the signing steps read its digest)")
    if inputs.get("context") != "." or inputs.get("file") != "${{ matrix.image }}/Dockerfile":
        found.append("does not build <image>/Dockerfile from the repository root")
    platforms = {p.strip() for p in str(inputs.get("platforms", "")).split(",") if p.strip()}
    if platforms != PLATFORMS:
        found.append(f"builds for {sorted(platforms)}, not {sorted(PLATFORMS)}")
    if inputs.get("push") is not True:
        found.append("does not push")
    if inputs.get("sbom") is not True:
        found.append("attaches no SBOM")
    if not str(inputs.get("provenance", "")).startswith("mode=max"):
        found.append(f"provenance is {inputs.get('provenance')!r}, not mode=max")
    if "cache-from" in inputs or "cache-to" in inputs:
        found.append("a release reads or writes a build cache")
    qemu = step_using(image_job, "docker/setup-qemu-action")
    if (
        qemu is None
        or qemu[0] > build_index
        or "arm64" not in str((qemu[1].get("with") or {}).get("platforms"))
    ):
        found.append("no QEMU with arm64 before the build")
    buildx = step_using(image_job, "docker/setup-buildx-action")
    if buildx is None or buildx[0] > build_index:
        found.append("no buildx builder before the build")
    login = step_using(image_job, "docker/login-action")
    login_inputs = (login[1].get("with") or {}) if login else {}
    if (
        login is None
        or login[0] > build_index
        or login_inputs.get("registry") != registry.split("/")[0]
        or login_inputs.get("password") != "${{ secrets.GITHUB_TOKEN }}"
    ):
        found.append(f"no login to {registry.split('/')[0]} with the job's GITHUB_TOKEN before the push")

    # Where it pushes: the names the stack defaults use, plus the commit.
    outputs = {"registry": registry, "version": version}
    for image in matrix_images:
        values = {
            "matrix.image": image,
            "needs.version.outputs.registry": outputs["registry"],
            "needs.version.outputs.version": outputs["version"],
            "github.sha": COMMIT,
        }
        try:
            values["env.IMAGE"] = expand(str((image_job.get("env") or {}).get("IMAGE", "")), values)
            tags = {expand(t.strip(), values) for t in str(inputs.get("tags", "")).splitlines() if t.strip()}
        except KeyError as error:
            found.append(str(error))
            continue
        wanted = {models.project_image(image), f"{registry}/{image}:sha-{COMMIT}"}
        if tags != wanted:
            found.append(f"{image}: pushes {sorted(tags)}, expected {sorted(wanted)}")

    # Signed keylessly, by digest, after the push; and verified against this workflow's identity.
    installer = step_using(image_job, "sigstore/cosign-installer")
    if installer is None or installer[0] < build_index:
        found.append("no cosign installed after the build")
    sign = step_running(image_job, "cosign sign")
    if sign is None:
        found.append("the images are not signed")
    else:
        run = sign[1]["run"]
        if "--yes" not in run or '"${IMAGE}@${DIGEST}"' not in run or "--key" in run:
            found.append("cosign does not sign the pushed digest keylessly")
        if (sign[1].get("env") or {}).get("DIGEST") != "${{ steps.build.outputs.digest }}":
            found.append("the signed digest is not the one the build pushed")
    verify = step_running(image_job, "cosign verify")
    if verify is None or sign is None or verify[0] < sign[0]:
        found.append("the signature is not verified after signing")
    else:
        run = verify[1]["run"]
        identity = (verify[1].get("env") or {}).get("IDENTITY")
        if OIDC_ISSUER not in run or identity != "${{ github.server_url }}/${{ github.workflow_ref }}":
            found.append("the verification does not pin this workflow's identity and GitHub's OIDC issuer")
    return found


TEXT = RELEASE.read_text()
WORKFLOW = parse(TEXT)


def test_the_release_workflow_meets_every_rule() -> None:
    assert release_problems(WORKFLOW, TEXT) == []


def test_it_builds_every_dockerfile_there_is() -> None:
    assert DOCKERFILES == ["bbr", "epp", "sidecar", "simulator"]


def _drop_image(w: dict[str, Any]) -> None:
    w["jobs"]["image"]["strategy"]["matrix"]["image"].remove("simulator")


def _build_inputs(w: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in w["jobs"]["image"]["steps"] if s.get("id") == "build")["with"]


def _sign_step(w: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in w["jobs"]["image"]["steps"] if "cosign sign" in str(s.get("run", "")))


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Callable[..., None]:
    def apply(w: dict[str, Any]) -> None:
        if value is None:
            getter(w).pop(key)
        else:
            getter(w)[key] = value

    return apply


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "an image dropped": (_drop_image, "not every image with a Dockerfile"),
    "arm64 dropped": (_set(_build_inputs, "platforms", "linux/amd64"), "builds for ['linux/amd64']"),
    "amd64 dropped": (_set(_build_inputs, "platforms", "linux/arm64"), "builds for ['linux/arm64']"),
    "no SBOM": (_set(_build_inputs, "sbom", None), "attaches no SBOM"),
    "minimal provenance": (_set(_build_inputs, "provenance", "mode=min"), "not mode=max"),
    "no push": (_set(_build_inputs, "push", False), "does not push"),
    "a cache": (_set(_build_inputs, "cache-from", "type=gha"), "build cache"),
    "tagged elsewhere": (
        _set(
            _build_inputs,
            "tags",
            "ghcr.io/someone-else/${{ matrix.image }}:${{ needs.version.outputs.version }}",
        ),
        "pushes ['ghcr.io/someone-else/",
    ),
    "commit tag dropped": (
        _set(_build_inputs, "tags", "${{ env.IMAGE }}:${{ needs.version.outputs.version }}"),
        ":sha-" + COMMIT,
    ),
    "signing removed": (
        lambda w: w["jobs"]["image"]["steps"].remove(_sign_step(w)),
        "the images are not signed",
    ),
    "signing a tag": (
        lambda w: _sign_step(w).update(run='cosign sign --yes "${IMAGE}:latest"'),
        "does not sign the pushed digest keylessly",
    ),
    "write-all": (
        lambda w: w["jobs"]["image"].update(permissions="write-all"),
        "job image has permissions 'write-all'",
    ),
    "contents: write": (
        lambda w: w["jobs"]["version"]["permissions"].update(contents="write"),
        "job version has permissions",
    ),
    "default permissions": (lambda w: w.pop("permissions"), "workflow-level permissions"),
    "runs on pull requests": (lambda w: w["on"].update(pull_request={}), "runs on pull_request"),
    "version check removed": (
        lambda w: w["jobs"]["version"]["steps"].pop(),
        "the tag is never checked",
    ),
    "builds without the check": (lambda w: w["jobs"]["image"].pop("needs"), "needs: version"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_rule_catches_what_it_guards_against(mutation: str) -> None:
    change, problem = MUTATIONS[mutation]
    broken = copy.deepcopy(WORKFLOW)
    change(broken)

    problems = release_problems(broken, TEXT)

    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("original", "replacement"),
    [
        (
            "docker/build-push-action@53b7df96c91f9c12dcc8a07bcb9ccacbed38856a # v7.3.0",
            "docker/build-push-action@v7",
        ),
        ("# v4.2.0", ""),  # a SHA whose release nobody can read off
    ],
)
def test_an_action_pinned_by_tag_or_without_its_release_is_caught(original: str, replacement: str) -> None:
    assert original in TEXT
    broken = TEXT.replace(original, replacement)

    problems = release_problems(parse(broken), broken)

    assert any("is not pinned by commit SHA" in p for p in problems), problems


# --- the version check (tools/release_version.py) ---


def test_the_version_check_reads_the_constants_project_image_uses() -> None:
    assert release_version.image_constants() == {
        "PROJECT_IMAGE_REGISTRY": models.PROJECT_IMAGE_REGISTRY,
        "PROJECT_IMAGE_TAG": models.PROJECT_IMAGE_TAG,
    }
    assert release_version.package_version() == models.PROJECT_IMAGE_TAG


def test_the_version_check_refuses_constants_it_cannot_read(tmp_path: Path) -> None:
    computed = tmp_path / "models.py"
    computed.write_text('PROJECT_IMAGE_REGISTRY = "ghcr.io/" + OWNER\nPROJECT_IMAGE_TAG = "1"\n')
    with pytest.raises(ValueError, match="PROJECT_IMAGE_REGISTRY must be a plain string literal"):
        release_version.image_constants(computed)
    computed.write_text('PROJECT_IMAGE_TAG = "1"\n')
    with pytest.raises(ValueError, match="no PROJECT_IMAGE_REGISTRY"):
        release_version.image_constants(computed)


CONSTANTS = {"PROJECT_IMAGE_REGISTRY": "ghcr.io/pulumi-llmd", "PROJECT_IMAGE_TAG": "0.2.0"}


@pytest.mark.parametrize(
    ("ref_type", "tag", "owner", "constants", "version", "problem"),
    [
        ("tag", "v0.2.1", "pulumi-llmd", CONSTANTS, "0.2.0", "tag 'v0.2.1' does not match"),
        ("tag", "0.2.0", "pulumi-llmd", CONSTANTS, "0.2.0", "(expected 'v0.2.0')"),
        ("branch", "main", "pulumi-llmd", CONSTANTS, "0.2.0", "not the branch 'main'"),
        ("tag", "v0.3.0", "pulumi-llmd", CONSTANTS, "0.3.0", "PROJECT_IMAGE_TAG '0.2.0'"),
        ("tag", "v0.2.0", "a-fork", CONSTANTS, "0.2.0", "is not 'ghcr.io/a-fork'"),
    ],
)
def test_the_version_check_refuses_a_mismatch(
    ref_type: str, tag: str, owner: str, constants: dict[str, str], version: str, problem: str
) -> None:
    problems = release_version.problems(ref_type, tag, owner, constants, version)
    assert any(problem in p for p in problems), problems


def test_the_version_check_accepts_the_matching_tag_whatever_the_owners_case() -> None:
    assert release_version.problems("tag", "v0.2.0", "Pulumi-LLMD", CONSTANTS, "0.2.0") == []


def run_version_step(tmp_path: Path, ref_type: str, ref_name: str) -> tuple[int, str, str]:
    """The version job's step as the runner runs it: bash, its env expanded, GITHUB_OUTPUT set."""
    _, step = step_running(WORKFLOW["jobs"]["version"], "tools/release_version.py")  # type: ignore[misc]
    context = {"github.ref_type": ref_type, "github.ref_name": ref_name, "github.repository_owner": OWNER}
    env = {key: expand(str(value), context) for key, value in step["env"].items()}
    output = tmp_path / "github_output"
    output.touch()
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, output.read_text(), result.stderr


def test_the_version_step_hands_the_builds_the_registry_and_version(tmp_path: Path) -> None:
    code, output, stderr = run_version_step(tmp_path, "tag", f"v{models.PROJECT_IMAGE_TAG}")

    assert code == 0, stderr
    assert dict(line.split("=", 1) for line in output.splitlines()) == {
        "registry": models.PROJECT_IMAGE_REGISTRY,
        "version": models.PROJECT_IMAGE_TAG,
    }


def test_the_version_step_fails_the_release_on_a_wrong_tag(tmp_path: Path) -> None:
    code, output, stderr = run_version_step(tmp_path, "tag", "v9.9.9")

    assert code == 1 and output == ""
    assert f"::error::tag 'v9.9.9' does not match the package version '{models.PROJECT_IMAGE_TAG}'" in stderr
