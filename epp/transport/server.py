"""The listening side: sockets (cleartext h2c with prior knowledge, or TLS with ALPN h2), the
connection limit, and graceful shutdown.

    server = H2Server([ext_proc_method(handler)], TransportOptions())
    port = await server.start("0.0.0.0", 9002, ssl=server_ssl_context(cert, key))
    ...
    await server.shutdown(grace=5.0)   # GOAWAY, open calls finish, then close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable

from epp.transport.connection import H2Connection
from epp.transport.methods import Method
from epp.transport.options import TransportOptions

log = logging.getLogger(__name__)


class H2Server:
    def __init__(self, methods: Iterable[Method], options: TransportOptions | None = None) -> None:
        self.options = options if options is not None else TransportOptions()
        self._methods: dict[str, Method] = {}
        for method in methods:
            if method.path in self._methods:
                raise ValueError(f"method {method.path} registered twice")
            self._methods[method.path] = method
        self.connections: set[H2Connection] = set()
        self._listeners: list[asyncio.Server] = []
        self._closing = False

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0 picks a free port); return the bound port. May be called more
        than once to serve the same methods on several sockets."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: H2Connection(self._methods, self.options, self),
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self.options.handshake_timeout if ssl_context is not None else None,
            reuse_address=True,
        )
        self._listeners.append(listener)
        return int(listener.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The port of the first listener."""
        return int(self._listeners[0].sockets[0].getsockname()[1])

    # ConnectionOwner
    def connection_opened(self, connection: H2Connection) -> bool:
        if self._closing or len(self.connections) >= self.options.max_connections:
            if not self._closing:
                log.warning("refusing a connection from %s: %d open", connection.peer, len(self.connections))
            return False
        self.connections.add(connection)
        return True

    def connection_closed(self, connection: H2Connection) -> None:
        self.connections.discard(connection)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, drain every connection (GOAWAY, open calls run on), and after ``grace``
        seconds end what is left with UNAVAILABLE. Returns once every connection is closed."""
        self._closing = True
        for listener in self._listeners:
            listener.close()
        connections = list(self.connections)
        for connection in connections:
            connection.start_drain()
        if grace > 0:
            await self._wait_closed(connections, grace)
        for connection in connections:
            if not connection.closed:
                connection.abort_calls()
        await self._wait_closed(connections, self.options.close_timeout + 1.0)
        for connection in connections:
            if not connection.closed_event.is_set() and connection.transport is not None:
                connection.transport.abort()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 1.0)
        self._listeners.clear()

    @staticmethod
    async def _wait_closed(connections: list[H2Connection], seconds: float) -> None:
        waiting = [c.closed_event.wait() for c in connections if not c.closed_event.is_set()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.gather(*waiting)
