"""A client that goes away aborts its request, as in vLLM (its API server cancels the request when
the connection closes, streaming or not), and the simulator frees the slot and KV blocks.

Run through ``serve`` (what ``python -m simulator`` runs), not aiohttp's TestServer: TestServer
cancels a handler whose client disconnects, aiohttp's AppRunner by default does not, so the
abort path was only ever exercised by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from localrun import free_port
from simulator.params import SimParams
from simulator.server import serve

DEADLINE_S = 5.0


async def running(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as reply:
        text = await reply.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:num_requests_running{")
    )


async def poll(check: Callable[[], Awaitable[bool]], deadline: float) -> bool:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


@contextlib.asynccontextmanager
async def serving(params: SimParams) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A simulator on a free port, up; yields a client session and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    task = asyncio.create_task(serve(params, "127.0.0.1", port))
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    return await running(session, url) == 0
                return False

            deadline = asyncio.get_running_loop().time() + DEADLINE_S
            assert await poll(up, deadline), "the simulator did not start"
            yield session, url
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_gone_mid_generation_aborts_its_request(stream: bool) -> None:
    # 0.01 s per token: 2,000 tokens would run for 20 s.
    params = SimParams(model="tiny", request_overhead_s=0.0, tokenize_per_token_s=0.0, decode_per_seq_s=0.01)
    async with serving(params) as (session, url):
        loop = asyncio.get_running_loop()
        request = {"model": "tiny", "prompt": "hi", "max_tokens": 2000, "stream": stream}
        body = json.dumps(request).encode()
        _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )

        async def generating() -> bool:
            return await running(session, url) == 1

        assert await poll(generating, loop.time() + DEADLINE_S)
        writer.transport.abort()

        async def idle() -> bool:
            return await running(session, url) == 0

        # Before: the non-streaming request generated all 2,000 tokens (20 s) for nobody.
        assert await poll(idle, loop.time() + DEADLINE_S)


async def test_headers_a_gateway_forwards_are_accepted() -> None:
    """Envoy forwards up to 60 KiB of request headers and vLLM takes them; aiohttp's defaults in
    ``serve`` refused any header over 8,190 bytes and more than 128 headers with a plain-text 400."""
    params = SimParams(model="tiny", request_overhead_s=0.0, tokenize_per_token_s=0.0)
    async with serving(params) as (_, url):
        body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 1}).encode()
        head = b"authorization: Bearer " + b"t" * 40_000 + b"\r\n"
        head += b"".join(b"x-extra-%d: v\r\n" % i for i in range(150))
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n%s"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (head, len(body), body)
        )
        status = await asyncio.wait_for(reader.readline(), DEADLINE_S)
        writer.close()
        assert status.startswith(b"HTTP/1.1 200"), status
