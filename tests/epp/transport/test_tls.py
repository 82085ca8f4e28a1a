"""TLS as the gateways use it: ALPN h2, no certificate verification on the client side, and the
health service served alone on its own (plaintext) port."""

from __future__ import annotations

import ssl
from pathlib import Path

from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.server.listeners import Transport, make_listener
from epp.transport import health_methods

from .rawh2 import PREFACE, ErrorCode, FrameType, RawClient, grpc_message, request_headers, settings
from .support import ECHO, Probe, ServedMethod, ServerUnderTest, channel, echo_handler


def _client_context(alpn: list[str] | None) -> ssl.SSLContext:
    """Like Envoy's upstream TLS context from kgateway: no verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


async def _echo_over(client: RawClient) -> None:
    client.send_headers(1, request_headers(ECHO))
    client.send_message(1, wrappers_pb2.BytesValue(value=b"tls").SerializeToString(), end_stream=True)
    await client.drain()
    blocks, data, rst = await client.response(1)
    assert rst is None and blocks[-1]["grpc-status"] == "0"
    assert data == [grpc_message(wrappers_pb2.BytesValue(value=b"tls").SerializeToString())]


async def test_unverified_tls_with_alpn_h2(transport: str, certificate: tuple[Path, Path]) -> None:
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest(transport, [method], tls=certificate) as server:
        client = await RawClient.connect(server.port, ssl_context=_client_context(["h2"]))
        assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        await _echo_over(client)
        client.abort()


async def test_tls_without_alpn_is_http2_by_prior_knowledge(certificate: tuple[Path, Path]) -> None:
    """h2 only: C-core closes a TLS connection that negotiated no ALPN; this server speaks HTTP/2
    by prior knowledge to a client that offers none."""
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest("h2", [method], tls=certificate) as server:
        client = await RawClient.connect(server.port, ssl_context=_client_context(None))
        assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        await _echo_over(client)
        client.abort()


async def test_grpc_refuses_tls_without_alpn(certificate: tuple[Path, Path]) -> None:
    """Why h2 is the EPP's default transport: grpc.aio's C-core closes a TLS connection that
    negotiated no ALPN, which is how kgateway's ext_proc cluster dials the EPP."""
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest("grpc", [method], tls=certificate) as server:
        try:
            client = await RawClient.connect(server.port, ssl_context=_client_context(None), handshake=False)
        except (ssl.SSLError, ConnectionError):
            return  # refused during the handshake
        client.send(PREFACE + settings())
        await client.drain()
        assert await client.read_to_end() == []  # closed without a single HTTP/2 frame
        client.abort()


async def test_tls_offering_only_http11_is_refused(certificate: tuple[Path, Path]) -> None:
    method = ServedMethod(ECHO, wrappers_pb2.BytesValue, echo_handler(Probe()))
    async with ServerUnderTest("h2", [method], tls=certificate) as server:
        client = await RawClient.connect(
            server.port, ssl_context=_client_context(["http/1.1"]), handshake=False
        )
        client.send(b"POST /test.Echo/Bidi HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await client.drain()
        frames = await client.read_to_end()
        assert frames and frames[-1].type == FrameType.GOAWAY
        assert frames[-1].error_code == ErrorCode.PROTOCOL_ERROR
        client.abort()


async def test_health_alone_on_its_own_port(transport: str) -> None:
    """What the EPP runs on --grpc-health-port: a second listener of the same transport with only
    grpc.health.v1, plaintext (Kubernetes probes cannot speak TLS)."""
    statuses = {"liveness": health_pb2.HealthCheckResponse.SERVING}
    health = make_listener(
        Transport(transport),
        health_methods(lambda service: statuses.get(service, health_pb2.HealthCheckResponse.NOT_SERVING)),
        "127.0.0.1",
        0,
    )
    port = await health.start()
    try:
        probe_target = ServerUnderTest(transport, [])
        probe_target.port = port
        async with channel(probe_target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert (await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))).status == 1
            assert (await stub.Check(health_pb2.HealthCheckRequest(service="readiness"))).status == 2
    finally:
        await health.shutdown(0)
