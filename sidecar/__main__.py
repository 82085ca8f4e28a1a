"""``python -m sidecar --port 8000 --model-server-port 8200 --kv-connector nixlv2``."""

from __future__ import annotations

import sys

from runloop import configure_logging, run_until_signalled
from sidecar.config import build_parser, options_from_args
from sidecar.proxy import serve


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    run_until_signalled(serve(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
