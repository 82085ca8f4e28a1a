from __future__ import annotations

import pytest

from components.render import RenderResult, render_stack
from tests.cloud.helpers import CLOUD_STACKS


@pytest.fixture(scope="session")
def cloud_renders() -> dict[str, RenderResult]:
    return {stack: render_stack(stack) for stack in CLOUD_STACKS}
