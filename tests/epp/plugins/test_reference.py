"""Every plugin type has a line of docs (its own class docstring), the generated docs/plugins.md is
current, and a test names it."""

from __future__ import annotations

import pytest

from epp.plugins.reference import entries, reference_markdown
from epp.scheduling import registry
from tests.support.paths import REPO_ROOT

DOC = REPO_ROOT / "docs" / "plugins.md"
TESTS = REPO_ROOT / "tests"


def test_docs_plugins_md_is_up_to_date() -> None:
    assert DOC.read_text() == reference_markdown(), (
        "run: .venv/bin/python -m epp.plugins.reference --write docs/plugins.md"
    )


@pytest.mark.parametrize("entry", entries(), ids=lambda e: e.type_name)
def test_every_plugin_type_documents_itself(entry: object) -> None:
    from epp.plugins.reference import PluginEntry

    assert isinstance(entry, PluginEntry)
    if entry.replaces is None:
        assert entry.summary, f"{entry.class_name} ({entry.type_name}) needs a docstring of its own"


def test_every_plugin_type_is_named_by_a_test() -> None:
    texts = "\n".join(p.read_text() for p in TESTS.rglob("*.py") if p.name != "test_reference.py")
    unnamed = [t for t in registry.known_types() if t not in texts]
    assert unnamed == [], f"no test mentions these plugin types: {unnamed}"
