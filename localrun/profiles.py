"""Gateway profiles: the local Envoy configured the way each provider's generated config drives the EPP.

``EnvoyGateway(..., **profile_options(GatewayProfile.ISTIO))`` gives the harness the processing
modes, timeouts, failure handling, metadata namespaces and upstream style the provider generates for
an InferencePool, as far as its source shows them (docs/gateways.md has the table and the files):

* ``KGATEWAY``: kgateway 2.1's Envoy data plane (internal/kgateway/extensions2/plugins/
  inferenceextension/endpointpicker/{plugin.go,backends.go}, main before the 2.2 rolling release):
  all six modes SEND/FULL_DUPLEX_STREAMED/SEND, message timeout 5 s, gRPC timeout 10 s, no mode
  override, ``envoy.lb.subset_hint`` forwarded and ``envoy.lb`` accepted, header_to_metadata plus a
  subset-load-balanced pool cluster falling back to any endpoint; its ext_proc cluster's
  UpstreamTlsContext has no ``alpn_protocols``, so the EPP is dialed offering no ALPN (grpc.aio
  refuses such a client; the h2 transport speaks HTTP/2 to it by prior knowledge).
* ``ISTIO``: Istio 1.30.3 (pilot/pkg/xds/filters/filters.go InferencePoolExtProc, route/route.go,
  cluster_builder.go applyOverrideHostPolicy, route/retry/retry.go): the same modes per route,
  message timeout 1000 s, gRPC timeout 10 s, ``envoy.lb`` both ways, override_host reading only the
  metadata, the served host reported back, round robin when nothing was picked, and Istio's default
  route retries (2, on connect-failure, refused-stream, unavailable, cancelled, retriable codes).
* ``AGENTGATEWAY``: agentgateway v1.4.1 is not Envoy; its own ext_proc client
  (crates/agentgateway/src/http/ext_proc.rs InferenceRouting::build, processing.rs) sends the same
  modes with no message timeout, forwards no metadata and reads the pick from the
  ``x-gateway-destination-endpoint`` header. Emulated with override_host on that header only,
  message timeout = the route timeout, no retries. Where the emulation ends: agentgateway answers 503
  when the pick is not one of the pool's endpoints (its "validated" destination mode) where Envoy
  falls back to round robin; it sends ``protocol_config`` on the first ext_proc message; its retries,
  connection limits and FailOpen load balancing are its own and are not reproduced.

``HARNESS`` is the harness's own default (kept for the tests and benchmarks written against it).
Every profile dials the EPP over TLS without verification, as all three providers do.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from epp.server.protocol import LB_METADATA_NAMESPACE, SUBSET_HINT_NAMESPACE
from epp.server.stream import BodyMode
from localrun.envoy import Upstream

# Istio's default route retry policy (pilot/pkg/networking/core/route/retry/retry.go defaultRetryOn).
ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


class GatewayProfile(Enum):
    HARNESS = "harness"
    KGATEWAY = "kgateway"
    ISTIO = "istio"
    AGENTGATEWAY = "agentgateway"


def profile_options(profile: GatewayProfile, *, route_timeout_seconds: float = 300.0) -> dict[str, Any]:
    """``EnvoyGateway``/``GatewayConfig`` keyword arguments for ``profile`` (failure mode stays the
    caller's: every provider takes it from the InferencePool's ``failureMode``)."""
    common: dict[str, Any] = {
        "mode": BodyMode.FULL_DUPLEX_STREAMED,
        "response_body": True,
        "ext_proc_tls": True,
        "allow_mode_override": False,
        "route_timeout_seconds": route_timeout_seconds,
    }
    if profile is GatewayProfile.HARNESS:
        return {}
    if profile is GatewayProfile.KGATEWAY:
        return {
            **common,
            "upstream": Upstream.SUBSET,
            "ext_proc_alpn": (),
            "message_timeout_seconds": 5.0,
            "grpc_timeout_seconds": 10.0,
            "forwarding_namespaces": (SUBSET_HINT_NAMESPACE,),
            "receiving_namespaces": (LB_METADATA_NAMESPACE,),
        }
    if profile is GatewayProfile.ISTIO:
        return {
            **common,
            "upstream": Upstream.OVERRIDE_HOST,
            "message_timeout_seconds": 1000.0,
            "grpc_timeout_seconds": 10.0,
            "forwarding_namespaces": (LB_METADATA_NAMESPACE,),
            "receiving_namespaces": (LB_METADATA_NAMESPACE,),
            "override_host_sources": ("metadata",),
            "retries": 2,
            "route_retry_on": ISTIO_RETRY_ON,
        }
    return {
        **common,
        "upstream": Upstream.OVERRIDE_HOST,
        # No per-message timeout in agentgateway; Envoy needs one, so the route's bounds both.
        "message_timeout_seconds": route_timeout_seconds,
        "forwarding_namespaces": (),
        "receiving_namespaces": (),
        "override_host_sources": ("header",),
        "retries": 0,
    }
