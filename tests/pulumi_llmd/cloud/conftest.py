from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def current_event_loop() -> Iterator[None]:
    """Pulumi's mock engine asks asyncio for the current loop outside any running loop; async tests
    that ran earlier in the session leave none set, so give this directory's tests one."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()
