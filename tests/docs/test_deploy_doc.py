"""docs/deploy.md stays true: the CLI version it installs, the config keys it sets, the mirrors
example, the debug header and the outputs it reads."""

from __future__ import annotations

import re
import tomllib

import yaml

from epp.server.protocol import DEBUG_ENDPOINT, SERVED_BY
from pulumi_llmd.config.mirrors import MirrorsConfig
from pulumi_llmd.config.models import StackConfig
from tests.support.paths import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "deploy.md").read_text()


def test_the_cli_it_installs_is_the_pinned_sdks_release() -> None:
    pins = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    sdk = next(p.split("==")[1] for p in pins if p.startswith("pulumi=="))
    assert re.findall(r"get\.pulumi\.com \| sh -s -- --version (\S+)", DOC) == [sdk]
    assert f"pulumi=={sdk}" in DOC and f"v{sdk}" in DOC
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.findall(r"get\.pulumi\.com \| sh -s -- --version (\S+)", readme) == [sdk]


def _has_path(model: type, path: list[str]) -> bool:
    for index, key in enumerate(path):
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        fields.update({name: info for name, info in model.model_fields.items()})
        if key not in fields:
            return False
        annotation = fields[key].annotation
        if index < len(path) - 1:
            inner = [a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")]
            if not inner:
                return False
            model = inner[0]
    return True


def test_every_key_it_sets_exists() -> None:
    keys = re.findall(r"pulumi config (?:set|get) (?:--secret )?--path '?llmd:([A-Za-z.]+)", DOC)
    keys += re.findall(r"`llmd:([A-Za-z.]+)(?::? [^`]*)?`", DOC)
    assert len(keys) >= 8
    for key in keys:
        assert _has_path(StackConfig, key.split(".")), (
            f"docs/deploy.md names llmd:{key}, which does not exist"
        )


def test_the_mirrors_example_is_valid_config() -> None:
    block = re.search(r"```yaml\n(  llmd:mirrors:.*?)```", DOC, re.S)
    assert block is not None
    section = yaml.safe_load(block.group(1))["llmd:mirrors"]
    mirrors = MirrorsConfig.model_validate(section)
    assert mirrors.images and mirrors.charts and mirrors.urls and mirrors.image_pull_secrets


def test_the_smoke_test_uses_the_epps_header_names_and_the_programs_outputs() -> None:
    assert f"{DEBUG_ENDPOINT}: true" in DOC and f"{SERVED_BY}: endpoint=" in DOC
    program = (REPO_ROOT / "pulumi_llmd" / "program.py").read_text()
    for output in re.findall(r"pulumi stack output (\w+)", DOC):
        assert f'pulumi.export("{output}"' in program
