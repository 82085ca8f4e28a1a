"""benchmarks.stream_cpu drives whole requests through ExtProcStream (tiny runs: shape, not speed).
Every message Envoy sends gets its answer, so a run's message count shows the exchange completed."""

from __future__ import annotations

import pytest

from benchmarks import stream_cpu


@pytest.mark.parametrize(
    ("streamed", "director", "messages"),
    # In: request headers, body, trailers, response headers, the body chunk(s), trailers; one answer each.
    [(0, "fixed", 12), (3, "fixed", 16), (0, "default", 12)],
)
def test_each_request_is_a_complete_exchange(streamed: int, director: str, messages: int) -> None:
    result = stream_cpu.measure(20, streamed, director, profile=0)
    assert result["messages_per_request"] == messages
    assert result["us_per_request"] > 0
    assert result["us_per_message"] == pytest.approx(result["us_per_request"] / messages)


def test_cli_prints_the_figure_and_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert stream_cpu.main(["--requests", "5", "--repeat", "1", "--profile", "3"]) == 0
    out, err = capsys.readouterr()
    assert "ExtProcStream (fixed director, JSON)" in out and "12 messages" in out
    assert "tottime" in err  # cProfile's table


def test_cli_refuses_nonsense() -> None:
    with pytest.raises(SystemExit):
        stream_cpu.main(["--requests", "0"])
