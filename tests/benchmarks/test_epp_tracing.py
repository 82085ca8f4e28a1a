"""The tracing benchmark times the three variants on the same requests (tiny run: shape, not speed)."""

from __future__ import annotations

from benchmarks import epp_tracing


def test_measure_reports_every_variant(monkeypatch) -> None:
    monkeypatch.setattr(epp_tracing, "BLOCK", 5)
    rows = epp_tracing.measure(blocks=2)
    assert list(rows) == ["off", "on, 10 % sampled", "on, 100 % sampled"]
    for row in rows.values():
        assert row["n"] == 10 and 0 < row["cpu_p50_us"] <= row["cpu_p99_us"]
