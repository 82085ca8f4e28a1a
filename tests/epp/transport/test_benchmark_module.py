"""benchmarks.transport_cpu's pieces that need no Envoy: the summary arithmetic, the tables (the
spread over repeated runs), and the in-process frame-layer measurement."""

from __future__ import annotations

from benchmarks import transport_cpu


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


def test_spread_over_runs_is_min_median_max_per_transport_and_rate() -> None:
    def result(run: int, micros: float, p50: float) -> dict[str, object]:
        return {
            "path": "h2",
            "mode": "FULL_DUPLEX_STREAMED",
            "rate": 200.0,
            "tls": True,
            "alpn": [],
            "run": run,
            "epp_cpu_us_per_message": micros,
            "added_p50_ms": p50,
            "added_p99_ms": 2 * p50,
            "load_average": (1.0, 1.0, 1.0),
        }

    direct = {"path": "direct", "mode": "FULL_DUPLEX_STREAMED", "rate": 200.0, "tls": True}
    table = transport_cpu.spread([direct, result(0, 40.0, 0.5), result(1, 30.0, 0.7), result(2, 35.0, 0.6)])
    assert (
        "| h2 | FULL_DUPLEX_STREAMED TLS no ALPN | 200 | 3 | 30.0 / 35.0 / 40.0 | 0.50 / 0.60 / 0.70 |"
        in table
    )
    assert "direct" not in table


def test_frame_layer_measures_this_transport() -> None:
    results = transport_cpu.frame_layer(messages=200, size=50)
    assert results["epp.transport"] > 0
