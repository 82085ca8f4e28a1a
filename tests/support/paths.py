"""Where things are, for every test: the checkout and the shared reference material beside it."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# ../shared: reference notes and upstream CRDs; tests that need it skip with a reason when absent.
SHARED = REPO_ROOT.parent / "shared"
