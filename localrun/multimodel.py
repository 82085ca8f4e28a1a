"""A local Envoy serving several models the way a multi-model stack's Gateway does: the body router
first, then each model's own endpoint picker, chosen by the route the router's header selects.

The request path::

    header mutation (drop client-sent steering and routing headers)
      -> ext_proc "bbr"  (python -m bbr: the body's model -> X-Gateway-Base-Model-Name, route cache cleared)
      -> ext_proc "epp"  (its gRPC service overridden per route: the matched model's EPP)
      -> router          (ORIGINAL_DST on the EPP's x-gateway-destination-endpoint)

One route per model matches ``X-Gateway-Base-Model-Name`` exactly, as the stack's HTTPRoute rules
do; a request the router did not mark matches none and gets Envoy's 404 (with ``router_fail_open``
a last route sends it to the first model, as the stack's FailOpen catch-all rule does). The body
router is asked before any route exists for the request; ``clear_route_cache`` in its answer makes
Envoy match again, and the EPP filter then finds the model's route and its per-route gRPC service
(``ExtProcPerRoute.overrides.grpc_service``), as Envoy-based gateways attach one picker per
InferencePool.

    with MultiModelGateway(listen_port=free_port(), router_port=bbr_port,
                           pools=[ModelPool("llama", epp_port_a, ("127.0.0.1:8001",)), ...]) as gw:
        ...
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from epp.server.protocol import DESTINATION_ENDPOINT, STEERING_HEADERS
from epp.server.state import BodyMode
from localrun.envoy import (
    _TYPES,
    ORIGINAL_DST_CLUSTER,
    GatewayConfig,
    Limits,
    _address,
    _epp_cluster,
    _ext_proc,
    _mark_decoded,
    _only_for_decoded_requests,
    _router,
    _tls_without_verification,
    start_envoy,
)
from localrun.process import ManagedProcess, free_port

BASE_MODEL_HEADER = "x-gateway-base-model-name"
MODEL_HEADER = "x-gateway-model-name"
ROUTER_CLUSTER = "body_router"
ROUTER_FILTER = "bbr"
EPP_FILTER = "epp"


@dataclass(frozen=True)
class ModelPool:
    """One model behind the gateway: the base model name its route matches, its EPP and its pods."""

    model: str
    epp_port: int
    endpoints: tuple[str, ...]

    @property
    def cluster(self) -> str:
        return f"epp_{self.model.replace('/', '_')}"


@dataclass(frozen=True)
class MultiModelConfig:
    listen_port: int
    router_port: int
    pools: tuple[ModelPool, ...]
    admin_port: int = field(default_factory=free_port)
    mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED
    # The body router's failure mode; the EPPs fail closed.
    router_fail_open: bool = False
    host: str = "127.0.0.1"
    route_timeout_seconds: float = 300.0
    message_timeout_seconds: float = 40.0
    # The body router and the EPPs serve TLS by default; the gateway dials them without verification.
    tls: bool = True

    def __post_init__(self) -> None:
        if not self.pools:
            raise ValueError("pools must name at least one model")
        if len({pool.model for pool in self.pools}) != len(self.pools):
            raise ValueError("each pool needs its own model name")


def _pool_config(config: MultiModelConfig, pool: ModelPool) -> GatewayConfig:
    """The single-model gateway settings of one pool: what its EPP filter and cluster are built from."""
    return GatewayConfig(
        listen_port=config.listen_port,
        ext_proc_port=pool.epp_port,
        pool_endpoints=pool.endpoints,
        admin_port=config.admin_port,
        mode=config.mode,
        host=config.host,
        message_timeout_seconds=config.message_timeout_seconds,
        ext_proc_tls=config.tls,
    )


def render_multi_model_bootstrap(config: MultiModelConfig) -> dict[str, Any]:
    hcm = {
        "@type": _TYPES + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "route_config": {"virtual_hosts": [{"name": "models", "domains": ["*"], "routes": _routes(config)}]},
        "http_filters": [
            _strip_client_routing_headers(),
            _mark_decoded(),
            _only_for_decoded_requests(_router_filter(config)),
            _only_for_decoded_requests(_epp_filter(config)),
            _router(),
        ],
    }
    listener = {
        "name": "gateway",
        "address": _address(config.host, config.listen_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {
        "admin": {"address": _address(config.host, config.admin_port)},
        "static_resources": {"listeners": [listener], "clusters": _clusters(config)},
    }


def _strip_client_routing_headers() -> dict[str, Any]:
    """A client may pick neither an endpoint nor a pool: the router's headers come from the router."""
    removed = sorted({*STEERING_HEADERS, BASE_MODEL_HEADER, MODEL_HEADER})
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _TYPES + "extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": name} for name in removed]},
        },
    }


