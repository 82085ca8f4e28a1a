"""tools/new_stack.py: a stack of one's own from an example, the example untouched."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from render.engine import STACKS_DIR, load_stack_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import new_stack

INIT = "encryptionsalt: v1:c2FsdA==:v1:aW5pdA==:c2FsdA==\n"  # what `pulumi stack init` writes


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    for example in new_stack.EXAMPLES:
        shutil.copy(STACKS_DIR / f"Pulumi.{example}.yaml", tmp_path)
    return tmp_path


def test_the_example_config_lands_in_the_new_stack_without_its_placeholder_secrets(stacks: Path) -> None:
    (stacks / "Pulumi.mine.yaml").write_text(INIT)
    before = (stacks / "Pulumi.onprem.yaml").read_text()
    assert new_stack.main(["onprem", "mine", "--stacks-dir", str(stacks)]) == 0
    assert (stacks / "Pulumi.onprem.yaml").read_text() == before
    mine = yaml.safe_load((stacks / "Pulumi.mine.yaml").read_text())
    assert mine["encryptionsalt"] == "v1:c2FsdA==:v1:aW5pdA==:c2FsdA=="
    example_values, example_secrets = load_stack_file(stacks / "Pulumi.onprem.yaml")
    values, secrets = load_stack_file(stacks / "Pulumi.mine.yaml")
    assert secrets == [] and example_secrets == ["llmd:hfToken"]
    assert values == {k: v for k, v in example_values.items() if k not in example_secrets}


def test_the_secret_to_set_is_named(stacks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stacks / "Pulumi.mine.yaml").write_text(INIT)
    new_stack.main(["gke", "mine", "--stacks-dir", str(stacks)])
    assert "pulumi config set --secret --stack mine llmd:hfToken <value>" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "prepare", "message"),
    [
        (["onprem", "kind"], None, "'kind' is a committed example"),
        (["nope", "mine"], INIT, "no example Pulumi.nope.yaml"),
        (["onprem", "mine"], None, "run `pulumi stack init mine --secrets-provider passphrase` first"),
        (["onprem", "mine"], INIT + "config:\n  llmd:name: x\n", "already has config"),
    ],
)
def test_refusals(
    stacks: Path, capsys: pytest.CaptureFixture[str], argv: list[str], prepare: str | None, message: str
) -> None:
    if prepare is not None:
        (stacks / "Pulumi.mine.yaml").write_text(prepare)
    assert new_stack.main([*argv, "--stacks-dir", str(stacks)]) == 1
    assert message in capsys.readouterr().err
