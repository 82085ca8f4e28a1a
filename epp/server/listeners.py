"""The EPP's gRPC listeners on either transport: ``h2`` (``epp.transport``, the default) or ``grpc``
(grpc.aio, the reference implementation, ``--transport grpc``).

Both serve the same transport-neutral methods (``epp.transport.methods.Method``: a path, a request
type and a ``handler(requests, send)``), so the ext_proc service and the health service are written
once, and ``EppServer``, the conformance suite and the benchmarks all start their listeners here::

    listener = make_listener(Transport.H2, [ext_proc_method(service.handle)], "0.0.0.0", 9002,
                             tls=CertificateSource(None), options=TransportOptions())
    await listener.start()
    ...
    await listener.shutdown(grace=25.0)   # GOAWAY, open calls run on for grace seconds, then close

A handler ends its call with a chosen status by raising ``epp.transport.RpcError``; on grpc.aio that
becomes ``context.abort`` with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from enum import Enum
from typing import Any, Protocol

import grpc

from epp.server.tls import CertificateSource, ReloadingSslContext
from epp.transport import H2Server, RpcError, TransportOptions
from epp.transport.methods import Method


class Transport(Enum):
    H2 = "h2"
    GRPC = "grpc"


class Listener(Protocol):
    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        ...

    async def start(self) -> int: ...

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, tell clients to go elsewhere (GOAWAY), let open calls run for ``grace``
        seconds, end what is left with UNAVAILABLE and close. Returns once closed."""
        ...


def make_listener(
    transport: Transport,
    methods: Sequence[Method],
    host: str,
    port: int,
    *,
    tls: CertificateSource | None = None,
    options: TransportOptions | None = None,
) -> Listener:
    options = options if options is not None else TransportOptions()
    if transport is Transport.H2:
        return H2Listener(methods, host, port, tls, options)
    return GrpcAioListener(methods, host, port, tls, options)


class H2Listener:
    def __init__(
        self,
        methods: Sequence[Method],
        host: str,
        port: int,
        tls: CertificateSource | None,
        options: TransportOptions,
    ) -> None:
        self.server = H2Server(methods, options)
        self._host, self._requested_port = host, port
        self._tls = ReloadingSslContext(tls) if tls is not None else None
        self._reload: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        context = self._tls.listener_context if self._tls is not None else None
        self.port = await self.server.start(self._host, self._requested_port, context)
        if self._tls is not None and self._tls.source.reload:
            self._reload = asyncio.create_task(self._tls.watch(), name="tls reload")
        return self.port

    async def shutdown(self, grace: float) -> None:
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload
            self._reload = None
        await self.server.shutdown(grace)


class GrpcAioListener:
    def __init__(
        self,
        methods: Sequence[Method],
        host: str,
        port: int,
        tls: CertificateSource | None,
        options: TransportOptions,
    ) -> None:
        self._address = f"{host}:{port}"
        self._tls = tls
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", options.max_receive_message_bytes),
                ("grpc.max_send_message_length", options.max_send_message_bytes),
                ("grpc.max_concurrent_streams", options.max_concurrent_streams),
                # Notice a vanished proxy instead of keeping its streams (and their buffers) forever.
                ("grpc.keepalive_time_ms", int(options.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout * 1000)),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ]
        )
        services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for method in methods:
            service, name = method.path.removeprefix("/").split("/")
            # Every method as a bidirectional stream: on the wire gRPC does not tell them apart, and
            # the handler shape (requests, send) is the same for all (unary ones check their single
            # request themselves: epp.transport.methods.single_request).
            services.setdefault(service, {})[name] = grpc.stream_stream_rpc_method_handler(
                _behavior(method.handler),
                request_deserializer=method.request_type.FromString,
                response_serializer=_serialize,
            )
        for service, table in services.items():
            self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, table)])
        self.port = 0

    async def start(self) -> int:
        if self._tls is None:
            self.port = self.server.add_insecure_port(self._address)
        else:
            self.port = self.server.add_secure_port(self._address, grpc_credentials(self._tls))
        await self.server.start()
        return self.port

    async def shutdown(self, grace: float) -> None:
        # GOAWAY now, new streams refused, open ones run until done or the grace ends.
        await self.server.stop(grace)


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


AioBehavior = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Awaitable[None]]


def _behavior(handler: Callable[[AsyncIterator[Any], Any], Awaitable[None]]) -> AioBehavior:
    # A coroutine writing through the context (not an async generator): cancellation then runs the
    # handler's cleanup deterministically, which keeps the Director's in-flight counts exact.
    async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        try:
            await handler(requests, context.write)
        except RpcError as error:
            await context.abort(grpc.StatusCode[error.code.name], error.message)

    return behavior


def grpc_credentials(tls: CertificateSource) -> grpc.ServerCredentials:
    """gRPC core asks the fetcher before each handshake; it answers a new configuration only when
    the mounted pair changed (CertificateSource rate-limits the file checks).

    grpc.aio (C-core) closes a TLS connection that negotiated no ALPN: a gateway that offers none
    (kgateway's ext_proc cluster) can only reach the EPP on the h2 transport."""

    def configuration(key_pem: bytes, cert_pem: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)])

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        renewed = tls.changed()
        return None if renewed is None else configuration(renewed.key_pem, renewed.cert_pem)

    return grpc.dynamic_ssl_server_credentials(configuration(tls.pair.key_pem, tls.pair.cert_pem), fetch)
