"""The real Envoy in front of the EPP under the issue-12 runtime findings: Envoy's own replies reach
the client (finding 5), a killed or restarted EPP replica costs nothing new (6), and no limit
nobody chose caps concurrency (7). Raw sockets where the client must be able to send nonsense."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from benchmarks.epp_restarts import Stack, load
from epp.server.stream import BodyMode
from localrun import envoy_binary
from tests.support.envoy_epp import MODEL, gateway_stack, wait_for

pytestmark = pytest.mark.e2e

try:
    envoy_binary()
except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"Envoy binary not available: {exc}", allow_module_level=True)


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """The status line Envoy answers ``request`` with (b"" if the connection closed without one)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0], time.monotonic() - started


@pytest.fixture(scope="module", params=list(BodyMode), ids=lambda m: m.value)
def stack_port(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with gateway_stack(
        tmp_path_factory.mktemp(f"raw-{request.param.value}"), pods=1, mode=request.param
    ) as stack:
        assert stack.gateway is not None
        yield stack.gateway.config.listen_port


LOCAL_REPLIES = {
    "bad content-length": (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"400",
    ),
    "two content-lengths": (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"400",
    ),
    "content-length and chunked": (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n0\r\n\r\n",
        b"400",
    ),
    "HTTP/1.0": (b"GET /v1/models HTTP/1.0\r\nHost: x\r\n\r\n", b"426"),
    "headers over 60 KiB": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"431",
    ),
    "unknown method": (b"FOO /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    "relative path": (b"GET nopath HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
}


@pytest.mark.parametrize("name", sorted(LOCAL_REPLIES))
def test_envoys_own_replies_reach_the_client(stack_port: int, name: str) -> None:
    request, status = LOCAL_REPLIES[name]
    line, _ = raw_exchange(stack_port, request)
    # Before: the connection closed after ~1 s with no status line at all (envoy#29440).
    assert line.startswith(b"HTTP/1.1 " + status), (name, line)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n",
    ],
    ids=["upgrade", "connect"],
)
def test_requests_the_epp_cannot_route_get_the_gateways_answer_at_once(
    stack_port: int, request_bytes: bytes
) -> None:
    line, took = raw_exchange(stack_port, request_bytes, timeout=20)
    # The gateway has no route for tunnels: its 404 comes back (these hung for over a minute).
    assert line.startswith(b"HTTP/1.1 404"), line
    assert took < 10


def test_the_epp_cluster_takes_1100_concurrent_streams(tmp_path: Path) -> None:
    """Envoy's default 1,024 concurrent requests per cluster once gave 76 x 500 at 1,100 streams.
    The pods answer after 3 s, so all 1,100 requests hold their EPP stream at the same time."""
    with gateway_stack(tmp_path, pods=2, pod_delay_ms=3000) as stack:
        statuses = asyncio.run(_concurrent(stack.url, 1100))
        assert stack.gateway is not None
        overflows = stack.gateway.stats("cluster.epp.upstream_rq_pending_overflow")
    assert statuses == Counter({200: 1100}), statuses
    assert sum(overflows.values()) == 0


async def _concurrent(url: str, count: int) -> Counter[int]:
    body = json.dumps({"model": MODEL, "prompt": "all at once"}).encode()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> int:
            async with session.post(
                url + "/v1/completions", data=body, headers={"content-type": "application/json"}
            ) as r:
                await r.read()
                return r.status

        return Counter(await asyncio.gather(*(one() for _ in range(count))))


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path, replicas=2, release=False, delay_ms=200, drain_notice=3.0)
    try:
        assert wait_for(lambda: stack.healthy_in_gateway(0) and stack.healthy_in_gateway(1), timeout=20)
        yield stack
    finally:
        stack.close()


def test_a_rolling_restart_of_the_epp_replicas_loses_no_request(two_replicas: Stack) -> None:
    url = two_replicas.gateway.url + "/v1/completions"

    async def under_load() -> list:  # type: ignore[type-arg]
        traffic = asyncio.create_task(load(url, rate=10, duration=14))
        for index in range(2):
            await asyncio.sleep(1.0)
            epp = two_replicas.epps[index]
            assert epp is not None
            await asyncio.to_thread(epp.stop, signal.SIGTERM)  # drain: notice, open streams, exit
            two_replicas.epps[index] = await asyncio.to_thread(two_replicas.start_epp, index)
            healthy = functools.partial(two_replicas.healthy_in_gateway, index)
            assert await asyncio.to_thread(wait_for, healthy, 20)
        return await traffic

    outcomes = asyncio.run(under_load())
    statuses = Counter(o.status for o in outcomes)
    assert statuses == Counter({"200": len(outcomes)}), statuses


def test_a_killed_replica_is_avoided_at_once(two_replicas: Stack) -> None:
    """New streams to a replica that just died are retried on the other one (nothing was sent), and
    health checking keeps it out until it is back."""
    dead = two_replicas.epps[0]
    assert dead is not None
    dead.kill()
    outcomes = asyncio.run(load(two_replicas.gateway.url + "/v1/completions", rate=20, duration=2))
    assert Counter(o.status for o in outcomes) == Counter({"200": 40})
    two_replicas.epps[0] = two_replicas.start_epp(0)
    assert wait_for(lambda: two_replicas.healthy_in_gateway(0), timeout=20)
