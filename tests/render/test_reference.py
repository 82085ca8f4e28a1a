"""The README's configuration reference is generated from the models and must be current."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulumi_llmd.config.models import StackConfig
from render.reference import BEGIN, END, reference_markdown, update_readme
from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"


def test_readme_reference_is_up_to_date() -> None:
    text = README.read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block == "\n" + reference_markdown(), (
        "README.md's config reference is stale: run `./dev python -m render.reference --write README.md`"
    )


def test_reference_lists_every_key_with_its_default() -> None:
    table = reference_markdown()
    for name, field in StackConfig.model_fields.items():
        assert f"| `llmd:{field.alias or name}` |" in table, name
    assert "| `llmd:decode.replicas` | integer (>= 1) | `1` |" in table
    assert '| `llmd:decode.resources.memory` | string (Kubernetes quantity) | `"64Gi"` |' in table
    assert "| `llmd:onprem.rdmaNetworks[].ipamRange` |" in table
    assert '| `llmd:epp.failureMode` | `FailOpen` \\| `FailClose` | `"FailClose"` |' in table
    assert "| `llmd:hfToken` | secret string |" in table


def test_update_rewrites_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{BEGIN}\nSTALE-TABLE\n{END}\n\n## after\n")
    assert update_readme(readme) is True
    text = readme.read_text()
    assert text.startswith("# top\n\n") and text.endswith(f"{END}\n\n## after\n")
    assert "STALE-TABLE" not in text
    assert update_readme(readme) is False
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no config reference markers"):
        update_readme(readme)


def test_component_reference_is_up_to_date() -> None:
    """`python -m render.component_docs --write` after changing a component's args or outputs."""
    from render import component_docs

    document = component_docs.TARGET.read_text()
    expected = component_docs.replace_reference(
        document, component_docs.reference_markdown(component_docs.package_schema())
    )
    assert document == expected
