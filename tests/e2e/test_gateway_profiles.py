"""End to end through real Envoy configured as each provider's generated config (localrun/profiles.py),
with the EPP serving TLS: the request reaches the pod the EPP picked, the served endpoint gets back to
the EPP where the provider forwards it, and FailOpen/FailClose behave as the provider's config says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localrun import GatewayProfile, envoy_binary
from tests.support.envoy_epp import MODEL, Stack, call, gateway_stack, wait_for

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)

PROFILES = [GatewayProfile.KGATEWAY, GatewayProfile.ISTIO, GatewayProfile.AGENTGATEWAY]


@pytest.fixture(scope="module", params=PROFILES, ids=lambda p: p.value)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    profile: GatewayProfile = request.param
    with gateway_stack(tmp_path_factory.mktemp(profile.value), pods=2, profile=profile) as running:
        yield running


def test_requests_reach_the_pod_the_epp_picked_over_tls(stack: Stack) -> None:
    for index in range(4):
        for pod in stack.pods:
            pod.clear()
        reply = stack.post({"model": MODEL, "prompt": f"hello {index}", "stream": index % 2 == 1})
        assert reply.status == 200
        served_by = stack.pod_of(reply)
        [seen] = next(p for p in stack.pods if p.name == served_by).received()
        assert seen["headers"]["x-gateway-destination-endpoint"] == next(
            p.hostport for p in stack.pods if p.name == served_by
        )
    assert stack.gateway is not None
    assert stack.gateway.stats("cluster.epp.ssl.handshake").get("cluster.epp.ssl.handshake", 0) >= 1
    if stack.gateway.config.upstream.value == "subset":
        # kgateway's path: each request went to the subset the EPP named, none to the fallback.
        subsets = stack.gateway.stats("cluster.inference_pool.lb_subsets")
        assert subsets["cluster.inference_pool.lb_subsets_selected"] >= 4, subsets
        assert subsets["cluster.inference_pool.lb_subsets_fallback"] == 0, subsets
    # Every request completed in the EPP's books, whatever metadata the provider sends back.
    assert wait_for(lambda: stack.epp_metric("epp_requests_in_flight") == 0)


def test_a_bodyless_model_list_is_routed(stack: Stack) -> None:
    assert call(stack.url, "/v1/models").status == 200


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.value)
def test_epp_down_fail_close_refuses_and_fail_open_serves_bodyless_requests(
    tmp_path: Path, profile: GatewayProfile
) -> None:
    with gateway_stack(tmp_path / "closed", pods=1, with_epp=False, profile=profile) as closed:
        reply = closed.post({"model": MODEL, "prompt": "p"})
        assert 500 <= reply.status < 600
        assert closed.pods[0].received() == []
    with gateway_stack(tmp_path / "open", pods=1, with_epp=False, fail_open=True, profile=profile) as opened:
        assert call(opened.url, "/v1/models").status == 200
