"""``python -m epp.sidecar --port 8000 --model-server-port 8200 --kv-connector nixlv2``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from epp.sidecar.config import SidecarOptions, build_parser, options_from_args
from epp.sidecar.proxy import serve


async def _run(options: SidecarOptions) -> None:
    task = asyncio.create_task(serve(options))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(_run(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
