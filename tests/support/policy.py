"""Paths and types shared by the guard-rail tests (imported by name; conftest.py only holds fixtures).

The policy pack is a plain directory the Pulumi CLI runs with itself on sys.path; the tests do the same.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from tests.support.paths import REPO_ROOT

REPO = REPO_ROOT
POLICY_DIR = REPO / "policy"
if str(POLICY_DIR) not in sys.path:
    sys.path.insert(0, str(POLICY_DIR))

EXAMPLE_STACKS = sorted(
    p.name[len("Pulumi.") : -len(".yaml")] for p in (REPO / "stacks").glob("Pulumi.*.yaml")
)


@dataclass(frozen=True)
class RenderedManifest:
    stack: str
    file: str
    body: dict[str, Any]
