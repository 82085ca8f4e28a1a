"""Process plumbing shared by the small asyncio servers (``python -m sidecar``, ``python -m simulator``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypedDict

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# Request-header limits for the servers' aiohttp ``AppRunner``s. aiohttp's defaults (8,190 bytes per
# request line or header, 128 headers) are far below what a gateway passes on: Envoy accepts 60 KiB
# of request headers (``max_request_headers_kb``) and 100 client headers, then adds its own (and
# Istio's tracing and peer-metadata headers). A 9 KiB ``Authorization`` token, which the gateway
# forwarded, got aiohttp's plain-text 400 from the sidecar or the simulator; vLLM (uvicorn with
# httptools) has no such per-header limit. 64 KiB covers any single header Envoy can forward.
class HttpServerLimits(TypedDict):
    max_line_size: int
    max_field_size: int
    max_headers: int


HTTP_SERVER_LIMITS = HttpServerLimits(max_line_size=64 * 1024, max_field_size=64 * 1024, max_headers=256)


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
