"""Router specs and the Envoy baseline bootstrap (no processes started)."""

from __future__ import annotations

import pytest

from benchmarks.routers import ROUTERS, Kind, envoy_lb_bootstrap, router_by_name
from epp.config.loader import DEFAULT_CONFIG, load_config


def test_every_compared_router_is_defined_once() -> None:
    names = [spec.name for spec in ROUTERS]
    assert len(names) == len(set(names)) == 8
    assert {spec.kind for spec in ROUTERS} == set(Kind)
    assert router_by_name("epp-default").epp_config is None  # the EPP's own built-in default
    with pytest.raises(ValueError, match="unknown router 'nginx'; choose from round-robin"):
        router_by_name("nginx")


def test_envoy_baseline_bootstrap_spreads_over_every_pod() -> None:
    bootstrap = envoy_lb_bootstrap(10000, 9901, ["127.0.0.1:8001", "127.0.0.1:8002"], "ROUND_ROBIN")
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "ROUND_ROBIN" and cluster["type"] == "STATIC"
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [8001, 8002]
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10000}
    # No ext_proc: the baseline is Envoy alone.
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == ["envoy.filters.http.router"]
    with pytest.raises(ValueError, match="unsupported Envoy lb_policy 'MAGLEV'"):
        envoy_lb_bootstrap(10000, 9901, ["127.0.0.1:8001"], "MAGLEV")


def test_epp_router_configs_load_and_the_burst_variant_adds_to_the_default_scorers() -> None:
    for spec in ROUTERS:
        if spec.kind is Kind.EPP and spec.epp_config is not None:
            load_config(spec.epp_config)  # raises ConfigError naming a bad plugin or key
    variant = load_config(router_by_name("epp-default+active-request").epp_config)
    default = load_config(DEFAULT_CONFIG)
    assert "active-request-scorer" in variant.plugins and "active-request-scorer" not in default.plugins
    for name in ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"):
        assert name in variant.plugins and name in default.plugins


def test_precise_routers_fill_in_the_pools_event_ports_and_load() -> None:
    from benchmarks.pool import KvEventPorts
    from benchmarks.routers import PRECISE_ROUTERS, epp_config_text
    from epp.plugins.precise import PrecisePrefixCacheProducer

    ports = KvEventPorts(socket_port=31000, replay_port=32000)
    for spec in PRECISE_ROUTERS:
        text = epp_config_text(spec, ports, block_size=16)
        if not spec.kv_events:
            assert text == spec.epp_config  # no placeholders: epp-default-2x has the built-in default
            continue
        producer = load_config(text).plugins["precise-prefix-cache-producer"]
        assert isinstance(producer, PrecisePrefixCacheProducer)
        assert (producer.socket_port, producer.replay_port) == (31000, 32000)
        assert (producer.hasher.algorithm, producer.hasher.seed, producer.hasher.block_size) == (
            "sha256_cbor",
            "0",
            16,
        )
        assert producer.speculative is spec.speculative
        with pytest.raises(ValueError, match="needs pods that publish KV events"):
            epp_config_text(spec, None, block_size=16)
    assert router_by_name("epp-precise-2x").epp_replicas == 2


def _weights(config_text: str | None) -> dict[str, float]:
    loaded = load_config(config_text if config_text is not None else DEFAULT_CONFIG)
    (profile,) = loaded.scheduler.profiles.values()
    return {scorer.type_name: weight for scorer, weight in profile.scorers}


def test_precise_follows_llm_d_precise_guide_and_the_controls_swap_the_weights() -> None:
    """epp-precise: llm-d's precise guide (precise prefix 2, queue 1, KV utilisation 1); epp-default:
    llm-d's default profile (3, 2, 2); the two controls swap them, index kept."""
    from benchmarks.pool import KvEventPorts
    from benchmarks.routers import epp_config_text

    ports = KvEventPorts(socket_port=31000, replay_port=32000)
    guide = {"prefix-cache-scorer": 2.0, "queue-scorer": 1.0, "kv-cache-utilization-scorer": 1.0}
    default = {"prefix-cache-scorer": 3.0, "queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0}

    def weights(name: str) -> dict[str, float]:
        return _weights(epp_config_text(router_by_name(name), ports, block_size=16))

    assert weights("epp-precise") == weights("epp-precise-2x") == guide
    assert weights("epp-default") == weights("epp-default-2x") == default
    assert weights("epp-default-guide-weights") == guide
    assert weights("epp-precise-default-weights") == default
    control = router_by_name("epp-precise-default-weights")
    precise = load_config(epp_config_text(control, ports, block_size=16))
    assert "precise-prefix-cache-producer" in precise.plugins
    approx = load_config(router_by_name("epp-default-guide-weights").epp_config)
    assert "precise-prefix-cache-producer" not in approx.plugins
