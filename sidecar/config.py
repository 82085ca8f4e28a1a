"""Sidecar options (command-line flags) and the prefill-host allowlist."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from sidecar.guard import Network, PoolMembership, PrefillGuard, parse_allowlist, parse_ports
from sidecar.pd import SUPPORTED_CONNECTORS

__all__ = ["SidecarOptions", "build_parser", "options_from_args", "parse_allowlist"]


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    port: int = 8000
    host: str = "0.0.0.0"
    model_server_host: str = "127.0.0.1"
    model_server_port: int = 8200
    kv_connector: str = "nixlv2"
    # Prefill should take well under a second; a stuck prefill pod must not hold the client.
    prefill_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    # Longest silence between two chunks of a (streaming) model-server answer.
    read_timeout_s: float = 300.0
    max_conns_per_host: int = 100
    max_body_bytes: int = 16 * 1024 * 1024
    # The SSRF guard (sidecar.guard): on when an allowlist or a pool name is set.
    prefill_allowlist: tuple[Network, ...] | None = None
    prefill_pool_dns: str | None = None
    prefill_ports: frozenset[int] | None = None  # None = any port (only with the guard on)
    # The client's credentials (Authorization, Cookie, X-Api-Key) go to the local model server,
    # never to the prefill pod unless this is set: a prefill host is named by a header, and a
    # credential must not follow wherever a header points.
    forward_credentials_to_prefill: bool = False
    metrics_port: int = 0  # 0 = no metrics listener
    tracing: bool = False  # OTLP spans of the two legs (sidecar/tracing.py)

    def __post_init__(self) -> None:
        if self.kv_connector not in SUPPORTED_CONNECTORS:
            raise ValueError(
                f"--kv-connector {self.kv_connector!r} is not supported; "
                f"choose one of {', '.join(SUPPORTED_CONNECTORS)}"
            )
        for name in ("prefill_timeout_s", "connect_timeout_s", "read_timeout_s"):
            # "not 0 < x < inf", not "x <= 0": NaN fails every comparison, so it passed the old check,
            # as did inf (float() takes "nan", "inf", "1e400"); neither is a timeout that ever fires.
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        for name in ("port", "model_server_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ValueError(f"{name} must be a TCP port, got {getattr(self, name)}")
        if not 0 <= self.metrics_port < 65536:  # 0 = off; anything else failed only at bind time
            raise ValueError(f"metrics_port must be a TCP port or 0, got {self.metrics_port}")
        if self.max_conns_per_host < 1 or self.max_body_bytes < 1:
            raise ValueError("max_conns_per_host and max_body_bytes must be >= 1")

    @property
    def ssrf_protection(self) -> bool:
        return self.prefill_allowlist is not None or self.prefill_pool_dns is not None

    def guard(self) -> PrefillGuard | None:
        """The SSRF guard these options describe, or None when it is off."""
        if not self.ssrf_protection:
            return None
        pool = PoolMembership(self.prefill_pool_dns) if self.prefill_pool_dns else None
        return PrefillGuard(self.prefill_allowlist or (), pool, self.prefill_ports)


def build_parser() -> argparse.ArgumentParser:
    d = SidecarOptions()
    p = argparse.ArgumentParser(
        prog="python -m sidecar", description="P/D sidecar for decode pods (llm-d nixlv2 protocol)."
    )
    p.add_argument("--port", type=int, default=d.port, help="listen port (the InferencePool targetPort)")
    p.add_argument("--host", default=d.host, help="listen address")
    p.add_argument("--model-server-port", type=int, default=d.model_server_port, help="local vLLM port")
    p.add_argument("--model-server-host", default=d.model_server_host)
    p.add_argument("--kv-connector", default=d.kv_connector, help="P/D protocol: nixlv2")
    p.add_argument(
        "--prefill-timeout",
        type=float,
        default=d.prefill_timeout_s,
        metavar="SECONDS",
        help="whole prefill leg; on expiry the request is prefilled locally",
    )
    p.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s, metavar="SECONDS")
    p.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout_s,
        metavar="SECONDS",
        help="longest wait for the next bytes from the local model server",
    )
    p.add_argument(
        "--max-conns-per-host",
        type=int,
        default=d.max_conns_per_host,
        help="connections to one prefill pod at once (the local model server's are not limited)",
    )
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument(
        "--enable-ssrf-protection",
        action="store_true",
        help="only prefill on hosts in --prefill-allowlist or --prefill-pool-dns (403 otherwise)",
    )
    p.add_argument(
        "--prefill-allowlist",
        default="",
        metavar="CIDR[,CIDR...]",
        help="IPs/CIDRs allowed in x-prefiller-host-port (the pod CIDR); 'private' = RFC 1918, "
        "100.64.0.0/10 and fc00::/7",
    )
    p.add_argument(
        "--prefill-pool-dns",
        default="",
        metavar="NAME",
        help="allow the IPs this name resolves to: a headless Service selecting the prefill pods",
    )
    p.add_argument(
        "--prefill-ports",
        default="",
        metavar="PORT[,PORT...]",
        help="with the guard on, only these prefill ports (the model-server port)",
    )
    p.add_argument(
        "--forward-credentials-to-prefill",
        action="store_true",
        help="send the client's Authorization/Cookie/X-Api-Key to the prefill pod too (default: "
        "only to the local model server)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=d.metrics_port,
        help="serve the sidecar's own Prometheus metrics here (0 = off)",
    )
    p.add_argument(
        "--tracing",
        choices=["true", "false"],
        nargs="?",
        const="true",
        default="false",
        help="export OTLP spans of the prefill and decode legs, configured by the OTEL_* environment",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def options_from_args(args: argparse.Namespace) -> SidecarOptions:
    allowlist = parse_allowlist(args.prefill_allowlist) if args.prefill_allowlist else None
    pool_dns = args.prefill_pool_dns.strip() or None
    ports = parse_ports(args.prefill_ports) if args.prefill_ports else None
    if args.enable_ssrf_protection and allowlist is None and pool_dns is None:
        raise ValueError("--enable-ssrf-protection needs --prefill-allowlist or --prefill-pool-dns")
    if not args.enable_ssrf_protection:
        for flag, value in (
            ("--prefill-allowlist", allowlist),
            ("--prefill-pool-dns", pool_dns),
            ("--prefill-ports", ports),
        ):
            if value is not None:
                raise ValueError(f"{flag} needs --enable-ssrf-protection")
    return SidecarOptions(
        port=args.port,
        host=args.host,
        model_server_host=args.model_server_host,
        model_server_port=args.model_server_port,
        kv_connector=args.kv_connector,
        prefill_timeout_s=args.prefill_timeout,
        connect_timeout_s=args.connect_timeout,
        read_timeout_s=args.read_timeout,
        max_conns_per_host=args.max_conns_per_host,
        max_body_bytes=args.max_body_bytes,
        prefill_allowlist=allowlist,
        prefill_pool_dns=pool_dns,
        prefill_ports=ports,
        forward_credentials_to_prefill=args.forward_credentials_to_prefill,
        metrics_port=args.metrics_port,
        tracing=args.tracing == "true",
    )
