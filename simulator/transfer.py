"""P/D KV transfer between simulators, shaped like vLLM's NixlConnector (pull mode).

Prefill side: a request with ``kv_transfer_params.do_remote_decode = true`` keeps its KV blocks after
finishing and answers with the parameters a decoder needs (engine id, block ids, host, port ...).
Decode side: a request carrying those parameters pulls the blocks before it is scheduled; the pull
frees them on the prefill side (as NIXL's completion notification does) and the decoder installs
them as computed, so it skips prefill. Real vLLM pulls over NIXL from a side-channel port; the
simulator pulls over its own HTTP port (``POST /sim/kv/pull``), so ``remote_port`` is that port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

import jsonbody
from simulator.engine import Engine, Sequence
from simulator.params import SimParams

log = logging.getLogger(__name__)

PULL_PATH = "/sim/kv/pull"
# Bytes of KV per token for the measured tiny model (2 layers x K,V x 4 heads x 64 x bf16), used
# only for the transferred-bytes histogram.
KV_BYTES_PER_TOKEN = 2 * 2 * 4 * 64 * 2


class TransferError(Exception):
    pass


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _host_port(host: Any, port: Any) -> tuple[str, int]:
    """``remote_host``/``remote_port`` as a host and a port only: the host becomes part of a URL, so
    "h/x" or "u@h" must not slip a path or userinfo in (the sidecar parses its header the same way)."""
    if isinstance(port, bool) or not isinstance(port, int | str):
        raise TypeError(f"remote_port must be a port number, got {port!r}")
    text = str(port)
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"remote_port must be a TCP port, got {port!r}")
    if not isinstance(host, str):
        raise TypeError(f"remote_host must be a string, got {type(host).__name__}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if not host.isascii() or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"remote_host must be an IP address or a host name, got {host[:80]!r}") from None
    return host, int(text)


def _flatten(block_ids: Any) -> list[int]:
    """Block ids arrive per KV-cache group (``[[1, 2], ...]``); older producers sent a flat list."""
    if not isinstance(block_ids, list):
        raise TypeError(f"remote_block_ids must be a list, got {type(block_ids).__name__}")
    flat: list[int] = []
    for item in block_ids:
        flat.extend(int(b) for b in item) if isinstance(item, list) else flat.append(int(item))
    return flat


@dataclass(slots=True)
class _Export:
    seq: Sequence
    block_ids: list[int]
    expiry: asyncio.TimerHandle


class KvExports:
    """Blocks a prefill instance holds for remote decoders, released on pull or after a timeout."""

    def __init__(self, engine: Engine, params: SimParams) -> None:
        self._engine = engine
        self._params = params
        self.engine_id = str(uuid.uuid4())
        self._held: dict[str, _Export] = {}
        self._block_ids = itertools.count(1)
        self.expired = 0

    def export(self, request_id: str, seq: Sequence) -> dict[str, Any]:
        block_ids = [next(self._block_ids) for _ in range(seq.table.size)]
        expiry = asyncio.get_running_loop().call_later(
            self._params.kv_hold_timeout_s, self._expire, request_id
        )
        self._held[request_id] = _Export(seq, block_ids, expiry)
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            # One list per KV-cache group, as vLLM's hybrid allocator reports them (one group here).
            "remote_block_ids": [block_ids],
            "remote_engine_id": self.engine_id,
            "remote_request_id": request_id,
            "remote_host": self._params.advertise_host,
            "remote_port": self._params.advertise_port,
            "tp_size": 1,
            "dcp_size": 1,
            "pp_size": 1,
            "remote_num_tokens": seq.prompt_tokens,
            "remote_blocks_expiry_time": None,
            "transfer_mode": "pull",
            "remote_prefill_cached_tokens": seq.cached_tokens,
        }

    def pull(self, engine_id: str, request_id: str, block_ids: list[int]) -> list[int]:
        """Hand over the block hashes and free the blocks; raises KeyError if nothing matches."""
        held = self._held.get(request_id)
        if engine_id != self.engine_id or held is None or held.block_ids != block_ids:
            raise KeyError(request_id)
        del self._held[request_id]
        held.expiry.cancel()
        hashes = list(held.seq.hashes)
        self._engine.release_held(held.seq)
        return hashes

    def _expire(self, request_id: str) -> None:
        held = self._held.pop(request_id, None)
        if held is not None:
            log.warning("KV for request %s was never pulled; freeing its blocks", request_id)
            self.expired += 1
            self._engine.release_held(held.seq)

    @property
    def held(self) -> int:
        return len(self._held)

    def close(self) -> None:
        for held in self._held.values():
            held.expiry.cancel()
        self._held.clear()


async def pull_remote(
    session: aiohttp.ClientSession, params: dict[str, Any], expected: list[int], timeout_s: float
) -> tuple[list[int], float]:
    """Fetch the prefilled blocks a request's kv_transfer_params point at; returns (hashes, seconds)."""
    try:
        host, port = _host_port(params["remote_host"], params["remote_port"])
        payload = {
            "remote_engine_id": params["remote_engine_id"],
            "remote_request_id": params["remote_request_id"],
            "remote_block_ids": _flatten(params["remote_block_ids"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise TransferError(f"kv_transfer_params incomplete for a remote prefill: {exc!r}") from exc
    started = time.monotonic()
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        async with session.post(
            f"http://{authority}{PULL_PATH}",
            json=payload,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,  # the blocks come from the host named, or not at all
        ) as response:
            if response.status != 200:
                raise TransferError(f"prefill instance {host}:{port} answered {response.status} to the pull")
            # The same limits as every body this stack parses (depth, surrogates): jsonbody.
            hashes = jsonbody.loads(await response.read())["block_hashes"]
    except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError) as exc:
        raise TransferError(f"pull from {host}:{port} failed: {exc!r}") from exc
    if not isinstance(hashes, list) or hashes != expected[: len(hashes)]:
        # The prefill instance computed a different prompt: its KV is useless here.
        raise TransferError("pulled blocks do not match this request's prompt")
    return hashes, time.monotonic() - started
