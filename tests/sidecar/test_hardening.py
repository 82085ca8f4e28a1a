"""Issue 12 findings 2 and 3 on the sidecar: bodies it cannot use are a 400 (never a RecursionError
500), client transfer parameters never reach a model server, credentials stay off the prefill leg,
the prefill target is parsed strictly and guarded, and only the chosen host's answer is used."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import jsonbody
from sidecar.config import build_parser, options_from_args
from sidecar.guard import PRIVATE_NETWORKS, PoolMembership, PrefillGuard, parse_allowlist
from tests.sidecar.test_proxy import KV_FROM_PREFILL, REQUEST, Rig, StandIn, build_rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for r in build_rig(prefill_timeout_s=2.0):
        yield r


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"k": value}
    return value


async def _post(rig: Rig, body: bytes, path: str = "/v1/completions", **headers: str) -> tuple[int, Any]:
    headers = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with rig.client.post(path, data=body, headers=headers) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if raw.startswith(b"{") else raw


@pytest.mark.parametrize("levels", [500, 990, 5000])
async def test_deep_nesting_on_the_pd_path_is_a_400_naming_the_field(rig: Rig, levels: int) -> None:
    raw = json.dumps({**REQUEST, "extra": 0})[:-1].replace(
        '"extra": 0', '"extra": ' + "[" * levels + "]" * levels
    )
    status, answer = await _post(rig, (raw + "}").encode(), x_prefiller_host_port=rig.prefill_addr)
    assert status == 400 and "nests deeper than 100 levels" in answer["error"]["message"]
    assert rig.prefill.received == [] and rig.decode.received == []


async def test_nesting_within_the_shared_limit_is_split_normally(rig: Rig) -> None:
    body = {**REQUEST, "stream": False, "extra": _nested(jsonbody.MAX_DEPTH - 1)}
    status, _ = await _post(rig, json.dumps(body).encode(), x_prefiller_host_port=rig.prefill_addr)
    assert status == 200 and len(rig.prefill.received) == 1
    assert rig.decode.received[0].body["extra"] == body["extra"]


@pytest.mark.parametrize("field", ["prompt", "cache_salt", "user"])
async def test_a_lone_surrogate_on_the_pd_path_is_a_400_naming_the_field(rig: Rig, field: str) -> None:
    body = json.dumps({**REQUEST, field: "x\udc00"}).encode()
    status, answer = await _post(rig, body, x_prefiller_host_port=rig.prefill_addr)
    assert status == 400 and answer["error"]["param"] == field and "surrogate" in answer["error"]["message"]
    assert rig.decode.received == []


TRANSFER_BODIES = [
    (
        {
            "kv_transfer_params": {
                "do_remote_prefill": True,
                "remote_host": "169.254.169.254",
                "remote_port": 80,
            }
        },
        "kv_transfer_params",
    ),
    ({"ec_transfer_params": {"remote_host": "10.0.0.1"}}, "ec_transfer_params"),
    ({"vllm_xargs": {"kv_transfer_params": "x"}}, "vllm_xargs.kv_transfer_params"),
]


@pytest.mark.parametrize(("extra", "field"), TRANSFER_BODIES)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/responses", "/anything"])
@pytest.mark.parametrize("pd", [True, False])
async def test_client_transfer_params_never_reach_a_model_server(
    rig: Rig, extra: dict[str, Any], field: str, path: str, pd: bool
) -> None:
    headers = {"x_prefiller_host_port": rig.prefill_addr} if pd else {}
    status, answer = await _post(rig, json.dumps({**REQUEST, **extra}).encode(), path, **headers)
    assert status == 400 and answer["error"]["param"] == field
    assert rig.prefill.received == [] and rig.decode.received == []


async def test_an_escaped_key_is_caught_and_non_json_bodies_pass_untouched(rig: Rig) -> None:
    sneaky = b'{"model":"tiny","prompt":"p","kv_transfer\\u005fparams":{"remote_host":"10.9.9.9"}}'
    assert (await _post(rig, sneaky))[0] == 400
    multipart = (
        b"--b\r\nContent-Disposition: form-data; name=kv_transfer_params\r\n\r\n{\\u0041}\r\n--b--\r\n"
    )
    async with rig.client.post("/v1/audio/transcriptions", data=multipart) as r:
        assert r.status == 200
    assert [seen.body for seen in rig.decode.received] == [multipart]


async def test_credentials_stay_off_the_prefill_leg_unless_configured() -> None:
    credentials = {"authorization": "Bearer t", "cookie": "s=1", "x-api-key": "k"}
    for forward in (False, True):
        async for rig in build_rig(forward_credentials_to_prefill=forward):
            status, _ = await _post(
                rig, json.dumps(REQUEST).encode(), x_prefiller_host_port=rig.prefill_addr, **credentials
            )
            assert status == 200
            [prefill], [decode] = rig.prefill.received, rig.decode.received
            for name, value in credentials.items():
                assert decode.headers[name] == value
                assert prefill.headers.get(name) == (value if forward else None)


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1/x:{port}",
        "u:p@127.0.0.1:{port}",
        "127.0.0.1:{port}/x",
        "127.0.0.1:{port}?a",
        "127.0.0.1#:{port}",
        "127.0.0.1:+{port}",
        "127.0.0.1:" + "1" * 5000,  # the message was int()'s "Exceeds the limit (4300 digits)"
        "127.0.0.1:" + "0" * 5000 + "{port}",
    ],
)
async def test_a_prefill_target_with_more_than_host_and_port_is_a_400(rig: Rig, target: str) -> None:
    port = rig.prefill_addr.rsplit(":", 1)[1]
    status, answer = await _post(
        rig, json.dumps(REQUEST).encode(), x_prefiller_host_port=target.format(port=port)
    )
    assert status == 400 and "must be host:port" in answer["error"]["message"]
    assert rig.prefill.received == [] and rig.decode.received == []


async def test_a_redirecting_prefill_is_not_followed(rig: Rig) -> None:
    elsewhere = StandIn(answer={"id": "x", "kv_transfer_params": KV_FROM_PREFILL})
    target = TestServer(elsewhere.app(), host="127.0.0.1")
    await target.start_server()

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPTemporaryRedirect(str(target.make_url("/v1/completions")))

    app = web.Application()
    app.router.add_post("/{tail:.*}", redirect)
    redirector = TestServer(app, host="127.0.0.1")
    await redirector.start_server()
    try:
        body = json.dumps({**REQUEST, "stream": False}).encode()
        status, _ = await _post(rig, body, x_prefiller_host_port=f"127.0.0.1:{redirector.port}")
    finally:
        await redirector.close()
        await target.close()
    assert status == 200
    assert elsewhere.received == []
    assert rig.decode.received[0].body == {**REQUEST, "stream": False}  # prefilled locally
    assert rig.fallbacks("status") == 1


@pytest.mark.parametrize("remote_host", ["10.66.0.1", "169.254.169.254", None, 7])
async def test_transfer_params_naming_another_host_are_ignored(rig: Rig, remote_host: Any) -> None:
    rig.prefill.answer = {"id": "p", "kv_transfer_params": {**KV_FROM_PREFILL, "remote_host": remote_host}}
    status, _ = await _post(
        rig, json.dumps({**REQUEST, "stream": False}).encode(), x_prefiller_host_port=rig.prefill_addr
    )
    assert status == 200
    [decode] = rig.decode.received
    assert "kv_transfer_params" not in decode.body
    assert rig.fallbacks("invalid_response") == 1


async def test_guard_refuses_other_ports_and_names_with_a_403() -> None:
    async for rig in build_rig(
        prefill_allowlist=parse_allowlist("127.0.0.0/8"), prefill_ports=frozenset({1})
    ):
        status, answer = await _post(
            rig, json.dumps(REQUEST).encode(), x_prefiller_host_port=rig.prefill_addr
        )
        assert status == 403 and "is not a model-server port" in answer["error"]["message"]
    async for rig in build_rig(prefill_allowlist=parse_allowlist("127.0.0.0/8")):
        port = rig.prefill_addr.rsplit(":", 1)[1]
        status, answer = await _post(
            rig, json.dumps(REQUEST).encode(), x_prefiller_host_port=f"localhost:{port}"
        )
        assert status == 403 and "not an IP address" in answer["error"]["message"]
        assert rig.prefill.received == [] and rig.decode.received == []


async def test_private_keyword_covers_pod_networks_but_not_metadata_loopback_or_the_internet() -> None:
    guard = PrefillGuard(parse_allowlist("private"))
    assert guard.allowlist == PRIVATE_NETWORKS
    for host in ("10.1.2.3", "172.20.0.5", "192.168.7.7", "100.64.1.1", "fd12::5"):
        assert await guard.allows(host, 8000) is None, host
    for host in ("169.254.169.254", "127.0.0.1", "::1", "8.8.8.8", "fe80::1", "0.0.0.0"):
        assert await guard.allows(host, 8000) is not None, host


class FakeDns:
    def __init__(self, answers: list[set[str]]) -> None:
        self.answers, self.calls, self.now = answers, 0, 0.0

    async def resolve(self, name: str) -> set[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if not answer:
            raise OSError("NXDOMAIN")
        return answer


async def test_pool_membership_follows_the_headless_service() -> None:
    import ipaddress

    dns = FakeDns([{"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"}, {"10.0.0.2"}, set()])
    pool = PoolMembership(
        "prefill.ns.svc", ttl_s=5, miss_interval_s=1, resolver=dns.resolve, clock=lambda: dns.now
    )
    guard = PrefillGuard(pool=pool, ports=frozenset({8000}))
    assert await guard.allows("10.0.0.1", 8000) is None and dns.calls == 1
    assert await guard.allows("10.0.0.1", 8000) is None and dns.calls == 1  # cached within the TTL
    assert (
        await guard.allows("10.0.0.2", 8000) is not None and dns.calls == 1
    )  # a miss re-resolves at most every 1 s
    dns.now = 1.5
    assert await guard.allows("10.0.0.2", 8000) is None and dns.calls == 2  # the new pod is let in
    dns.now = 7
    assert await guard.allows("10.0.0.1", 8000) is not None and dns.calls == 3  # a departed pod is not
    dns.now = 13
    assert (
        await guard.allows("10.0.0.2", 8000) is None and dns.calls == 4
    )  # DNS failure keeps the last answer
    assert await pool.contains(ipaddress.ip_address("10.0.0.2"))


def test_pool_dns_and_ports_flags() -> None:
    options = options_from_args(
        build_parser().parse_args(
            [
                "--enable-ssrf-protection",
                "--prefill-pool-dns",
                "prefill.ns.svc",
                "--prefill-ports",
                "8000, 8001",
            ]
        )
    )
    guard = options.guard()
    assert guard is not None and guard.pool is not None and guard.pool.name == "prefill.ns.svc"
    assert guard.ports == frozenset({8000, 8001}) and guard.allowlist == ()


async def test_the_real_resolver_reads_the_system_resolver() -> None:
    pool = PoolMembership("localhost")
    import ipaddress

    assert await pool.contains(ipaddress.ip_address("127.0.0.1"))


async def test_a_failed_body_read_is_not_an_aiohttp_default_page(rig: Rig) -> None:
    # vLLM's error shape everywhere, so a client parses the sidecar's answers like vLLM's.
    status, answer = await _post(rig, b"{", x_prefiller_host_port=rig.prefill_addr)
    assert status == 400 and set(answer["error"]) == {"message", "type", "param", "code"}


async def test_unreachable_guarded_dns_name_refuses() -> None:
    pool = PoolMembership("does-not-exist.invalid", resolver=FakeDns([set()]).resolve)
    guard = PrefillGuard(pool=pool)
    assert await guard.allows("10.0.0.1", 8000) == "10.0.0.1 is not an allowed prefill host"


class SlowDns:
    """A resolver that answers only when released (``hang``: never), counting lookups."""

    def __init__(self, answer: set[str], hang: bool = False) -> None:
        self.answer, self.hang, self.calls = answer, hang, 0
        self.release = asyncio.Event()

    async def resolve(self, name: str) -> set[str]:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        await self.release.wait()
        return self.answer


async def test_requests_waiting_on_one_lookup_share_it() -> None:
    """Each request that found the answer stale queued on the lock and then resolved again itself:
    50 requests meant 50 lookups in a row, the last one waiting for all of them (with a 1 s DNS
    answer, 50 s for a prefill allowed all along)."""
    import ipaddress

    dns = SlowDns({"10.0.0.1"})
    pool = PoolMembership("prefill.ns.svc", resolver=dns.resolve)
    checks = [asyncio.create_task(pool.contains(ipaddress.ip_address("10.0.0.1"))) for _ in range(50)]
    for _ in range(5):
        await asyncio.sleep(0)  # every check is now waiting on the first lookup
    dns.release.set()
    assert await asyncio.wait_for(asyncio.gather(*checks), 5) == [True] * 50
    assert dns.calls == 1


async def test_a_hanging_resolver_fails_the_check_in_bounded_time() -> None:
    """getaddrinfo has no timeout of its own here; a DNS server that never answers held every P/D
    request on the lock, the client waiting on nothing (the prefill timeout had not started)."""
    import ipaddress

    dns = SlowDns({"10.0.0.1"}, hang=True)
    pool = PoolMembership("prefill.ns.svc", resolver=dns.resolve, resolve_timeout_s=0.05)
    guard = PrefillGuard(pool=pool)
    assert (
        await asyncio.wait_for(guard.allows("10.0.0.1", 8000), 5) == "10.0.0.1 is not an allowed prefill host"
    )
    # The failed lookup is one like any other: retried after the miss interval, not per request.
    assert not await pool.contains(ipaddress.ip_address("10.0.0.1")) and dns.calls == 1
