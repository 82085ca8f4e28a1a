"""`./dev`'s venv helpers under the script's own `set -euo pipefail`.

A fresh checkout has no venv: the helper that reads a venv's pyvenv.cfg must then give an empty id,
not end the script (awk exits 2 on a missing file, and `set -e` turned that into CI's exit 2).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def dev_functions(*names: str) -> str:
    """The named shell functions, as `./dev` defines them: one line, or up to a line that is `}`."""
    text = (REPO / "dev").read_text()
    bodies = []
    for name in names:
        match = re.search(rf"^{name}\(\) \{{(?: [^\n]*\}}$|.*?^\}}$)", text, re.S | re.M)
        assert match, f"./dev defines no function {name}"
        bodies.append(match.group(0))
    return "\n".join(bodies)


def run_strict(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_venv_has_an_empty_id_and_the_script_goes_on(tmp_path: Path) -> None:
    functions = dev_functions("venv_python_id")
    done = run_strict(f'{functions}\nid="$(venv_python_id {tmp_path}/none)"\necho "id=[$id]"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "id=[]"


def test_make_venv_creates_a_venv_where_there_is_none(tmp_path: Path) -> None:
    functions = dev_functions("log", "venv_python_id", "make_venv")
    probe = (
        "import os, platform, sys; print(os.path.dirname(sys._base_executable), platform.python_version())"
    )
    script = (
        f'PYTHON="{sys.executable}"\n'
        f'PYTHON_ID="$("$PYTHON" -c \'{probe}\')"\n'
        f"{functions}\n"
        f'make_venv "{tmp_path}/venv"\n'
        f'[[ "$(venv_python_id "{tmp_path}/venv")" == "$PYTHON_ID" ]] && echo same-python'
    )
    done = run_strict(script)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "venv" / "bin" / "python").exists()
    assert done.stdout.strip() == "same-python"
