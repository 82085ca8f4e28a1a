"""``python -m epp``: llm-d-compatible flags → RuntimeOptions + ServerOptions → a running EPP.

Flag names and defaults follow the llm-d router where one exists (``--pool-name``, ``--grpc-port``,
``--refresh-metrics-interval``, ``--secure-serving`` (on by default, self-signed without
``--cert-path``), ``--enable-cert-reload`` ...). One addition: ``--endpoints-file`` offers static
discovery instead of Kubernetes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import math
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from epp.server import EppServer, ServerOptions, StreamSettings
from epp.server.cliargs import boolean, distinct_ports, port, positive_int
from epp.server.listeners import Transport
from epp.server.stream import BodyMode
from epp.server.tls import CertificateSource, TlsError

if TYPE_CHECKING:
    from epp.runtime import Runtime, RuntimeOptions
    from epp.scheduling.framework import SaturationDetector

log = logging.getLogger("epp")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds, either a plain number (``0.05``) or a Go duration as llm-d takes it (``50ms``, ``1m30s``)."""
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(
                f"not a duration: {text!r} (use seconds or e.g. 50ms, 2s)"
            ) from None
        value = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(value):  # float() takes "nan", "inf" and "1e400"; no loop can wait that long
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use seconds or e.g. 50ms, 2s)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"duration must not be negative: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m epp",
        description="Endpoint picker for Envoy ext_proc (Gateway API Inference Extension protocol).",
    )
    pool = parser.add_argument_group("endpoints (exactly one of --pool-name / --endpoints-file)")
    pool.add_argument("--pool-name", help="InferencePool to watch in Kubernetes")
    pool.add_argument("--pool-namespace", default="default", help="namespace of the pool (default: default)")
    pool.add_argument("--pool-group", default="inference.networking.k8s.io", help="API group of the pool")
    pool.add_argument(
        "--endpoints-file", type=Path, help="static endpoints (YAML/JSON), re-read when it changes"
    )
    pool.add_argument("--served-models", help="comma-separated model names; any other model gets 404")
    pool.add_argument(
        "--ha-enable-leader-election",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        help="active-passive HA: only the replica holding the pool's Lease is ready (needs POD_NAME)",
    )

    config = parser.add_mutually_exclusive_group()
    config.add_argument("--config-file", type=Path, help="EndpointPickerConfig YAML file")
    config.add_argument("--config-text", help="EndpointPickerConfig YAML text")

    net = parser.add_argument_group("listeners")
    net.add_argument("--host", default="0.0.0.0", help="bind address of all listeners (default: 0.0.0.0)")
    net.add_argument("--grpc-port", type=port, default=9002, help="ext_proc gRPC port")
    net.add_argument("--grpc-health-port", type=port, default=9003, help="gRPC health port")
    net.add_argument("--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    net.add_argument(
        "--transport",
        choices=[t.value for t in Transport],
        default=Transport.H2.value,
        help="gRPC server of the ext_proc and health ports: h2 (default; the asyncio HTTP/2 server in "
        "epp.transport, under half of grpc.aio's CPU per message, and it accepts TLS clients that "
        "offer no ALPN, as kgateway's ext_proc cluster does) or grpc (grpc.aio, the reference)",
    )
    net.add_argument(
        "--secure-serving",
        type=boolean,
        nargs="?",
        const=True,
        default=True,
        help="serve ext_proc over TLS (default true, as upstream; gateways dial the EPP over TLS "
        "without verification); health and metrics stay plaintext for kubelet probes and scrapers",
    )
    net.add_argument(
        "--cert-path",
        type=Path,
        help="directory holding tls.crt and tls.key (e.g. a mounted kubernetes.io/tls Secret); "
        "unset: a self-signed certificate is made at start",
    )
    net.add_argument(
        "--enable-cert-reload",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        help="re-read --cert-path's pair when it changes and serve new connections with it (no restart)",
    )

    tuning = parser.add_argument_group("behaviour")
    tuning.add_argument("--refresh-metrics-interval", type=duration, default=0.05, help="scrape period")
    tuning.add_argument(
        "--refresh-metrics-idle-interval",
        type=duration,
        default=0.5,
        help="scrape period of a quiet pod (idle, unchanged, nothing routed to it since); 0 (or "
        "anything not above --refresh-metrics-interval) scrapes every pod every tick",
    )
    tuning.add_argument(
        "--metrics-name-filter",
        type=boolean,
        nargs="?",
        const=True,
        default=True,
        help="ask each pod for only the metrics read (name[] parameters; vLLM honours them on "
        "/metrics/), once that page is checked against the full one; false: always the full page",
    )
    tuning.add_argument("--metrics-staleness-threshold", type=duration, default=2.0, help="stale metrics age")
    tuning.add_argument(
        "--max-request-body-bytes", type=positive_int, default=4 * 1024 * 1024, help="larger bodies get 413"
    )
    tuning.add_argument(
        "--max-buffered-request-bytes",
        type=positive_int,
        default=256 * 1024 * 1024,
        help="request bytes all streams may hold together; beyond it new bodies get 503",
    )
    tuning.add_argument(
        "--body-mode",
        choices=[m.value for m in BodyMode],
        default=BodyMode.FULL_DUPLEX_STREAMED.value,
        help="assumed request body mode when the proxy does not announce one",
    )
    tuning.add_argument(
        "--decision-timeout",
        type=duration,
        default=30.0,
        help="longest scheduling wait; with flow control, raised to cover the queue's TTL",
    )
    tuning.add_argument(
        "--release-stream-after-routing",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        help="end each ext_proc stream once the request is routed, so an EPP restart cannot break "
        "responses in progress (no token usage, TTFT or in-flight tracking from responses then)",
    )
    tuning.add_argument(
        "--drain-timeout",
        type=duration,
        default=30.0,
        help="after SIGTERM, the longest wait for open streams to finish before exiting",
    )
    tuning.add_argument(
        "--drain-notice",
        type=duration,
        default=5.0,
        help="after SIGTERM, how long new streams are still served while the gateway notices the "
        "readiness change (at most the drain timeout)",
    )
    tuning.add_argument(
        "--tracing",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        help="export an OTLP span per scheduling decision, configured by the OTEL_* environment "
        "(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER[_ARG]); off by default",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[RuntimeOptions, ServerOptions, str]:
    """Validate the command line; on a bad combination exit with status 2 and a message naming it."""
    from epp.runtime import RuntimeOptions

    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.pool_name) == bool(args.endpoints_file):
        parser.error("exactly one of --pool-name or --endpoints-file is required")
    if args.endpoints_file is not None and not args.endpoints_file.is_file():
        parser.error(f"--endpoints-file {args.endpoints_file}: no such file")
    distinct_ports(parser, args)
    config_text = _config_text(parser, args)
    tls = None
    if args.secure_serving:
        try:
            tls = CertificateSource(args.cert_path, reload=args.enable_cert_reload)
        except TlsError as error:
            parser.error(str(error))
    elif args.cert_path is not None or args.enable_cert_reload:
        parser.error("--cert-path and --enable-cert-reload need --secure-serving (it is off)")
    served = None
    if args.served_models:
        served = frozenset(m.strip() for m in args.served_models.split(",") if m.strip())
        if not served:
            parser.error("--served-models names no model")

    runtime_options = RuntimeOptions(
        config_text=config_text,
        pool_name=args.pool_name,
        pool_namespace=args.pool_namespace,
        pool_group=args.pool_group,
        endpoints_file=args.endpoints_file,
        refresh_metrics_interval=args.refresh_metrics_interval,
        refresh_metrics_idle_interval=args.refresh_metrics_idle_interval,
        metrics_name_filter=args.metrics_name_filter,
        metrics_staleness_threshold=args.metrics_staleness_threshold,
        served_models=served,
        leader_election=args.ha_enable_leader_election,
        tracing=args.tracing,
    )
    server_options = ServerOptions(
        host=args.host,
        grpc_port=args.grpc_port,
        grpc_health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        stream=StreamSettings(
            max_request_body_bytes=args.max_request_body_bytes,
            max_buffered_request_bytes=args.max_buffered_request_bytes,
            decision_timeout=args.decision_timeout,
            default_body_mode=BodyMode(args.body_mode),
            release_after_routing=args.release_stream_after_routing,
        ),
        drain_timeout=args.drain_timeout,
        drain_notice=args.drain_notice,
        tls=tls,
        transport=Transport(args.transport),
    )
    return runtime_options, server_options, args.log_level


