"""benchmarks.transport_cpu's pieces that need no Envoy: the TLS bootstrap, the summary arithmetic,
the table, and the in-process frame-layer measurement."""

from __future__ import annotations

from benchmarks import transport_cpu
from localrun.envoy import EPP_CLUSTER, GatewayConfig, render_bootstrap


def test_ext_proc_tls_is_added_to_the_epp_cluster_only() -> None:
    bootstrap = transport_cpu.with_ext_proc_tls(
        render_bootstrap(GatewayConfig(listen_port=1, ext_proc_port=2, pool_endpoints=("127.0.0.1:3",)))
    )
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    tls = clusters[EPP_CLUSTER]["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext") and tls["common_tls_context"] == {
        "validation_context": {}
    }
    assert all("transport_socket" not in c for name, c in clusters.items() if name != EPP_CLUSTER)


def test_summary_reports_added_latency_and_cpu_per_message() -> None:
    direct = transport_cpu.Row(
        "direct", "FULL_DUPLEX_STREAMED", 100.0, seconds=1.0, ok=3, latencies=[0.001] * 3
    )
    via = transport_cpu.Row(
        "h2",
        "FULL_DUPLEX_STREAMED",
        100.0,
        seconds=1.0,
        ok=3,
        latencies=[0.0015, 0.0016, 0.0030],
        cpu={"epp": 0.00033, "envoy": 0.001},
        messages=33,
        streams=3,
    )
    summary = via.summary(direct)
    assert round(summary["added_p50_ms"], 3) == 0.6 and round(summary["added_p99_ms"], 3) == 2.0
    assert summary["messages_per_request"] == 11 and round(summary["epp_cpu_us_per_message"], 3) == 10.0
    summary["load_average"], summary["tls"] = (1.0, 1.0, 1.0), False
    table = transport_cpu.markdown([summary])
    assert "| h2 | FULL_DUPLEX_STREAMED | 100 |" in table and "| 10.0 |" in table


def test_frame_layer_measures_this_transport() -> None:
    results = transport_cpu.frame_layer(messages=200, size=50)
    assert results["epp.transport"] > 0
