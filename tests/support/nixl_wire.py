"""llm-d's ``nixlv2`` wire format as the P/D tests expect it, written out independently of
``sidecar.pd`` so that a change there is caught rather than copied into the expectation.

Shared by the sidecar unit tests, the P/D end-to-end test and the slow real-vLLM NIXL test
(import as ``tests.support.nixl_wire``).
"""

from __future__ import annotations

from typing import Any

# What the sidecar puts on the prefill leg: vLLM's NixlConnector computes the prompt's KV, keeps the
# blocks for a remote decoder, and answers with where to pull them (the remote_* fields, here unset).
PREFILL_KV_REQUEST: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
