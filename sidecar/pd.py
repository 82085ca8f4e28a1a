"""Request rewriting for the two P/D phases (llm-d's ``nixlv2`` connector protocol)."""

from __future__ import annotations

import copy
import ipaddress
import re
from typing import Any

# Paths whose bodies the sidecar knows how to split into prefill and decode.
DISAGGREGATED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

PREFILLER_HEADER = "x-prefiller-host-port"
REQUEST_ID_HEADER = "x-request-id"

SUPPORTED_CONNECTORS = ("nixlv2",)

# Request fields that make vLLM open connections to the hosts they name (NixlConnector's side
# channel; the encoder-cache connector). Only this sidecar sets them, on the legs it builds; from a
# client they are refused on every path. vllm_xargs lands in the same extra_args dict
# (vllm/entrypoints/openai/completion/protocol.py, to_sampling_params), so it is checked too.
TRANSFER_FIELDS = ("kv_transfer_params", "ec_transfer_params")


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


def client_transfer_field(body: Any) -> str | None:
    """The name of a transfer field a client body carries, if any."""
    if not isinstance(body, dict):
        return None
    for name in TRANSFER_FIELDS:
        if name in body:
            return name
    xargs = body.get("vllm_xargs")
    if isinstance(xargs, dict):
        for name in TRANSFER_FIELDS:
            if name in xargs:
                return f"vllm_xargs.{name}"
    return None


def kv_params_from_prefill(response: Any, prefill_host: str | None = None) -> dict[str, Any]:
    """Extract ``kv_transfer_params`` from the prefill's JSON answer, or say why it is unusable.

    With ``prefill_host``, the parameters must name that host as ``remote_host``: the decode engine
    connects to it (NIXL side channel), so a prefill answer must not send it anywhere else. The
    stack sets ``VLLM_NIXL_SIDE_CHANNEL_HOST`` to the pod IP, the address the EPP picked.
    """
    if not isinstance(response, dict):
        raise InvalidPrefillResponse("prefill answer is not a JSON object")
    params = response.get("kv_transfer_params")
    if not isinstance(params, dict) or not params:
        # vLLM without a KV connector answers kv_transfer_params: null; decoding with it would
        # silently recompute, so treat it as a failed prefill (and count it).
        raise InvalidPrefillResponse(
            "prefill answer has no kv_transfer_params (is the KV connector enabled?)"
        )
    if prefill_host is not None:
        remote = params.get("remote_host")
        if not isinstance(remote, str) or not _same_host(remote, prefill_host):
            raise InvalidPrefillResponse(
                f"prefill answer names remote_host {str(remote)[:80]!r}, not the prefill host {prefill_host}"
            )
    return params


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_host_port(value: str) -> tuple[str, int]:
    """Parse ``ip:port`` / ``host:port`` / ``[v6]:port`` from the prefiller header, strictly.

    Only a host and a port: anything else (``user@``, ``/path``, ``?query``, ``#``, spaces,
    non-ASCII digits) is refused, because the value becomes the authority of a URL and ``h/x:80``
    would otherwise connect to ``h`` on port 80.
    """
    text = value.strip()
    if text.startswith("["):
        inside, sep, port_text = text[1:].partition("]:")
        host = inside if sep and _is_ipv6(inside) else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not (_is_ipv4(host) or _is_hostname(host)):
            host = ""
    if (
        not sep
        or not host
        or not (port_text.isascii() and port_text.isdigit())
        # A port has at most 5 digits: int() of over 4,300 digits raised its own ValueError, whose
        # "Exceeds the limit" text became the client's 400 message.
        or len(port_text) > 5
        or not 0 < int(port_text) < 65536
    ):
        raise ValueError(f"{PREFILLER_HEADER} must be host:port, got {value[:100]!r}")
    return host, int(port_text)


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address) and "%" not in text
    except ValueError:
        return False


def _is_hostname(text: str) -> bool:
    if not text.isascii() or len(text) > 253:
        return False
    labels = text.rstrip(".").split(".") if text != "." else []
    # All-numeric dotted names that are not valid IPv4 ("1.2.3", "999.1.1.1") are refused too.
    return bool(labels) and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()
