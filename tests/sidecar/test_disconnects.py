"""A client that goes away must not leave the sidecar's legs running.

These tests run the sidecar as ``python -m sidecar`` does (``serve``), not through aiohttp's
TestServer: TestServer cancels a handler whose client disconnects, aiohttp's AppRunner (what
``serve`` used) by default does not, so a test rig hid exactly the behaviour under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer

from localrun import free_port
from runloop import HTTP_SERVER_LIMITS
from sidecar.config import SidecarOptions
from sidecar.proxy import serve

DEADLINE_S = 5.0


@dataclass
class SlowServer:
    """A model server that takes a request and never answers; it notes arrival and abandonment
    (its handler is cancelled when its client closes the connection: TestServer cancels)."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        self.arrived.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.abandoned.set()
            raise
        return web.Response()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@dataclass
class Rig:
    sidecar_port: int
    prefill: SlowServer
    prefill_port: int
    decode: SlowServer


@contextlib.asynccontextmanager
async def running_sidecar() -> AsyncIterator[Rig]:
    prefill, decode = SlowServer(), SlowServer()
    # The stand-ins take the headers vLLM takes (it has no per-header limit): aiohttp's defaults
    # would refuse what the sidecar forwards.
    servers = [TestServer(prefill.app(), host="127.0.0.1"), TestServer(decode.app(), host="127.0.0.1")]
    for server in servers:
        await server.start_server(**HTTP_SERVER_LIMITS)
    port = free_port()
    options = SidecarOptions(host="127.0.0.1", port=port, model_server_port=servers[1].port)
    task = asyncio.create_task(serve(options))
    try:
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while True:  # poll until the sidecar listens
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "the sidecar did not start"
                await asyncio.sleep(0.01)
                continue
            writer.close()
            break
        yield Rig(port, prefill, servers[0].port, decode)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for server in servers:
            await server.close()


async def send_and_hang_up(
    port: int, headers: dict[str, str], body: dict[str, object], seen: asyncio.Event
) -> None:
    """Send a whole request, wait until ``seen`` (a leg reached a server), then close the
    connection with a reset, as a client that gave up does."""
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{head}"
        f"content-length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    await asyncio.wait_for(seen.wait(), DEADLINE_S)
    writer.transport.abort()


REQUEST = {"model": "tiny", "prompt": "the prompt", "max_tokens": 50}


async def test_a_client_gone_during_prefill_cancels_the_prefill_and_never_decodes() -> None:
    """Before: the prefill ran to its timeout (30 s by default), then the decode leg ran the whole
    generation for nobody (a non-streaming answer is written only when complete)."""
    async with running_sidecar() as rig:
        headers = {"x-prefiller-host-port": f"127.0.0.1:{rig.prefill_port}"}
        await send_and_hang_up(rig.sidecar_port, headers, REQUEST, rig.prefill.arrived)
        await asyncio.wait_for(rig.prefill.abandoned.wait(), DEADLINE_S)
        assert rig.decode.requests == 0


async def test_a_client_gone_during_generation_cancels_the_model_server_request() -> None:
    """vLLM aborts a request (frees its KV blocks) when its HTTP client disconnects; through the
    sidecar that client is the sidecar, which kept the connection open until the answer came."""
    async with running_sidecar() as rig:
        await send_and_hang_up(rig.sidecar_port, {}, REQUEST, rig.decode.arrived)
        await asyncio.wait_for(rig.decode.abandoned.wait(), DEADLINE_S)


async def test_headers_the_gateway_forwards_reach_the_model_server() -> None:
    """Envoy forwards up to 60 KiB of request headers; aiohttp's defaults in ``serve`` refused any
    header over 8,190 bytes (a large bearer token) and more than 128 headers with a plain-text 400."""
    async with running_sidecar() as rig:
        headers = {"authorization": "Bearer " + "t" * 40_000, **{f"x-extra-{i}": "v" for i in range(150)}}
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.sidecar_port)
        payload = json.dumps(REQUEST).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{head}"
            f"content-length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        answer = asyncio.create_task(reader.read(200))
        arrived = asyncio.create_task(rig.decode.arrived.wait())
        done, _ = await asyncio.wait(
            {answer, arrived}, timeout=DEADLINE_S, return_when=asyncio.FIRST_COMPLETED
        )
        assert arrived in done, answer.result() if answer in done else "neither answered nor forwarded"
        answer.cancel()
        writer.transport.abort()
