"""Write one benchmark's results into its own section of BENCHMARKS.md.

Several benchmarks share BENCHMARKS.md. Each owns the text between its two markers, so re-running one
benchmark replaces its section and leaves the others alone. Every section records the command that
produced it and the machine it ran on, because numbers without those are not comparable.
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS_DIR = ROOT / "benchmarks" / "results"

_HEADER = """# Benchmarks

Every section below was written by the benchmark named in it; re-run its command to refresh it.
Numbers come from the machine described in each section (the project's reference machine has
2 cores and 24 GiB, so absolute figures are modest; the comparisons within a table are the point).
"""


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def write_section(section_id: str, title: str, body_markdown: str, command: str) -> None:
    """Replace (or append) the section ``section_id`` of BENCHMARKS.md."""
    if not re.fullmatch(r"[a-z0-9-]+", section_id):
        raise ValueError(f"section id must be lower-case words joined by '-', got {section_id!r}")
    begin, end = f"<!-- section:{section_id} -->", f"<!-- /section:{section_id} -->"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{begin}\n## {title}\n\n"
        f"Command: `{command}`  \nMachine: {machine_description()}  \nRun: {stamp}\n\n"
        f"{body_markdown.strip()}\n{end}"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else _HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS_MD.write_text(text.rstrip() + "\n")


def write_json(name: str, data: Any) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
