"""The lean keep-alive HTTP/1.1 GET client used for plain-HTTP scraping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from epp.scrape.http import HttpError, KeepAliveGetter, _parse_response
from tests.support.epp import wait_until
from tests.support.fake_metrics import FakeMetricsServer

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


def test_content_length_response_complete_and_partial() -> None:
    assert _parse_response(bytearray(OK)) == (200, b"hello", True)
    assert _parse_response(bytearray(OK[:-1])) is None
    assert _parse_response(bytearray(OK[:20])) is None


def test_chunked_response_in_every_split() -> None:
    for cut in range(len(CHUNKED)):
        assert _parse_response(bytearray(CHUNKED[:cut])) is None, cut
    assert _parse_response(bytearray(CHUNKED)) == (200, b"hello world", True)
    with_trailer = CHUNKED[:-2] + b"X-Trailer: 1\r\n\r\n"
    assert _parse_response(bytearray(with_trailer)) == (200, b"hello world", True)
    # One parser fed the same bytes as they arrive, in pieces of every size (it resumes where it was).
    from epp.scrape.http import _ResponseParser

    for size in range(1, len(with_trailer) + 1):
        parser, buffer = _ResponseParser(), bytearray()
        results = []
        for start in range(0, len(with_trailer), size):
            buffer += with_trailer[start : start + size]
            results.append(parser.feed(buffer))
        assert results[-1] == (200, b"hello world", True) and not any(results[:-1]), size


def test_a_chunked_page_arriving_in_pieces_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every piece re-parsed the chunked body from its start, copying every chunk again: quadratic,
    on the event loop, inside data_received (the scrape timeout cannot interrupt it). A 16 MiB page
    (the limit) in 16 KiB pieces cost ~14 s of CPU with every request stalled.

    The work is counted, not timed: every chunk-size line parsed (``int(text, 16)``). Parsed once
    each, that is one per chunk plus at most one per piece (a size line whose chunk is still
    arriving); re-parsing from the start made it about chunks x pieces / 2 (here ~40,000)."""
    from epp.scrape import http

    size_lines: list[bytes] = []

    def counting_int(text: bytes | str, base: int = 10) -> int:
        if base == 16:
            size_lines.append(bytes(text, "ascii") if isinstance(text, str) else text)
        return int(text, base)

    piece = b"# a metrics line\n" * 64
    chunks = (1 << 20) // len(piece)
    page = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(chunks)) + b"0\r\n\r\n"
    data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + page
    pieces = range(0, len(data), 16384)

    async def receive() -> tuple[int, bytes, bool]:
        connection = http._Connection()
        connection._response = asyncio.get_running_loop().create_future()
        monkeypatch.setattr(http, "int", counting_int, raising=False)  # the module's name lookup only
        for start in pieces:
            connection.data_received(data[start : start + 16384])
        monkeypatch.undo()
        return connection._response.result()

    status, body, keep_alive = asyncio.run(receive())
    assert (status, keep_alive) == (200, True) and body == piece * chunks
    assert chunks + 1 <= len(size_lines) <= chunks + 1 + len(pieces), (len(size_lines), chunks, len(pieces))


def test_connection_close_and_http_1_0() -> None:
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    assert _parse_response(bytearray(closing)) == (200, b"hello", False)
    assert _parse_response(bytearray(OK.replace(b"HTTP/1.1", b"HTTP/1.0"))) == (200, b"hello", False)
    keep = OK.replace(b"HTTP/1.1", b"HTTP/1.0").replace(
        b"Content-Length", b"Connection: keep-alive\r\nContent-Length"
    )
    assert _parse_response(bytearray(keep)) == (200, b"hello", True)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\n\r\nbody", "neither Content-Length nor chunked"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "exceeds"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000, "headers too large"),
    ],
)
def test_malformed_responses_raise(raw: bytes, message: str) -> None:
    with pytest.raises(HttpError, match=message):
        _parse_response(bytearray(raw))


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A raw TCP server scripted per connection, counting connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            finally:
                writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
