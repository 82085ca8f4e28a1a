"""The gateway profiles render each provider's ext_proc settings (read from its source) into the
local Envoy bootstrap; Envoy itself accepts them (checked end to end in tests/e2e)."""

from __future__ import annotations

from typing import Any

import pytest

from localrun import GatewayConfig, GatewayProfile, Upstream, profile_options, render_bootstrap

POOL = ("127.0.0.1:8001", "127.0.0.1:8002")


def bootstrap(profile: GatewayProfile) -> dict[str, Any]:
    return render_bootstrap(GatewayConfig(1, 2, POOL, **profile_options(profile)))


def http_filters(document: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return list(hcm["http_filters"])


def ext_proc(document: dict[str, Any]) -> dict[str, Any]:
    wrapped = next(f for f in http_filters(document) if f["name"] == "envoy.filters.http.ext_proc")
    config: dict[str, Any] = wrapped["typed_config"]["extension_config"]["typed_config"]
    return config


def cluster(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in document["static_resources"]["clusters"] if c["name"] == name)
    return found


FULL_DUPLEX = {
    "request_header_mode": "SEND",
    "response_header_mode": "SEND",
    "request_body_mode": "FULL_DUPLEX_STREAMED",
    "response_body_mode": "FULL_DUPLEX_STREAMED",
    "request_trailer_mode": "SEND",
    "response_trailer_mode": "SEND",
}


@pytest.mark.parametrize(
    "profile", [GatewayProfile.KGATEWAY, GatewayProfile.ISTIO, GatewayProfile.AGENTGATEWAY]
)
def test_every_provider_streams_both_bodies_full_duplex_over_tls(profile: GatewayProfile) -> None:
    document = bootstrap(profile)
    config = ext_proc(document)
    assert config["processing_mode"] == FULL_DUPLEX
    assert config["allow_mode_override"] is False
    assert cluster(document, "epp")["transport_socket"]["name"] == "envoy.transport_sockets.tls"


@pytest.mark.parametrize(
    ("profile", "offered"),
    [(GatewayProfile.KGATEWAY, None), (GatewayProfile.ISTIO, ["h2"]), (GatewayProfile.AGENTGATEWAY, ["h2"])],
)
def test_each_provider_offers_its_own_alpn_to_the_epp(
    profile: GatewayProfile, offered: list[str] | None
) -> None:
    """kgateway 2.1's ext_proc cluster sets no alpn_protocols (endpointpicker/plugin.go
    buildExtProcCluster); Istio offers h2 to an HTTP/2 port, agentgateway's gRPC client h2."""
    socket = cluster(bootstrap(profile), "epp")["transport_socket"]
    assert socket["typed_config"]["common_tls_context"].get("alpn_protocols") == offered


def test_kgateway_profile() -> None:
    document = bootstrap(GatewayProfile.KGATEWAY)
    config = ext_proc(document)
    assert config["message_timeout"] == "5s" and config["grpc_service"]["timeout"] == "10s"
    assert config["metadata_options"] == {
        "forwarding_namespaces": {"untyped": ["envoy.lb.subset_hint"]},
        "receiving_namespaces": {"untyped": ["envoy.lb"]},
    }
    # header_to_metadata after ext_proc, a subset-balanced pool with the address under the key.
    names = [f["name"] for f in http_filters(document)]
    assert (
        names.index("envoy.filters.http.header_to_metadata") == names.index("envoy.filters.http.ext_proc") + 1
    )
    pool = cluster(document, "inference_pool")
    assert pool["lb_subset_config"] == {
        "subset_selectors": [{"keys": ["x-gateway-destination-endpoint"]}],
        "fallback_policy": "ANY_ENDPOINT",
    }
    first = pool["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert first["metadata"] == {"filter_metadata": {"envoy.lb": {"x-gateway-destination-endpoint": POOL[0]}}}


def test_istio_profile() -> None:
    document = bootstrap(GatewayProfile.ISTIO)
    config = ext_proc(document)
    assert config["message_timeout"] == "1000s" and config["grpc_service"]["timeout"] == "10s"
    assert config["metadata_options"]["forwarding_namespaces"] == {"untyped": ["envoy.lb"]}
    policy = cluster(document, "inference_pool")["load_balancing_policy"]["policies"][0][
        "typed_extension_config"
    ]
    sources = policy["typed_config"]["override_host_sources"]
    assert sources == [{"metadata": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}]
    route = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    retry = route["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"]
    assert retry["num_retries"] == 2
    assert retry["retry_on"] == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


def test_agentgateway_profile_reads_the_header_and_sends_no_metadata() -> None:
    document = bootstrap(GatewayProfile.AGENTGATEWAY)
    config = ext_proc(document)
    assert "timeout" not in config["grpc_service"]
    assert config["message_timeout"] == "300s"  # no per-message timeout there: the route's bounds it
    assert config["metadata_options"] == {
        "forwarding_namespaces": {"untyped": []},
        "receiving_namespaces": {"untyped": []},
    }
    policy = cluster(document, "inference_pool")["load_balancing_policy"]["policies"][0][
        "typed_extension_config"
    ]
    assert policy["typed_config"]["override_host_sources"] == [{"header": "x-gateway-destination-endpoint"}]


def test_the_harness_profile_changes_nothing() -> None:
    assert profile_options(GatewayProfile.HARNESS) == {}
    assert GatewayConfig(1, 2, POOL).upstream is Upstream.ORIGINAL_DST
