"""Session fixtures shared across test folders: each example stack rendered once under mocks."""

from __future__ import annotations

import pytest

from render.engine import RenderResult, render_stack
from tests.support.cloud import CLOUD_STACKS
from tests.support.stacks import EXAMPLE_STACKS


@pytest.fixture(scope="session")
def renders() -> dict[str, RenderResult]:
    return {stack: render_stack(stack) for stack in EXAMPLE_STACKS}


@pytest.fixture(scope="session")
def cloud_renders() -> dict[str, RenderResult]:
    return {stack: render_stack(stack) for stack in CLOUD_STACKS}