async def getter() -> AsyncIterator[KeepAliveGetter]:
    client = KeepAliveGetter()
    yield client
    await client.close()


async def test_one_connection_is_reused_for_many_gets(getter: KeepAliveGetter) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            assert request.startswith(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:")
            writer.write(CHUNKED)
            await writer.drain()

    async with RawServer(serve) as server:
        for _ in range(5):
            assert await getter.get("127.0.0.1", server.port, "/metrics") == (200, b"hello world")
        assert server.connections == 1


async def test_idle_connection_closed_by_server_is_retried_once(getter: KeepAliveGetter) -> None:
    async def serve_one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK)  # no "Connection: close" header, yet the server hangs up afterwards
        await writer.drain()

    async with RawServer(serve_one_then_close) as server:
        assert await getter.get("127.0.0.1", server.port, "/metrics") == (200, b"hello")
        await asyncio.sleep(0.05)
        assert await getter.get("127.0.0.1", server.port, "/metrics") == (200, b"hello")
        assert server.connections == 2


async def test_fresh_connection_reset_is_an_error(getter: KeepAliveGetter) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)

    async with RawServer(hang_up) as server:
        with pytest.raises(ConnectionResetError):
            await getter.get("127.0.0.1", server.port, "/metrics")
        assert server.connections == 1  # a fresh connection is not retried


async def test_timeout_drops_the_connection(getter: KeepAliveGetter) -> None:
    answered = asyncio.Event()

    async def slow_then_fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if not answered.is_set():
            answered.set()
            await asyncio.sleep(1.0)  # too late: the client gave up on this connection
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(1.0)

    async with RawServer(slow_then_fast) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await getter.get("127.0.0.1", server.port, "/metrics")
        assert await getter.get("127.0.0.1", server.port, "/metrics") == (200, b"hello")
        assert server.connections == 2


async def test_against_aiohttp_server(getter: KeepAliveGetter) -> None:
    server = FakeMetricsServer(page="vllm:num_requests_waiting 1\n")
    await server.start()
    try:
        for _ in range(3):
            assert await getter.get("127.0.0.1", server.port, "/metrics") == (
                200,
                b"vllm:num_requests_waiting 1\n",
            )
        server.status = 503
        status, _ = await getter.get("127.0.0.1", server.port, "/metrics")
        assert status == 503
    finally:
        await server.stop()


async def test_connection_refused(getter: KeepAliveGetter) -> None:
    async def never_called(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("nothing should connect to a closed server")

    async with RawServer(never_called) as server:
        port = server.port  # the server is closed when the block ends
    with pytest.raises(OSError):
        await getter.get("127.0.0.1", port, "/metrics")


async def test_bytes_sent_between_scrapes_are_not_kept(getter: KeepAliveGetter) -> None:
    """An HTTP/1.1 server speaks only when asked. Bytes a pod sent on the idle keep-alive connection
    were appended to its buffer until the next scrape cleared it: a pod streaming on it grew the
    EPP's memory at the pod's sending rate (1.6 MB here; loopback allows GB/s). Such a
    connection is closed at the first unasked byte and the next scrape connects afresh."""
    flooded = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        if flooded.is_set():  # the second connection behaves
            while True:
                await _read_request(reader)
                writer.write(OK)
                await writer.drain()
        flooded.set()
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                writer.write(b"x" * 16384)
                await writer.drain()

    async with RawServer(serve) as server:
        assert await getter.get("127.0.0.1", server.port, "/metrics") == (200, b"hello")
        connection = getter._connections[("127.0.0.1", server.port)]
        await asyncio.wait_for(flooded.wait(), 5)
        await wait_until(lambda: connection.closed)
        assert len(connection._buffer) == 0
        assert await getter.get("127.0.0.1", server.port, "/metrics") == (200, b"hello")
        assert server.connections == 2
