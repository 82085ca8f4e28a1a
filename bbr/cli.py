"""``python -m bbr``: the routing table and listener flags → a running body router.

Flags follow the EPP's where they mean the same (``--grpc-port``, ``--grpc-health-port``,
``--metrics-port``, ``--secure-serving`` on by default with a self-signed certificate unless
``--cert-path``, ``--enable-cert-reload``, ``--max-request-body-bytes``, ``--drain-timeout``); the
ports default to llm-d-inference-payload-processor's (9004 ext_proc, 9005 health).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bbr.server import RouterOptions, RouterServer
from bbr.stream import RouterSettings
from bbr.table import RoutingTable, TableError
from epp.server.cliargs import boolean, distinct_ports, port, positive_int
from epp.server.state import BodyMode
from epp.server.tls import CertificateSource, TlsError

log = logging.getLogger("bbr")


def _seconds(text: str) -> float:
    value = float(text.removesuffix("s"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bbr", description="Body-based router: routes requests by the model their body names."
    )
    parser.add_argument("--config-file", type=Path, required=True, help="the routing table (YAML or JSON)")
    parser.add_argument("--host", default="0.0.0.0", help="bind address of all listeners (default: 0.0.0.0)")
    parser.add_argument("--grpc-port", type=port, default=9004, help="ext_proc gRPC port")
    parser.add_argument("--grpc-health-port", type=port, default=9005, help="gRPC health port")
    parser.add_argument("--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    parser.add_argument(
        "--secure-serving",
        type=boolean,
        nargs="?",
        const=True,
        default=True,
        help="serve ext_proc over TLS (default true, as the EPP; gateways dial it without verification)",
    )
    parser.add_argument(
        "--cert-path", type=Path, help="directory holding tls.crt and tls.key; unset: self-signed at start"
    )
    parser.add_argument(
        "--enable-cert-reload",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        help="re-read --cert-path's pair when it changes (no restart)",
    )
    parser.add_argument(
        "--max-request-body-bytes", type=positive_int, default=4 * 1024 * 1024, help="larger bodies get 413"
    )
    parser.add_argument(
        "--max-buffered-request-bytes",
        type=positive_int,
        default=256 * 1024 * 1024,
        help="request bytes all streams may hold together; beyond it new bodies get 503",
    )
    parser.add_argument(
        "--body-mode",
        choices=[m.value for m in BodyMode],
        default=BodyMode.FULL_DUPLEX_STREAMED.value,
        help="assumed request body mode when the proxy does not announce one",
    )
    parser.add_argument(
        "--drain-timeout", type=_seconds, default=30.0, help="after SIGTERM, seconds for open streams"
    )
    parser.add_argument(
        "--drain-notice",
        type=_seconds,
        default=5.0,
        help="after SIGTERM, seconds new streams are still served",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[RoutingTable, RouterOptions, str]:
    """Validate the command line and load the table; exit 2 with a message naming what is wrong."""
    parser = build_parser()
    args = parser.parse_args(argv)
    distinct_ports(parser, args)
    try:
        table = RoutingTable.load(args.config_file)
    except TableError as error:
        parser.error(f"--config-file {error}")
    tls = None
    if args.secure_serving:
        try:
            tls = CertificateSource(args.cert_path, reload=args.enable_cert_reload)
        except TlsError as error:
            parser.error(str(error))
    elif args.cert_path is not None or args.enable_cert_reload:
        parser.error("--cert-path and --enable-cert-reload need --secure-serving (it is off)")
    options = RouterOptions(
        host=args.host,
        grpc_port=args.grpc_port,
        grpc_health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        settings=RouterSettings(
            max_request_body_bytes=args.max_request_body_bytes,
            max_buffered_request_bytes=args.max_buffered_request_bytes,
            default_body_mode=BodyMode(args.body_mode),
        ),
        drain_timeout=args.drain_timeout,
        drain_notice=args.drain_notice,
        tls=tls,
    )
    return table, options, args.log_level


async def serve(table: RoutingTable, options: RouterOptions) -> None:
    """Run until SIGTERM (drain, then stop) or SIGINT / a second signal (stop now)."""
    loop = asyncio.get_running_loop()
    stop_now, drain_then_stop = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if drain_then_stop.is_set() or sig is signal.SIGINT:
            stop_now.set()
        drain_then_stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    server = RouterServer(table, options)
    try:
        await server.start()
        log.info("routing %d names to %d models", len(table.names), len(table.models))
        await drain_then_stop.wait()
        if not stop_now.is_set():
            drain = asyncio.create_task(server.drain())
            stopper = asyncio.create_task(stop_now.wait())
            await asyncio.wait({drain, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (drain, stopper):
                task.cancel()
    finally:
        await server.stop()
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    table, options, log_level = parse_args(argv)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        asyncio.run(serve(table, options))
    except OSError as exc:  # typically a port already in use
        print(f"bbr: cannot serve: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "bind" in str(exc).lower() or "port" in str(exc).lower():
            print(f"bbr: cannot serve: {exc}", file=sys.stderr)
            return 1
        raise
    return 0
