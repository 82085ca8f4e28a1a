from __future__ import annotations

import pytest
from stack_helpers import EXAMPLE_STACKS

from components.render import RenderResult, render_stack


@pytest.fixture(scope="session")
def renders() -> dict[str, RenderResult]:
    return {stack: render_stack(stack) for stack in EXAMPLE_STACKS}
