"""Process plumbing shared by the small asyncio servers (``python -m sidecar``, ``python -m simulator``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def run_until_signalled(server: Coroutine[Any, Any, None]) -> None:
    """Run ``server`` until it returns or SIGINT/SIGTERM cancels it (a clean exit, not a traceback)."""
    asyncio.run(_run(server))


async def _run(server: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(server)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