def _config_text(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    from epp.config.loader import DEFAULT_CONFIG

    if args.config_text is not None:
        return str(args.config_text)
    if args.config_file is not None:
        try:
            return str(args.config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            parser.error(f"--config-file {args.config_file}: {exc.strerror}")
        except UnicodeDecodeError as exc:  # a ValueError: without this, a traceback instead of exit 2
            parser.error(f"--config-file {args.config_file}: not UTF-8 text (byte {exc.start}: {exc.reason})")
    return DEFAULT_CONFIG


# Past the queue's TTL: the request is answered by flow control (429/503 with a reason), not cut off.
DECISION_TIMEOUT_MARGIN = 10.0
# With no TTL a queued request waits for its client; stay under the 1000 s ext_proc message_timeout
# that llm-d's Envoy config and Istio set (it applies when the body mode is not FULL_DUPLEX_STREAMED).
UNBOUNDED_QUEUE_DECISION_TIMEOUT = 900.0


def fit_decision_timeout(options: ServerOptions, longest_ttl: float) -> ServerOptions:
    """Raise ``--decision-timeout`` above the flow-control queue's longest TTL (0 = no TTL), so a
    queued request is answered by flow control's own 429/503 rather than by the stream's timeout."""
    needed = UNBOUNDED_QUEUE_DECISION_TIMEOUT if longest_ttl <= 0 else longest_ttl + DECISION_TIMEOUT_MARGIN
    current = options.stream.decision_timeout
    if current >= needed:
        return options
    log.info(
        "decision timeout raised from %gs to %gs to cover the flow-control queue TTL (%s)",
        current,
        needed,
        f"{longest_ttl:g}s" if longest_ttl > 0 else "none",
    )
    return dataclasses.replace(options, stream=dataclasses.replace(options.stream, decision_timeout=needed))


def flow_control_conflict(options: ServerOptions, detector: SaturationDetector) -> str | None:
    """Why these server options defeat the flow-control gate, or None. With
    ``--release-stream-after-routing`` the director hears each request complete as soon as it is
    routed, so in-flight counts stay at zero and a detector reading them would admit everything."""
    if options.stream.release_after_routing and detector.reads_in_flight:
        return (
            "--release-stream-after-routing cannot be combined with flow control gated by "
            f"{detector.name!r}: it counts requests in flight until their response ends, which a "
            "released stream never reports; use utilization-detector or keep the stream"
        )
    return None


async def serve(runtime: Runtime, options: ServerOptions) -> None:
    """Run until SIGTERM (drain, then stop) or SIGINT / a second signal (stop now)."""
    loop = asyncio.get_running_loop()
    stop_now, drain_then_stop = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if drain_then_stop.is_set() or sig is signal.SIGINT:
            stop_now.set()
        drain_then_stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    await runtime.start()
    server = EppServer(runtime.director, options)
    try:
        await server.start()
        # Everything allocated so far (modules, protobuf descriptors, config) lives as long as the
        # process: keep it out of the collector's scans so request-path GC pauses stay short.
        gc.collect()
        gc.freeze()
        await drain_then_stop.wait()
        await runtime.step_down()  # with leader election, a standby takes over while this one drains
        if not stop_now.is_set():
            drain = asyncio.create_task(server.drain())
            stopper = asyncio.create_task(stop_now.wait())
            await asyncio.wait({drain, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (drain, stopper):
                task.cancel()
    finally:
        await server.stop()
        await runtime.stop()
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    runtime_options, server_options, log_level = parse_args(argv)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from epp.runtime import build_runtime
    from epp.scheduling.errors import ConfigError

    try:
        runtime = build_runtime(runtime_options)
    except ConfigError as exc:
        print(f"epp: invalid configuration: {exc}", file=sys.stderr)
        return 2
    flow_control = runtime.config.flow_control
    if flow_control is not None:
        if (conflict := flow_control_conflict(server_options, flow_control.detector)) is not None:
            print(f"epp: invalid configuration: {conflict}", file=sys.stderr)
            return 2
        server_options = fit_decision_timeout(server_options, flow_control.longest_ttl)
    try:
        asyncio.run(serve(runtime, server_options))
    except OSError as exc:  # typically a port already in use
        print(f"epp: cannot serve: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "bind" in str(exc).lower() or "port" in str(exc).lower():
            print(f"epp: cannot serve: {exc}", file=sys.stderr)
            return 1
        raise
    return 0
