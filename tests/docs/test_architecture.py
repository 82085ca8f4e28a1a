"""docs/ARCHITECTURE.md's import rules hold in the code: every import between units of the checkout
is one the table allows, and every unit is in the table (a new module must be placed in a layer)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

DOC = REPO_ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = (
    "pulumi_llmd",
    "epp",
    "bbr",
    "render",
    "runloop",
    "jsonbody",
    "simulator",
    "sidecar",
    "localrun",
    "demo",
    "benchmarks",
    "policy",
)
SPLIT = ("pulumi_llmd", "epp")  # packages whose direct submodules are units of their own


def rules() -> dict[str, set[str]]:
    text = DOC.read_text()
    block = text.split("<!-- import-rules:begin -->", 1)[1].split("<!-- import-rules:end -->", 1)[0]
    table: dict[str, set[str]] = {}
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        table[cells[0].strip("`")] = set(re.findall(r"`([a-z_.]+)`", cells[1]))
    return table


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] in SPLIT and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Absolute module names this file imports (``from a.b import c`` yields ``a.b`` and, when
    ``a.b`` is a package, ``a.b.c``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                candidate = REPO_ROOT.joinpath(*node.module.split("."), alias.name)
                if candidate.is_dir() or candidate.with_suffix(".py").is_file():
                    yield f"{node.module}.{alias.name}", node.lineno


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def test_the_rules_table_parses() -> None:
    table = rules()
    assert "epp.server" in table and "pulumi_llmd.config" in table
    assert table["epp.scheduling"] == {"epp.datastore"}


def test_every_unit_is_placed_in_the_table() -> None:
    table = rules()
    missing = sorted({unit_of(module_name(p)) for p in sources()} - set(table))
    assert missing == [], f"add these units to the import-rules table in {DOC.name}: {missing}"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    table = rules()
    source = unit_of(module_name(path))
    allowed = table.get(source, set()) | {source}
    bad = []
    for module, line in imports(path):
        if module.split(".")[0] not in PACKAGES:
            continue  # the standard library and third-party packages
        target = unit_of(module)
        # `import epp` alone names the package, not a layer; its submodule import is checked itself.
        if target not in allowed and not (target in SPLIT and module == target and source.startswith(target)):
            bad.append(f"line {line}: {source} imports {module} ({target})")
    assert bad == [], "\n".join(bad)


def test_no_package_imports_the_tests() -> None:
    for path in sources():
        for module, line in imports(path):
            assert module.split(".")[0] != "tests", f"{path}:{line} imports {module}"
