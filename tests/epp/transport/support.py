"""Both ext_proc transports behind one interface, and the test methods the suite calls on them.

``ServerUnderTest`` starts the listener the EPP itself starts (``epp.server.listeners.make_listener``,
what ``EppServer`` calls for ``--transport h2`` and ``--transport grpc``) with the test's methods plus
the EPP's health service, the same limits and the same TLS setup (a ``CertificateSource``), on a
free loopback port. Every test in the suite that can run against both takes the ``transport``
fixture and runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2

from epp.server.health import HealthStatus
from epp.server.listeners import H2Listener, Listener, Transport, make_listener
from epp.server.tls import CertificateSource
from epp.transport import H2Server, RpcError, StatusCode, TransportOptions, bidi_method, health_methods

TRANSPORTS = ("grpc", "h2")
ECHO = "/test.Echo/Bidi"
Send = Callable[[Any], Awaitable[None]]
Handler = Callable[[AsyncIterator[Any], Send], Awaitable[None]]
# The suite's message limit (grpcio's default receive limit is also 4 MiB).
MAX_MESSAGE = 4 * 1024 * 1024
HANG_GUARD = 30.0  # seconds: only so a broken transport fails instead of hanging the run


@dataclass
class ServedMethod:
    path: str
    request_type: Any
    handler: Handler


@dataclass
class Probe:
    """What the server-side handlers saw, for assertions (events, not sleeps)."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0
    active: int = 0
    received: list[bytes] = field(default_factory=list)
    sent: int = 0
    errors: list[BaseException] = field(default_factory=list)


def echo_handler(probe: Probe) -> Handler:
    """``BytesValue`` echo with commands: ``status:<CODE>:<message>`` ends with that status,
    ``boom`` raises RuntimeError, ``hang`` waits until cancelled or released, ``stream:<n>:<size>``
    sends n messages of size bytes, ``quit`` returns before the client half-closes."""

    async def handle(requests: AsyncIterator[Any], send: Send) -> None:
        probe.calls += 1
        probe.active += 1
        probe.started.set()
        try:
            async for request in requests:
                value: bytes = request.value
                probe.received.append(value[:64])
                if value.startswith(b"status:"):
                    _, code, message = value.decode().split(":", 2)
                    raise RpcError(StatusCode[code], message)
                if value == b"boom":
                    raise RuntimeError("boom")
                if value == b"hang":
                    await probe.release.wait()
                    continue
                if value == b"quit":
                    return
                if value.startswith(b"stream:"):
                    _, count, size = value.decode().split(":")
                    for _ in range(int(count)):
                        await send(wrappers_pb2.BytesValue(value=b"s" * int(size)))
                        probe.sent += 1
                    continue
                await send(wrappers_pb2.BytesValue(value=value))
                probe.sent += 1
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        finally:
            probe.active -= 1
            probe.finished.set()

    return handle


class HealthState:
    def __init__(self) -> None:
        self.ready = True
        self.status = HealthStatus(lambda: self.ready)


class ServerUnderTest:
    """One transport serving ``methods`` plus grpc.health.v1 on one port."""

    def __init__(
        self,
        transport: str,
        methods: Sequence[ServedMethod],
        options: TransportOptions | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.transport = transport
        self.methods = list(methods)
        self.options = options or TransportOptions(
            max_receive_message_bytes=MAX_MESSAGE, max_send_message_bytes=MAX_MESSAGE
        )
        self.tls = tls
        self.health = HealthState()
        self.port = 0
        self.listener: Listener | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def h2(self) -> H2Server | None:
        """The h2 transport's server (for its connections' internal state), else None."""
        return self.listener.server if isinstance(self.listener, H2Listener) else None

    async def start(self) -> ServerUnderTest:
        methods = [bidi_method(m.path, m.request_type, m.handler) for m in self.methods]
        methods += health_methods(self.health.status.status, watch_period=0.05)
        # The certificate directory holds tls.crt and tls.key, as --cert-path does.
        source = CertificateSource(self.tls[0].parent) if self.tls else None
        self.listener = make_listener(
            Transport(self.transport), methods, "127.0.0.1", 0, tls=source, options=self.options
        )
        self.port = await self.listener.start()
        return self

    async def shutdown(self, grace: float) -> None:
        """Graceful: stop taking calls, let open ones finish within ``grace`` seconds."""
        if self.listener is not None:
            await self.listener.shutdown(grace)

    async def __aenter__(self) -> ServerUnderTest:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown(0)


def echo_stub(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream(
        ECHO,
        request_serializer=wrappers_pb2.BytesValue.SerializeToString,
        response_deserializer=wrappers_pb2.BytesValue.FromString,
    )


def value(data: bytes) -> wrappers_pb2.BytesValue:
    return wrappers_pb2.BytesValue(value=data)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the code under test offers no event for (internal state of the transport or
    of grpc.aio); the timeout is a hang guard, not a measurement."""
    async with asyncio.timeout(HANG_GUARD):
        while not condition():  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.005)
    assert condition(), what


def make_certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ),
            *("-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@contextlib.asynccontextmanager
async def channel(server: ServerUnderTest, **options: Any) -> AsyncIterator[grpc.aio.Channel]:
    channel_options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE * 2),
        ("grpc.max_send_message_length", MAX_MESSAGE * 2),
        *options.items(),
    ]
    if server.tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=server.tls[0].read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials, channel_options) as ch:
            yield ch
    else:
        async with grpc.aio.insecure_channel(server.address, channel_options) as ch:
            yield ch
