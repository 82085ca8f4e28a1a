"""Header handling on the sidecar's legs: connection-scoped headers stay on their hop, and the
prefill answer the sidecar must parse arrives uncompressed."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from sidecar.config import SidecarOptions
from sidecar.proxy import Sidecar, _forward_headers

# remote_host is the prefill stand-in's own address: the sidecar refuses parameters naming another host.
KV_PARAMS = {"remote_engine_id": "engine-p", "remote_block_ids": [1], "remote_host": "127.0.0.1"}


@dataclass
class Recorder:
    """A model server that records request headers and compresses whenever the client allows it
    (as any server behind a compressing middleware does)."""

    answer: dict[str, object]
    headers: list[CIMultiDict[str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.headers.append(CIMultiDict(request.headers))
        response = web.json_response(
            self.answer, headers={"Connection": "x-upstream-hop", "X-Upstream-Hop": "1"}
        )
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression(web.ContentCoding.gzip)
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@dataclass
class Legs:
    client: aiohttp.ClientSession
    sidecar: Sidecar
    prefill: Recorder
    decode: Recorder
    prefill_addr: str


@pytest.fixture
async def legs() -> AsyncIterator[Legs]:
    prefill = Recorder({"id": "p", "kv_transfer_params": KV_PARAMS})
    decode = Recorder({"id": "d", "choices": [{"text": "hi"}]})
    servers = [TestServer(prefill.app(), host="127.0.0.1"), TestServer(decode.app(), host="127.0.0.1")]
    for server in servers:
        await server.start_server()
    decode_port = servers[1].port
    assert decode_port is not None
    sidecar = Sidecar(SidecarOptions(model_server_port=decode_port, prefill_timeout_s=2.0))
    sidecar_server = TestServer(sidecar.app(), host="127.0.0.1")
    await sidecar_server.start_server()
    servers.append(sidecar_server)
    client = aiohttp.ClientSession(base_url=str(sidecar_server.make_url("/")))
    try:
        yield Legs(client, sidecar, prefill, decode, f"127.0.0.1:{servers[0].port}")
    finally:
        await client.close()
        for server in reversed(servers):
            await server.close()


def test_headers_named_by_connection_are_hop_by_hop():
    incoming = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Hop-Secret"),
            ("X-Hop-Secret", "s"),
            ("Proxy-Connection", "close"),
            ("A", "1"),
        ]
    )
    assert list(_forward_headers(incoming).items()) == [("A", "1")]


async def test_connection_scoped_headers_do_not_cross_the_sidecar(legs):
    headers = {"Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "s", "Authorization": "Bearer t"}
    async with legs.client.post("/v1/completions", json={"model": "m", "prompt": "p"}, headers=headers) as r:
        assert r.status == 200
        assert "X-Upstream-Hop" not in r.headers
    [seen] = legs.decode.headers
    assert "X-Hop-Secret" not in seen and seen["Authorization"] == "Bearer t"


async def test_a_compressing_prefill_server_still_yields_its_kv_params(legs):
    body = {"model": "m", "prompt": "p", "max_tokens": 5}
    headers = {"x-prefiller-host-port": legs.prefill_addr, "Accept-Encoding": "gzip"}
    async with legs.client.post("/v1/completions", json=body, headers=headers) as r:
        assert r.status == 200
        assert json.loads(await r.read()) == legs.decode.answer
    assert legs.sidecar.metrics.fallbacks.labels("invalid_response")._value.get() == 0
    [prefill_headers] = legs.prefill.headers
    assert "gzip" not in prefill_headers.get("Accept-Encoding", "")


async def test_the_model_server_is_offered_only_the_encodings_the_client_accepts(legs):
    # Bodies pass through undecoded, so an encoding the client never asked for must not be offered.
    async with legs.client.post(
        "/v1/completions", json={"model": "m", "prompt": "p"}, skip_auto_headers=("Accept-Encoding",)
    ) as r:
        assert r.status == 200 and "Content-Encoding" not in r.headers
        assert json.loads(await r.read()) == legs.decode.answer
    [seen] = legs.decode.headers
    assert "Accept-Encoding" not in seen
