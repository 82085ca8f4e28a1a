"""The prefill leg generates exactly one token, so no field of the client's request may demand
more: vLLM refuses ``min_tokens > max_tokens`` with a 400, which would send every such request
to a local prefill instead of the prefill pool."""

from __future__ import annotations

from sidecar.pd import decode_body, prefill_body


def test_min_tokens_is_dropped_from_the_prefill_leg_only() -> None:
    original = {"model": "m", "prompt": "p", "max_tokens": 64, "min_tokens": 16}
    prefill = prefill_body(original)
    assert "min_tokens" not in prefill and prefill["max_tokens"] == 1
    assert decode_body(original, {"remote_engine_id": "e"})["min_tokens"] == 16