def _router_filter(config: MultiModelConfig) -> dict[str, Any]:
    full_duplex = config.mode is BodyMode.FULL_DUPLEX_STREAMED
    return {
        "name": ROUTER_FILTER,
        "typed_config": {
            "@type": _TYPES + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": ROUTER_CLUSTER}},
            "failure_mode_allow": config.router_fail_open,
            "message_timeout": f"{config.message_timeout_seconds:g}s",
            # The router reads the request only (the stack's provider objects ask the same).
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": config.mode.value,
                "request_trailer_mode": "SEND" if full_duplex else "SKIP",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
        },
    }


def _epp_filter(config: MultiModelConfig) -> dict[str, Any]:
    """The single-model EPP filter, renamed; its default service is the first model's EPP, and every
    model's route overrides it with its own."""
    first = _ext_proc(_pool_config(config, config.pools[0]))
    first["name"] = EPP_FILTER
    first["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = config.pools[0].cluster
    return first


def _routes(config: MultiModelConfig) -> list[dict[str, Any]]:
    timeout = f"{config.route_timeout_seconds:g}s"
    routes = [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": BASE_MODEL_HEADER, "string_match": {"exact": pool.model}}],
            },
            "route": {"cluster": ORIGINAL_DST_CLUSTER, "timeout": timeout},
            "typed_per_filter_config": {EPP_FILTER: _epp_override(pool)},
        }
        for pool in config.pools
    ]
    if config.router_fail_open:
        first = config.pools[0]
        routes.append(
            {
                "match": {"prefix": "/"},
                "route": {"cluster": ORIGINAL_DST_CLUSTER, "timeout": timeout},
                "typed_per_filter_config": {EPP_FILTER: _epp_override(first)},
            }
        )
    return routes


def _epp_override(pool: ModelPool) -> dict[str, Any]:
    return {
        "@type": _TYPES + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
        "overrides": {"grpc_service": {"envoy_grpc": {"cluster_name": pool.cluster}}},
    }


def _clusters(config: MultiModelConfig) -> list[dict[str, Any]]:
    router: dict[str, Any] = {
        "name": ROUTER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": Limits().circuit_breakers(),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPES + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": ROUTER_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(config.host, config.router_port)}}]}
            ],
        },
    }
    if config.tls:
        # The body router serves grpc.aio, which closes a TLS connection that negotiated no ALPN.
        router["transport_socket"] = _tls_without_verification(("h2",))
    clusters = [router]
    for pool in config.pools:
        epp = _epp_cluster(_pool_config(config, pool))
        epp["name"] = pool.cluster
        epp["load_assignment"]["cluster_name"] = pool.cluster
        clusters.append(epp)
    clusters.append(
        {
            "name": ORIGINAL_DST_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "5s",
            "circuit_breakers": Limits().circuit_breakers(),
            "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_ENDPOINT},
        }
    )
    return clusters


class MultiModelGateway:
    """The Envoy process for one :class:`MultiModelConfig`; a context manager that always stops it."""

    def __init__(self, *, log_dir: Path | None = None, **options: Any) -> None:
        self.config = MultiModelConfig(**options)
        self._log_dir = log_dir or Path(tempfile.mkdtemp(prefix="envoy-mm-"))
        self.bootstrap_path = self._log_dir / "envoy-multimodel.json"
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.host}:{self.config.admin_port}"

    def start(self) -> MultiModelGateway:
        self._process = start_envoy(
            render_multi_model_bootstrap(self.config),
            self.bootstrap_path,
            self.admin_url,
            "envoy-multimodel",
            self._log_dir,
        )
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def log_tail(self) -> str:
        return self._process.log_tail() if self._process is not None else ""

    def __enter__(self) -> MultiModelGateway:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def write_routing_table(path: Path, models: dict[str, list[str]]) -> Path:
    """The body router's table (``--config-file``): base model -> every name that reaches it."""
    document = {"models": [{"model": model, "names": names} for model, names in models.items()]}
    path.write_text(json.dumps(document, indent=1))
    return path


def bbr_command(
    table: Path, grpc_port: int, health_port: int, metrics_port: int, *extra: str, drain_timeout: float = 0.0
) -> list[str]:
    """``python -m bbr`` on loopback (TLS on, as in a cluster); pass more flags in ``extra``."""
    return [
        sys.executable,
        "-m",
        "bbr",
        "--config-file",
        str(table),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--grpc-health-port",
        str(health_port),
        "--metrics-port",
        str(metrics_port),
        "--drain-timeout",
        f"{drain_timeout:g}",
        "--drain-notice",
        "0",
        *extra,
    ]
