"""CPU per ext_proc message and added latency of the EPP's two transports (``--transport h2``, the
asyncio HTTP/2 server in ``epp.transport``, and ``--transport grpc``, grpc.aio; issue 16).

Both run as ``epp.server.EppServer`` (the protocol layer, ``ExtProcStream``, and the listeners
``python -m epp`` starts) behind a fixed Director that sends every request to one stand-in model
server, each in its own process, so the only difference is the transport. Envoy (one worker)
sits in front; an open-loop client sends POSTs at a fixed rate through: Envoy alone (``direct``),
Envoy + ext_proc to the grpc.aio process, and Envoy + ext_proc to the h2 process, in slices that
alternate between the paths so background load hits all alike.

CPU per message = the EPP process's user + system CPU over a slice (``/proc/<pid>/stat``) divided
by the ext_proc messages Envoy counted both ways in that slice (``stream_msgs_sent`` +
``stream_msgs_received``). The machine's load average is printed with every table: numbers from a
busy machine are not comparable with quiet ones.

    python -m benchmarks.transport_cpu                       # 100/200/400 req/s, 10 s each
    python -m benchmarks.transport_cpu --rates 200 --duration 4 --tls          # as gateways dial
    python -m benchmarks.transport_cpu --tls --runs 5 --json out.json         # with the spread
    python -m benchmarks.transport_cpu --tls --alpn none --rates 200          # kgateway's TLS (h2 only)
    python -m benchmarks.transport_cpu --rates 200 --stream 24   # streamed answers, ~57 messages each

Goal (issue 16): <= 40 µs CPU per message; <= 0.7 ms added p50 and <= 1 ms added p99 at 200 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.epp_latency import BODY, ext_proc_messages, measure_slice, open_loop, percentile
from epp.server.stream import BodyMode
from epp.types import Decision
from localrun import EnvoyGateway, ManagedProcess, free_port, grpc_ok, http_ok

TRANSPORTS = ("grpc", "h2")
MODEL = "tiny"


# ---------------------------------------------------------------------------- the EPP under test


@dataclass
class FixedDirector:
    """Every request goes to ``endpoint``: the scheduler is not what this benchmark measures."""

    endpoint: str
    # As the scheduling director without flow control (the EPP's default): handle_request never
    # waits, so the request phase is routed from the h2 transport's read path.
    decides_nowait: bool = True

    def ready(self) -> bool:
        return True

    def __post_init__(self) -> None:
        # One answer for every request, built once: the Director's work is not what is measured
        # (an import and a Decision per call here once added a few µs per request to the EPP rows).
        self._decision = Decision(endpoints=(self.endpoint,))

    async def handle_request(self, request: Any) -> Any:
        return self._decision

    def handle_response_headers(self, request: Any, served: str | None, status: int) -> None:
        pass

    def handle_response_complete(self, request: Any, usage: Any, failed: bool) -> None:
        pass


def minimal_handler(endpoint: str) -> Any:
    """The least an ext_proc server can do for Envoy in FULL_DUPLEX_STREAMED mode (route every
    request to ``endpoint``, pass bodies through), so that what is measured is the transport."""
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

    from epp.server import messages

    routed = messages.routed_request_headers({"x-gateway-destination-endpoint": endpoint}, [], endpoint)
    continue_response = messages.continue_response_headers()
    request_trailers = messages.request_trailers_done()
    response_trailers = messages.response_trailers_done()

    def respond(request: Any) -> Any:
        """The answer to a response-phase message (it never waits), else None."""
        kind = request.WhichOneof("request")
        if kind == "response_body":
            chunk = request.response_body
            return ext_proc.ProcessingResponse(
                response_body=ext_proc.BodyResponse(
                    response=ext_proc.CommonResponse(
                        body_mutation=ext_proc.BodyMutation(
                            streamed_response=ext_proc.StreamedBodyResponse(
                                body=chunk.body, end_of_stream=chunk.end_of_stream
                            )
                        )
                    )
                )
            )
        if kind == "response_headers":
            return continue_response
        if kind == "response_trailers":
            return response_trailers
        return None

    def dispatch_nowait(request: Any, send_nowait: Any) -> bool:
        answer = respond(request)
        if answer is None:
            return False
        send_nowait(answer)
        return True

    async def handle(requests: AsyncIterator[Any], send: Any) -> None:
        # On h2, response-phase messages are answered inline, as ExtProcStream's are
        # (epp.server.processor registers ExtProcStream.dispatch_nowait the same way).
        set_inline = getattr(requests, "set_inline", None)
        if set_inline is not None:
            set_inline(dispatch_nowait)
        body: list[bytes] = []
        async for request in requests:
            answer = respond(request)
            if answer is not None:
                await send(answer)
                continue
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                if request.request_headers.end_of_stream:
                    await send(routed)
            elif kind == "request_body":
                body.append(request.request_body.body)
                if request.request_body.end_of_stream:
                    await send(routed)
                    for message in messages.streamed_request_body(b"".join(body)):
                        await send(message)
            elif kind == "request_trailers":
                await send(request_trailers)

    return handle


async def serve(
    transport: str,
    port: int,
    health_port: int,
    endpoint: str,
    tls_dir: Path | None,
    handler_name: str = "epp",
) -> None:
    """One EPP under test: ``EppServer`` (what ``python -m epp --transport ...`` runs) with a fixed
    Director, or the same listeners (``epp.server.listeners``) around the minimal handler."""
    from prometheus_client import CollectorRegistry

    from epp.server import EppServer, ServerMetrics, ServerOptions, Transport
    from epp.server.health import HealthStatus
    from epp.server.listeners import make_listener
    from epp.server.tls import CertificateSource
    from epp.transport import ext_proc_method, health_methods

    director = FixedDirector(endpoint)
    options = ServerOptions(
        host="127.0.0.1",
        grpc_port=port,
        grpc_health_port=health_port,
        metrics_port=free_port(),
        tls=CertificateSource(tls_dir) if tls_dir is not None else None,
        transport=Transport(transport),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if handler_name == "epp":
        server = EppServer(director, options, ServerMetrics(CollectorRegistry()))
        await server.start()
        _freeze_startup_objects()
        await stop.wait()
        await server.stop(0)
        return
    listeners = [
        make_listener(
            options.transport,
            [ext_proc_method(minimal_handler(endpoint))],
            options.host,
            port,
            tls=options.tls,
            options=options.transport_options(),
        ),
        make_listener(
            options.transport, health_methods(HealthStatus(director.ready).status), options.host, health_port
        ),
    ]
    for listener in listeners:
        await listener.start()
    _freeze_startup_objects()
    await stop.wait()
    for listener in listeners:
        await listener.shutdown(0)


def _freeze_startup_objects() -> None:
    """As ``epp.cli`` does once the server is up: start-up objects (modules, protobuf descriptors)
    leave the collector's scans, so that the request path's collections are the EPP's own."""
    gc.collect()
    gc.freeze()


