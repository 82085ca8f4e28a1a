"""The release workflow's first step: refuse to publish unless the git tag, the package version and the
image tag the stack defaults use all agree, then hand the registry and version to the image builds.

    python3 tools/release_version.py --ref-type tag --tag v0.1.0 --owner pulumi-llmd >> "$GITHUB_OUTPUT"

prints ``registry=...`` and ``version=...`` (GitHub step outputs). On a mismatch it prints a
``::error::`` line per problem to stderr and exits 1.

The image names are ``{registry}/{image}:{version}``, as ``project_image()`` builds them in
pulumi_llmd/config/models.py; the constants are read from that file's source (the runner's bare
python3 has no pydantic to import it with), and tests/workflows/test_release.py checks that the
names this produces are the ones ``project_image()`` returns.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "pulumi_llmd" / "config" / "models.py"
PYPROJECT = ROOT / "pyproject.toml"
CONSTANTS = ("PROJECT_IMAGE_REGISTRY", "PROJECT_IMAGE_TAG")
# A tag Docker accepts (distribution/reference: [\w][\w.-]{0,127}).
IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def image_constants(models: Path = MODELS) -> dict[str, str]:
    """PROJECT_IMAGE_REGISTRY and PROJECT_IMAGE_TAG as written in models.py (plain string literals)."""
    found: dict[str, str] = {}
    for node in ast.parse(models.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in CONSTANTS:
                if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                    raise ValueError(f"{models}: {name} must be a plain string literal")
                found[name] = node.value.value
    missing = [name for name in CONSTANTS if name not in found]
    if missing:
        raise ValueError(f"{models}: no {', '.join(missing)}")
    return found


def package_version(pyproject: Path = PYPROJECT) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def problems(ref_type: str, tag: str, owner: str, constants: dict[str, str], version: str) -> list[str]:
    """Everything that stops this ref from being released (empty: release it)."""
    image_tag = constants["PROJECT_IMAGE_TAG"]
    registry = constants["PROJECT_IMAGE_REGISTRY"]
    found = []
    if ref_type != "tag":
        found.append(
            f"releases run from a version tag, not the {ref_type or 'unknown'} {tag!r}: push a tag "
            f"v{version}, or run the workflow from that tag"
        )
    elif tag != f"v{version}":
        found.append(f"tag {tag!r} does not match the package version {version!r} (expected 'v{version}')")
    if image_tag != version:
        found.append(
            f"PROJECT_IMAGE_TAG {image_tag!r} (pulumi_llmd/config/models.py) does not match the package "
            f"version {version!r} (pyproject.toml): the stack defaults would point at another release"
        )
    if not IMAGE_TAG.fullmatch(version):
        found.append(f"the package version {version!r} is not a valid image tag")
    # GITHUB_TOKEN may push only to the packages of the repository's owner (ghcr.io/<owner>/...).
    expected_registry = f"ghcr.io/{owner.lower()}"
    if registry != expected_registry:
        found.append(
            f"PROJECT_IMAGE_REGISTRY {registry!r} is not {expected_registry!r}, the only GHCR namespace "
            "this repository's GITHUB_TOKEN can push to: change it in pulumi_llmd/config/models.py"
        )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-type", required=True, help="github.ref_type: tag or branch")
    parser.add_argument("--tag", required=True, help="github.ref_name, e.g. v0.1.0")
    parser.add_argument("--owner", required=True, help="github.repository_owner")
    args = parser.parse_args(argv)

    constants = image_constants()
    version = package_version()
    found = problems(args.ref_type, args.tag, args.owner, constants, version)
    for problem in found:
        print(f"::error::{problem}", file=sys.stderr)
    if found:
        return 1
    print(f"registry={constants['PROJECT_IMAGE_REGISTRY']}")
    print(f"version={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
