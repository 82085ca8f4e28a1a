"""Every Service port a gateway dials for ext_proc (the EPPs' and the body router's ``grpc-ext-proc``)
declares an HTTP/2 protocol, with or without TLS on it: gRPC needs HTTP/2, and gateways choose the
upstream HTTP version from the Service's appProtocol. Istio's rule is the strictest in use (and
agentgateway reads Services through the same conversion), so it is the one checked here."""

from __future__ import annotations

from typing import Any

import pytest

from render.engine import RenderResult
from tests.pulumi_llmd.components.test_multi_model import entry
from tests.support.stacks import render_config

# What Istio 1.30.3 makes of a Service port (pkg/config/kube/conversion.go ConvertProtocol, then
# pkg/config/protocol/instance.go Parse): appProtocol wins over the port name; "kubernetes.io/h2c"
# is HTTP2; otherwise the part before the first "-", case-insensitive. Only HTTP2, GRPC and GRPC-Web
# get an HTTP/2 cluster (cluster_builder.go setUpstreamProtocol, IsHTTP2); "https" is opaque TLS,
# dialled as HTTP/1.1 even under a DestinationRule's TLS (no h2 ALPN either: cluster_tls.go).
ISTIO_HTTP2 = {"http2", "grpc", "grpc-web"}


def istio_speaks_http2(port: dict[str, Any]) -> bool:
    name = port.get("appProtocol", port.get("name", ""))
    if name == "kubernetes.io/h2c":
        return True
    if name.lower().startswith("grpc-web"):
        return True
    return name.split("-", 1)[0].lower() in ISTIO_HTTP2


def ext_proc_ports(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {
        service["metadata"]["name"]: port
        for service in result.manifests("Service")
        for port in service["spec"]["ports"]
        if port["name"] == "grpc-ext-proc"
    }


def two_models(provider: str, secure: bool) -> dict[str, Any]:
    # agentgateway always dials the EPP over TLS (the config refuses a plaintext one there).
    epp = {"secureServing": secure or provider == "agentgateway"}
    return {
        "platform": "kind",
        "name": "mm",
        "gateway": {"provider": provider, "install": False},
        "models": [entry("llama", epp=epp), entry("qwen", epp=epp)],
        "bodyRouter": {"secureServing": secure},
    }


@pytest.mark.parametrize("provider", ["istio", "agentgateway"])
@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plaintext"])
def test_every_ext_proc_port_is_http2_to_the_gateway(provider: str, secure: bool) -> None:
    ports = ext_proc_ports(render_config(two_models(provider, secure)))
    assert set(ports) == {"mm-body-router", "mm-llama-epp", "mm-qwen-epp"}
    for service, port in ports.items():
        assert istio_speaks_http2(port), f"{service}: appProtocol {port.get('appProtocol')!r} is not HTTP/2"
        assert port["protocol"] == "TCP"


def test_the_istio_rule_as_written_here() -> None:
    assert istio_speaks_http2({"name": "grpc-ext-proc", "appProtocol": "kubernetes.io/h2c"})
    assert istio_speaks_http2({"name": "x", "appProtocol": "HTTP2"})
    assert istio_speaks_http2({"name": "grpc-ext-proc"})
    # appProtocol overrides a gRPC port name: https is TLS to Istio, and TLS is TCP, not HTTP.
    assert not istio_speaks_http2({"name": "grpc-ext-proc", "appProtocol": "https"})
