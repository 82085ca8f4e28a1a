"""A minimal keep-alive HTTP/1.1 GET client for scraping ``/metrics`` over plain HTTP.

Scraping every pod every 50 ms is the EPP's largest steady CPU cost, and most of it was aiohttp's
general-purpose client machinery (~130 us of ~180 us per scrape; see ``benchmarks/epp_scrape.py``).
This client does only what a scrape needs: one persistent connection per pod, one request at a
time, a status line, headers, and a body framed by Content-Length or chunked encoding. Anything
else (redirects, compression, HTTPS) is out of scope: HTTPS scraping goes through aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024


class HttpError(Exception):
    """The pod answered something that is not a well-formed HTTP/1.1 response."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._response: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._parser = _ResponseParser()
        self.closed = False

    # ---- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._response is None or self._response.done():
            # Unasked bytes (an HTTP/1.1 server speaks only when asked): they were kept until the
            # next scrape cleared them, so a pod streaming on its idle connection grew the EPP's
            # memory at its sending rate. Drop the connection; the next scrape connects afresh.
            self._buffer.clear()
            self.close()
            return
        self._buffer += data
        try:
            parsed = self._parser.feed(self._buffer)
        except HttpError as exc:
            self._response.set_exception(exc)
            return
        if parsed is not None:
            self._buffer.clear()
            self._response.set_result(parsed)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._response is not None and not self._response.done():
            self._response.set_exception(ConnectionResetError("connection closed before a full response"))

    # ---- use -----------------------------------------------------------------------------------
    async def get(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, server keeps the connection open)."""
        assert self.transport is not None
        self._response = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._parser = _ResponseParser()
        self.transport.write(request)
        return await self._response

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _parse_response(buffer: bytearray) -> tuple[int, bytes, bool] | None:
    """A complete response in ``buffer`` → (status, body, keep_alive); None if more bytes are due."""
    return _ResponseParser().feed(buffer)


class _ResponseParser:
    """Parses one response as its bytes arrive, each byte once. It used to re-parse the buffer from
    the start on every ``data_received``: a chunked page arriving in pieces was re-walked (every
    chunk copied again) each time, quadratic on the event loop: ~14 s of CPU for a 16 MiB page
    in 16 KiB pieces, which no scrape timeout can interrupt."""

    __slots__ = ("_chunked", "_keep_alive", "_length", "_parts", "_position", "_status", "_total")

    def __init__(self) -> None:
        self._status = 0
        self._position = -1  # where the body parse resumes; -1 until the headers are complete
        self._length: int | None = None
        self._chunked = False
        self._keep_alive = False
        self._parts: list[bytes] = []
        self._total = 0

    def feed(self, buffer: bytearray) -> tuple[int, bytes, bool] | None:
        """``buffer``: everything received so far (only ever appended to)."""
        if self._position < 0 and not self._headers(buffer):
            return None
        if self._chunked:
            return self._dechunk(buffer)
        length = self._length
        assert length is not None
        if len(buffer) - self._position < length:
            return None
        return self._status, bytes(buffer[self._position : self._position + length]), self._keep_alive

    def _headers(self, buffer: bytearray) -> bool:
        header_end = buffer.find(b"\r\n\r\n")
        if header_end == -1:
            if len(buffer) > MAX_HEADER_BYTES:
                raise HttpError("response headers too large")
            return False
        head = bytes(buffer[:header_end]).decode("latin-1").split("\r\n")
        status_line = head[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise HttpError(f"bad status line {head[0][:80]!r}")
        length: int | None = None
        chunked = False
        keep_alive = status_line[0] == "HTTP/1.1"
        for line in head[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                if not value.isdigit():
                    raise HttpError(f"bad Content-Length {value!r}")
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                keep_alive = value.lower() != "close" and (keep_alive or value.lower() == "keep-alive")
        if not chunked:
            if length is None:
                # Body delimited by connection close: not worth supporting for a scrape target.
                raise HttpError("response has neither Content-Length nor chunked encoding")
            if length > MAX_BODY_BYTES:
                raise HttpError(f"response body of {length} bytes exceeds {MAX_BODY_BYTES}")
        self._status, self._length, self._chunked, self._keep_alive = (
            int(status_line[1]),
            length,
            chunked,
            keep_alive,
        )
        self._position = header_end + 4
        return True

    def _dechunk(self, buffer: bytearray) -> tuple[int, bytes, bool] | None:
        position = self._position
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end == -1:
                return None
            size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise HttpError(f"bad chunk size {size_text[:20]!r}") from exc
            if size == 0:
                # The last chunk, optional trailer lines, then an empty line: a blank line ends it.
                if buffer.find(b"\r\n\r\n", line_end) == -1:
                    return None
                return self._status, b"".join(self._parts), self._keep_alive
            if self._total + size > MAX_BODY_BYTES:
                raise HttpError(f"chunked body exceeds {MAX_BODY_BYTES} bytes")
            chunk_start, chunk_end = line_end + 2, line_end + 2 + size
            if len(buffer) < chunk_end + 2:
                return None
            self._parts.append(bytes(buffer[chunk_start:chunk_end]))
            self._total += size
            position = self._position = chunk_end + 2  # this chunk is done: never parsed again


class KeepAliveGetter:
    """Persistent connections keyed by (host, port); at most one request in flight per key
    (two endpoints may share a metrics port; their scrapes then take turns)."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def get(self, host: str, port: int, path: str) -> tuple[int, bytes]:
        """GET ``http://host:port/path``; a stale kept-alive connection is retried once, fresh.
        The caller bounds the time (e.g. ``asyncio.timeout``); on cancellation the connection is
        dropped, since a late response would otherwise be read as the next one's."""
        key = (host, port)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            return await self._get(key, path)

    async def _get(self, key: tuple[str, int], path: str) -> tuple[int, bytes]:
        host, port = key
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/plain\r\n\r\n".encode()
        connection = self._connections.get(key)
        reused = connection is not None and not connection.closed
        for attempt in range(2):
            if connection is None or connection.closed:
                connection = await self._connect(host, port)
            try:
                status, body, keep_alive = await connection.get(request)
            except ConnectionResetError:
                self.drop(host, port)
                connection = None
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: reconnect once
                raise
            except BaseException:
                self.drop(host, port)
                raise
            if not keep_alive:
                self.drop(host, port)
            return status, body
        raise AssertionError("unreachable")

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Connection, host, port)
        self._connections[(host, port)] = protocol
        return protocol

    def drop(self, host: str, port: int, *, forget: bool = False) -> None:
        """Close the connection; ``forget`` also discards the key's state (the endpoint left)."""
        if forget:
            self._locks.pop((host, port), None)
        connection = self._connections.pop((host, port), None)
        if connection is not None:
            connection.close()

    async def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        self._locks.clear()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # let transports finish closing