def make_certificate(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=epp"),
            *("-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


# ---------------------------------------------------------------------------- measurement


@dataclass
class Row:
    path: str  # "direct" | "grpc" | "h2"
    mode: str
    rate: float
    seconds: float = 0.0
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    messages: int = 0
    streams: int = 0

    def summary(self, direct: Row | None) -> dict[str, Any]:
        lat = sorted(self.latencies)
        p = {q: percentile(lat, q / 100) * 1000 for q in (50, 90, 99)}
        out: dict[str, Any] = {
            "path": self.path,
            "mode": self.mode,
            "rate": self.rate,
            "achieved_rps": self.ok / self.seconds if self.seconds else 0.0,
            "ok": self.ok,
            "errors": self.errors,
            **{f"p{q}_ms": v for q, v in p.items()},
            "cpu_ms_per_request": {k: v * 1000 / max(1, self.ok + self.errors) for k, v in self.cpu.items()},
        }
        if direct is not None:
            base = sorted(direct.latencies)
            for q in (50, 90, 99):
                out[f"added_p{q}_ms"] = p[q] - percentile(base, q / 100) * 1000
        if self.messages:
            out["messages_per_request"] = self.messages / max(1, self.streams)
            out["epp_cpu_us_per_message"] = self.cpu.get("epp", 0.0) * 1e6 / self.messages
        return out


def run(
    rates: Sequence[float],
    duration: float,
    rounds: int,
    modes: Sequence[BodyMode],
    tls: bool,
    log_dir: Path,
    handler: str = "epp",
    loop: str = "asyncio",
    alpn: tuple[str, ...] = ("h2",),
    runs: int = 1,
    stream: int = 0,
) -> list[dict[str, Any]]:
    backend_port = free_port()
    backend_command = [
        sys.executable,
        "-m",
        "localrun.standin",
        "--port",
        str(backend_port),
        "--model",
        MODEL,
    ]
    if stream:
        # Events 1 ms apart reach Envoy, and the EPP, one at a time, as a model server's tokens do
        # (back to back, Envoy passes a varying number per ext_proc message).
        backend_command += ["--stream-chunks", str(stream), "--token-interval-ms", "1"]
    backend = ManagedProcess(
        backend_command,
        ready=http_ok(f"http://127.0.0.1:{backend_port}/health"),
        name="backend",
        log_dir=log_dir,
    )
    endpoint = f"127.0.0.1:{backend_port}"
    cert_dir = make_certificate(log_dir / "certs") if tls else None
    epps: dict[str, tuple[ManagedProcess, int]] = {}
    # grpc.aio refuses TLS clients that offer no ALPN (kgateway's way): only h2 can be measured so.
    transports = [t for t in TRANSPORTS if not (tls and not alpn and t == "grpc")]
    for transport in transports:
        port, health_port = free_port(), free_port()
        command = [sys.executable, "-m", "benchmarks.transport_cpu", "serve", "--transport", transport]
        command += ["--port", str(port), "--health-port", str(health_port), "--endpoint", endpoint]
        command += ["--handler", handler, "--loop", loop]
        if cert_dir is not None:
            command += ["--tls-dir", str(cert_dir)]
        process = ManagedProcess(
            command, ready=grpc_ok(health_port), name=f"epp-{transport}", log_dir=log_dir
        )
        epps[transport] = (process, port)
    results: list[dict[str, Any]] = []
    with backend:
        for process, _ in epps.values():
            process.start()
        try:
            for mode in modes:
                rows = _run_mode(
                    rates,
                    duration,
                    rounds,
                    mode,
                    (tls, alpn),
                    runs,
                    epps,
                    backend,
                    endpoint,
                    log_dir,
                    request_body(stream),
                )
                for row in rows:
                    row["handler"] = handler
                    row["loop"] = loop
                    row["stream"] = stream
                    results.append(row)
        finally:
            for process, _ in epps.values():
                process.stop()
    return results


def request_body(stream: int) -> bytes:
    """The benchmark's request: a plain completion, or (``stream`` tokens) a streamed one, whose
    answer reaches the EPP as one ext_proc message per SSE event (most messages of a real request)."""
    if not stream:
        return BODY
    return json.dumps(
        {
            "model": MODEL,
            "prompt": "Say something short about gateways.",
            "max_tokens": stream,
            "stream": True,
        }
    ).encode()


def _run_mode(
    rates: Sequence[float],
    duration: float,
    rounds: int,
    mode: BodyMode,
    dial: tuple[bool, tuple[str, ...]],
    runs: int,
    epps: dict[str, tuple[ManagedProcess, int]],
    backend: ManagedProcess,
    endpoint: str,
    log_dir: Path,
    body: bytes,
) -> list[dict[str, Any]]:
    pool = [endpoint]
    tls, alpn = dial
    gateways: dict[str, EnvoyGateway] = {
        "direct": EnvoyGateway(free_port(), free_port(), pool, ext_proc=False, log_dir=log_dir / "direct")
    }
    for transport, (_, port) in epps.items():
        gateways[transport] = EnvoyGateway(
            free_port(),
            port,
            pool,
            mode=mode,
            ext_proc_tls=tls,
            ext_proc_alpn=alpn,
            log_dir=log_dir / f"{transport}-{mode.value}",
        )
    results = []
    for gateway in gateways.values():
        gateway.start()
    try:
        for gateway in gateways.values():  # warm connections and first-request code paths
            asyncio.run(open_loop(gateway.url + "/v1/completions", 50, 1.0, body))
        for run_index, rate in ((i, rate) for rate in rates for i in range(runs)):
            rows = {path: Row(path, mode.value, rate) for path in gateways}
            for _ in range(rounds):
                for path, gateway in gateways.items():
                    processes = {"envoy": gateway.process, "backend": backend}
                    if path in epps:
                        processes["epp"] = epps[path][0]
                    before = ext_proc_messages(gateway)
                    latencies, ok, errors, seconds, cpu = measure_slice(
                        gateway.url + "/v1/completions", rate, duration / rounds, processes, body
                    )
                    after = ext_proc_messages(gateway)
                    row = rows[path]
                    row.latencies += latencies
                    row.ok += ok
                    row.errors += errors
                    row.seconds += seconds
                    row.cpu = {k: row.cpu.get(k, 0.0) + v for k, v in cpu.items()}
                    row.messages += after[0] - before[0]
                    row.streams += after[1] - before[1]
            for row in rows.values():
                summary = row.summary(rows["direct"] if row.path != "direct" else None)
                summary["load_average"] = os.getloadavg()
                summary["tls"] = tls
                summary["alpn"] = list(alpn) if tls else None
                summary["run"] = run_index
                print(_line(summary), file=sys.stderr, flush=True)
                results.append(summary)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    return results


def _line(s: dict[str, Any]) -> str:
    line = (
        f"{s['path']:6s} {s['mode']:21s} {s['rate']:4.0f} rps: ok {s['ok']} err {s['errors']}"
        f"  p50 {s['p50_ms']:.2f} p90 {s['p90_ms']:.2f} p99 {s['p99_ms']:.2f} ms"
    )
    if "added_p50_ms" in s:
        line += f"  added p50 {s['added_p50_ms']:.2f} p90 {s['added_p90_ms']:.2f} p99 {s['added_p99_ms']:.2f}"
    if "epp_cpu_us_per_message" in s:
        line += f"  EPP {s['epp_cpu_us_per_message']:.1f} µs/msg ({s['messages_per_request']:.1f} msg/req)"
    load = s["load_average"]
    return line + f"  load {load[0]:.2f}"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for s in results:
        cpu = s["cpu_ms_per_request"]
        rows.append(
            [
                s["path"],
                s["mode"] + _dial(s),
                f"{s['rate']:g}",
                f"{s['achieved_rps']:.0f}",
                f"{s['ok']}/{s['errors']}",
                f"{s['p50_ms']:.2f}",
                f"{s['p90_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                f"{s['added_p50_ms']:.2f}" if "added_p50_ms" in s else "-",
                f"{s['added_p90_ms']:.2f}" if "added_p90_ms" in s else "-",
                f"{s['added_p99_ms']:.2f}" if "added_p99_ms" in s else "-",
                f"{cpu['epp']:.3f}" if "epp" in cpu else "-",
                f"{s['epp_cpu_us_per_message']:.1f}" if "epp_cpu_us_per_message" in s else "-",
                f"{cpu.get('envoy', 0.0):.3f}",
                f"{s['load_average'][0]:.2f}",
            ]
        )
    headers = ["transport", "mode", "rate", "achieved", "ok/err", "p50 ms", "p90 ms", "p99 ms", "added p50"]
    headers += ["added p90", "added p99", "EPP CPU ms/req", "EPP µs/msg", "Envoy CPU ms/req", "load 1m"]
    return report.markdown_table(headers, rows)


def _dial(s: dict[str, Any]) -> str:
    if not s.get("tls") or s["path"] == "direct":
        return ""
    return " TLS" + (f" ALPN {','.join(s['alpn'])}" if s.get("alpn") else " no ALPN")


def spread(results: Sequence[dict[str, Any]]) -> str:
    """Per transport, mode and rate over the repeated runs: min / median / max of the EPP's CPU per
    message and of the added p50 and p99 (each run is its own interleaved measurement)."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for s in results:
        if s["path"] != "direct":
            groups.setdefault((s["path"], s["mode"] + _dial(s), s["rate"]), []).append(s)

    def mmm(values: list[float], digits: int) -> str:
        ordered = sorted(values)
        middle = (
            ordered[len(ordered) // 2] if len(ordered) % 2 else sum(ordered[len(ordered) // 2 - 1 :][:2]) / 2
        )
        return f"{ordered[0]:.{digits}f} / {middle:.{digits}f} / {ordered[-1]:.{digits}f}"

    rows = []
    for (path, mode, rate), runs in groups.items():
        rows.append(
            [
                path,
                mode,
                f"{rate:g}",
                str(len(runs)),
                mmm([r.get("epp_cpu_us_per_message", float("nan")) for r in runs], 1),
                mmm([r["added_p50_ms"] for r in runs], 2),
                mmm([r["added_p99_ms"] for r in runs], 2),
                mmm([r["load_average"][0] for r in runs], 1),
            ]
        )
    headers = ["transport", "mode", "rate", "runs", "EPP µs/msg min/median/max", "added p50 ms"]
    headers += ["added p99 ms", "load 1m"]
    return report.markdown_table(headers, rows)


# ---------------------------------------------------------------------------- frame layer alone


class _NullTransport(asyncio.Transport):
    """Takes writes and drops them: the frame layer measured without sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def frame_layer(messages: int, size: int) -> dict[str, float]:
    """CPU µs per echoed message on one stream, in process, without sockets: this transport
    (frames, flow control, message framing, the handler task's wakeup) against the h2 library's
    state machine alone (receive one DATA frame, send one; no asyncio, no handler), which is what
    deciding between "use h2" and "own frame layer" needs (issue 16)."""
    import time

    from epp.transport import frames as h2frames
    from epp.transport.connection import H2Connection
    from epp.transport.methods import bidi_method
    from epp.transport.options import TransportOptions

    results: dict[str, float] = {}
    request = struct.pack(">BL", 0, size) + b"x" * size
    data_frame = h2frames.frame(h2frames.FrameType.DATA, 0, 1, request)

    class Raw:
        """Bytes in, bytes out: the handler sees the raw message."""

        @staticmethod
        def FromString(data: bytes) -> Any:
            return Raw.Reply(data)

        class Reply:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def SerializeToString(self) -> bytes:
                return self.data

    async def echo(requests: AsyncIterator[Any], send: Any) -> None:
        async for message in requests:
            await send(message)

    async def ours() -> float:
        import hpack

        connection = H2Connection({"/b.E/Echo": bidi_method("/b.E/Echo", Raw, echo)}, TransportOptions())
        transport = _NullTransport()
        connection.connection_made(transport)
        request_headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/b.E/Echo"),
            (":authority", "x"),
        ]
        request_headers += [("content-type", "application/grpc"), ("te", "trailers")]
        block = bytes(hpack.Encoder().encode(request_headers))
        connection.data_received(
            h2frames.PREFACE
            + h2frames.settings_frame({h2frames.Setting.INITIAL_WINDOW_SIZE: 2**31 - 1})
            + h2frames.SETTINGS_ACK
            + h2frames.window_update(0, 2**31 - 1 - 65_535)
            + h2frames.frame(h2frames.FrameType.HEADERS, h2frames.Flag.END_HEADERS, 1, block)
        )
        await asyncio.sleep(0)
        started = time.process_time()
        for _ in range(messages):
            connection.data_received(data_frame)
            await asyncio.sleep(0)  # the handler task runs and sends its reply
        elapsed = time.process_time() - started
        assert transport.writes >= messages
        return elapsed * 1e6 / messages

    results["epp.transport"] = asyncio.run(ours())
    try:
        import h2.config
        import h2.connection
        import h2.events
    except ImportError:
        return results
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    for _ in range(2):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    client.send_headers(
        1, [(":method", "POST"), (":scheme", "http"), (":path", "/b.E/Echo"), (":authority", "x")]
    )
    client.increment_flow_control_window(2**30)
    client.increment_flow_control_window(2**30, 1)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    client.receive_data(server.data_to_send())
    inbound = []
    for _ in range(messages):
        client.send_data(1, request)
        inbound.append(client.data_to_send())
        if client.local_flow_control_window(1) < 2 * len(request):
            server.increment_flow_control_window(2**20)
            server.increment_flow_control_window(2**20, 1)
            client.receive_data(server.data_to_send())
    started = time.process_time()
    for chunk in inbound:
        for event in server.receive_data(chunk):
            if isinstance(event, h2.events.DataReceived):
                server.acknowledge_received_data(event.flow_controlled_length, 1)
        server.send_data(1, request)
        server.data_to_send()
    results["h2 library (frames only)"] = (time.process_time() - started) * 1e6 / messages
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transport_cpu", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command")
    frame_parser = sub.add_parser("frame-layer", help="in-process CPU per message: this transport vs h2")
    frame_parser.add_argument("--messages", type=int, default=20_000)
    frame_parser.add_argument("--size", type=int, default=200, help="bytes per message")
    serve_parser = sub.add_parser("serve", help="(internal) run one EPP under test")
    serve_parser.add_argument("--transport", choices=TRANSPORTS, required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--health-port", type=int, required=True)
    serve_parser.add_argument("--endpoint", required=True)
    serve_parser.add_argument("--tls-dir", type=Path)
    serve_parser.add_argument("--handler", choices=["epp", "minimal"], default="epp")
    serve_parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0, 400.0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per path and rate")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved slices the duration is cut into")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=[m.value for m in BodyMode],
        default=[BodyMode.FULL_DUPLEX_STREAMED.value],
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="Envoy dials the EPPs over TLS without verification (as gateways do)",
    )
    parser.add_argument(
        "--alpn",
        choices=["h2", "none"],
        default="h2",
        help="with --tls: offer ALPN h2 (Istio, agentgateway) or nothing (kgateway; grpc.aio refuses it, "
        "so only h2 is measured)",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="independent measurements per rate, for the spread table"
    )
    parser.add_argument(
        "--handler",
        choices=["epp", "minimal"],
        default="epp",
        help="epp: ExtProcStream + a fixed Director; minimal: route and pass bodies through (transport only)",
    )
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the EPP processes (uvloop must be importable; it is not a project dependency)",
    )
    parser.add_argument(
        "--stream",
        type=int,
        default=0,
        metavar="TOKENS",
        help="streamed answers of TOKENS SSE events each (one ext_proc message per event); 0: plain JSON",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.command == "frame-layer":
        print(f"load average: {os.getloadavg()}")
        for name, micros in frame_layer(args.messages, args.size).items():
            print(f"{name:28s} {micros:6.1f} µs CPU per echoed message")
        return 0
    if args.command == "serve":
        logging.basicConfig(level=logging.WARNING)
        if args.loop == "uvloop":
            import uvloop  # optional, not a project dependency: measured, not shipped

            uvloop.install()
        asyncio.run(
            serve(args.transport, args.port, args.health_port, args.endpoint, args.tls_dir, args.handler)
        )
        return 0
    if args.duration <= 0 or args.rounds <= 0 or args.runs <= 0 or any(rate <= 0 for rate in args.rates):
        parser.error("--duration, --rounds, --runs and --rates must be positive")
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="transport-cpu-") as log_dir:
        modes = [BodyMode(m) for m in args.modes]
        results = run(
            args.rates,
            args.duration,
            args.rounds,
            modes,
            args.tls,
            Path(log_dir),
            args.handler,
            args.loop,
            alpn=("h2",) if args.alpn == "h2" else (),
            runs=args.runs,
            stream=args.stream,
        )
    print(markdown(results))
    if args.runs > 1:
        print("\nSpread over the runs:\n")
        print(spread(results))
    print(f"\nload average after: {os.getloadavg()}  ({report.machine_description()})")
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
