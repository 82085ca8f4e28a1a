"""The methods a server answers, and the handler shapes it calls.

Every method runs as one bidirectional call: ``handler(requests, send)`` where ``requests`` is an
async iterator of decoded request messages (it ends when the client half-closes) and ``send`` an
async callable taking one response message. That is the shape the EPP's ``ExtProcStream.run``
already has. Unary and server-streaming methods are thin wrappers over it.

A handler ends the call with OK by returning, with a chosen status by raising
:class:`epp.transport.grpc.RpcError`; any other exception becomes UNKNOWN (as in grpcio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from epp.transport.grpc import RpcError, StatusCode


class Message(Protocol):
    """What the transport needs of a protobuf message class and its instances."""

    def SerializeToString(self, **kwargs: Any) -> bytes: ...


class MessageType(Protocol):
    def FromString(self, data: bytes) -> Any: ...


Send = Callable[[Any], Awaitable[None]]
SendNowait = Callable[[Any], None]
StreamHandler = Callable[[AsyncIterator[Any], Send], Awaitable[None]]
# A handler's synchronous entry point for one message, given the call's ``send_nowait``: True if it
# handled the message (answers queued with send_nowait), False if the message must reach the
# handler through ``requests`` (it needs to wait for something). See epp.transport.stream.
InlineHandler = Callable[[Any, SendNowait], bool]


class InlineRequests(Protocol):
    """What the h2 transport's ``requests`` offers besides iteration: ``set_inline(handler)``
    registers a synchronous entry point, tried for each message that arrives while the handler
    waits for the next one (grpc.aio's iterator has no such thing: its handlers read every message)."""

    def set_inline(self, handler: InlineHandler | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Method:
    path: str  # "/package.Service/Method"
    request_type: MessageType
    handler: StreamHandler

    def __post_init__(self) -> None:
        service, _, name = self.path.removeprefix("/").partition("/")
        if not self.path.startswith("/") or not service or not name or "/" in name:
            raise ValueError(f"method path {self.path!r} is not /package.Service/Method")


def bidi_method(path: str, request_type: MessageType, handler: StreamHandler) -> Method:
    return Method(path, request_type, handler)


def unary_method(
    path: str, request_type: MessageType, handler: Callable[[Any], Awaitable[Message]]
) -> Method:
    async def run(requests: AsyncIterator[Any], send: Send) -> None:
        await send(await handler(await single_request(requests)))

    return Method(path, request_type, run)


def server_stream_method(
    path: str, request_type: MessageType, handler: Callable[[Any, Send], Awaitable[None]]
) -> Method:
    async def run(requests: AsyncIterator[Any], send: Send) -> None:
        await handler(await single_request(requests), send)

    return Method(path, request_type, run)


async def single_request(requests: AsyncIterator[Any]) -> Any:
    """The one request message of a unary-request call (grpcio answers INTERNAL otherwise too)."""
    iterator = aiter(requests)
    try:
        request = await anext(iterator)
    except StopAsyncIteration:
        raise RpcError(StatusCode.INTERNAL, "expected one request message, got none") from None
    try:
        await anext(iterator)
    except StopAsyncIteration:
        return request
    raise RpcError(StatusCode.INTERNAL, "expected one request message, got more")
