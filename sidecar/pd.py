"""Request rewriting for the two P/D phases (llm-d's ``nixlv2`` connector protocol)."""

from __future__ import annotations

import copy
from typing import Any

# Paths whose bodies the sidecar knows how to split into prefill and decode.
DISAGGREGATED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

PREFILLER_HEADER = "x-prefiller-host-port"
REQUEST_ID_HEADER = "x-request-id"

SUPPORTED_CONNECTORS = ("nixlv2",)


def prefill_body(original: dict[str, Any]) -> dict[str, Any]:
    """The prefill leg: compute the prompt's KV, produce one token, keep the blocks for a remote decoder."""
    body = copy.deepcopy(original)
    body["kv_transfer_params"] = {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
    body["stream"] = False
    body.pop("stream_options", None)
    # Both names: completions reads max_tokens, chat prefers max_completion_tokens.
    body["max_tokens"] = 1
    body["max_completion_tokens"] = 1
    # vLLM refuses min_tokens > max_tokens (400); the decode leg still enforces the client's value.
    body.pop("min_tokens", None)
    return body


def decode_body(original: dict[str, Any], kv_transfer_params: dict[str, Any]) -> dict[str, Any]:
    """The decode leg: the client's request as sent, plus where to pull the prefilled KV from."""
    body = dict(original)
    body["kv_transfer_params"] = kv_transfer_params
    return body


class InvalidPrefillResponse(ValueError):
    pass


def kv_params_from_prefill(response: Any) -> dict[str, Any]:
    """Extract ``kv_transfer_params`` from the prefill's JSON answer, or say why it is unusable."""
    if not isinstance(response, dict):
        raise InvalidPrefillResponse("prefill answer is not a JSON object")
    params = response.get("kv_transfer_params")
    if not isinstance(params, dict) or not params:
        # vLLM without a KV connector answers kv_transfer_params: null; decoding with it would
        # silently recompute, so treat it as a failed prefill (and count it).
        raise InvalidPrefillResponse(
            "prefill answer has no kv_transfer_params (is the KV connector enabled?)"
        )
    return params


def parse_host_port(value: str) -> tuple[str, int]:
    """Parse ``ip:port`` / ``host:port`` / ``[v6]:port`` from the prefiller header."""
    value = value.strip()
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{PREFILLER_HEADER} must be host:port, got {value!r}")
    return host, int(port_text)
