"""The plugin reference (docs/plugins.md), generated from the registry: one line per plugin type,
taken from the first paragraph of its class docstring.

``python -m epp.plugins.reference`` prints it; ``--write docs/plugins.md`` updates the file.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

import epp.plugins  # noqa: F401 - registers the built-in plugins
from epp.scheduling import registry


@dataclass(frozen=True)
class PluginEntry:
    type_name: str
    module: str
    class_name: str
    summary: str
    replaces: str | None  # for a deprecated alias: the type that replaces it


def own_summary(cls: type) -> str:
    """The first paragraph of the class's own docstring (not an inherited one), on one line."""
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip():
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def entries() -> list[PluginEntry]:
    result = []
    for type_name in registry.known_types():
        cls = registry.plugin_class(type_name)
        result.append(
            PluginEntry(
                type_name=type_name,
                module=cls.__module__,
                class_name=cls.__name__,
                summary=own_summary(cls),
                replaces=registry.deprecated_replacement(type_name),
            )
        )
    return result


def reference_markdown() -> str:
    lines = [
        "# Scheduler plugins",
        "",
        "Generated from the plugin registry by `python -m epp.plugins.reference --write docs/plugins.md`;",
        "`tests/epp/plugins/test_reference.py` fails when it is out of date. Type names are llm-d's.",
        "How to add one: [adding-a-plugin.md](adding-a-plugin.md).",
        "",
        "| type | module | what it does |",
        "|---|---|---|",
    ]
    for entry in entries():
        if entry.replaces is not None:
            text = f"Deprecated alias of `{entry.replaces}`."
        else:
            text = entry.summary.replace("``", "`").replace("|", "\\|")
        lines.append(f"| `{entry.type_name}` | `{entry.module}` | {text} |")
    lines += [
        "",
        "## llm-d plugin types not implemented",
        "",
        "llm-d-router registers these types too; a config naming one stops start-up with an error",
        "that names the type and says why (`epp/plugins/unsupported.py`).",
        "",
        "| type | why, or what to use instead |",
        "|---|---|",
    ]
    for type_name, why in registry.unsupported_types().items():
        lines.append(f"| `{type_name}` | {why.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m epp.plugins.reference", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the reference to this file")
    options = parser.parse_args(argv)
    text = reference_markdown()
    if options.write is None:
        sys.stdout.write(text)
        return 0
    changed = not options.write.exists() or options.write.read_text() != text
    if changed:
        options.write.write_text(text)
    print(f"{options.write}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
