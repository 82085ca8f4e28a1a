"""Limits and timers of the HTTP/2 gRPC transport, with the reasons for the defaults."""

from __future__ import annotations

from dataclasses import dataclass

from epp.transport.frames import DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE, MAX_WINDOW


@dataclass(frozen=True, slots=True)
class TransportOptions:
    # Advertised in SETTINGS and enforced: a stream beyond it gets RST_STREAM(REFUSED_STREAM), which
    # a client may retry. An ext_proc stream lives as long as its HTTP request (an LLM answer can
    # stream for minutes) and Envoy multiplexes them all on one connection per worker, so the limit
    # is high (grpc.aio sets none). Handlers of closed streams count too: while that many are still
    # winding down the connection reads nothing more, so a peer that opens and resets streams in a
    # loop cannot pile them up (the "rapid reset" attack, CVE-2023-44487).
    max_concurrent_streams: int = 10_000
    # Connections beyond this get SETTINGS + GOAWAY(ENHANCE_YOUR_CALM) and are closed. The EPP sees
    # one connection per gateway worker, so this is only a guard.
    max_connections: int = 1000
    # Receive windows. Each stream may have this much unread data in flight; the connection window
    # is returned as data arrives, memory is bounded by max_buffered_bytes instead.
    initial_window_size: int = 1 << 20
    connection_window_size: int = 16 << 20
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    # Advertised; a larger header list ends the stream with RESOURCE_EXHAUSTED. Four times this is a
    # hard cap past which the header block is not even decoded (GOAWAY ENHANCE_YOUR_CALM).
    max_header_list_size: int = 16 * 1024
    # gRPC message limits (grpcio's defaults are 4 MiB receive, unlimited send).
    max_receive_message_bytes: int = 4 << 20
    max_send_message_bytes: int = 4 << 20
    # Inbound bytes one connection may hold (incomplete messages + messages the handlers have not
    # read yet). The stream that would exceed it ends with RESOURCE_EXHAUSTED.
    max_buffered_bytes: int = 128 << 20
    # Outbound bytes queued in the socket transport before handlers' send() waits (and the
    # connection stops reading, so a peer that does not read cannot make the server buffer).
    write_buffer_limit: int = 1 << 20
    # A PING after this much silence from the peer; no answer within keepalive_timeout closes the
    # connection (grpcio's EPP settings: 30 s / 10 s).
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    # The client preface + SETTINGS must arrive, and our SETTINGS be acknowledged, within this.
    handshake_timeout: float = 10.0
    # How long a connection closing after GOAWAY may take to flush before it is aborted.
    close_timeout: float = 5.0
    # PING / SETTINGS / empty DATA / PRIORITY / WINDOW_UPDATE / RST_STREAM / CONTINUATION frames and
    # header blocks that open no call (ignored, refused, malformed), in a row without any stream
    # progress, before the peer is told to calm down (GOAWAY ENHANCE_YOUR_CALM): a flood guard. (A
    # header block that opens a call is counted before it resets the count.)
    max_control_frames: int = 10_000

    def __post_init__(self) -> None:
        positive = (
            "max_concurrent_streams",
            "max_connections",
            "max_header_list_size",
            "max_receive_message_bytes",
            "max_send_message_bytes",
            "max_buffered_bytes",
            "write_buffer_limit",
            "max_control_frames",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TransportOptions.{name} must be positive, got {getattr(self, name)}")
        for name in ("keepalive_time", "keepalive_timeout", "handshake_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TransportOptions.{name} must be positive, got {getattr(self, name)}")
        for name in ("initial_window_size", "connection_window_size"):
            value = getattr(self, name)
            if not 65_535 <= value <= MAX_WINDOW:
                raise ValueError(f"TransportOptions.{name} must be in [65535, 2^31-1], got {value}")
        if not DEFAULT_MAX_FRAME_SIZE <= self.max_frame_size <= MAX_MAX_FRAME_SIZE:
            raise ValueError(
                f"TransportOptions.max_frame_size must be in [16384, 2^24-1], got {self.max_frame_size}"
            )
        if self.max_buffered_bytes < self.max_receive_message_bytes:
            raise ValueError("TransportOptions.max_buffered_bytes must hold at least one largest message")
