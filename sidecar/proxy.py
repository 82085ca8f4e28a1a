"""The sidecar's HTTP server: pass-through proxy plus the two-phase P/D path.

Two pooled client sessions: one for the prefill pods (a per-host connection limit), one for the
local model server (none: vLLM admits and queues its own requests, visibly). Nothing is
written to the client before the local model server has answered with its status line, so a failed
or slow prefill turns into a local prefill (counted in ``llmd_sidecar_prefill_fallbacks_total``),
never into a half-sent response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import jsonbody
from runloop import HTTP_SERVER_LIMITS
from sidecar.config import SidecarOptions
from sidecar.pd import (
    DISAGGREGATED_PATHS,
    PREFILLER_HEADER,
    REQUEST_ID_HEADER,
    InvalidPrefillResponse,
    client_transfer_field,
    decode_body,
    kv_params_from_prefill,
    parse_host_port,
    prefill_body,
)

log = logging.getLogger(__name__)

# RFC 9110 hop-by-hop headers plus the ones the proxy recomputes.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",  # non-standard, still sent by some clients
        "host",
        "content-length",
    }
)

# Client credentials: sent to the local model server, not to a prefill pod (see SidecarOptions).
_CREDENTIALS = frozenset({"authorization", "cookie", "x-api-key", "api-key"})


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmd_sidecar_requests", "Requests handled, by path taken.", ("mode",), registry=self.registry
        )
        self.fallbacks = Counter(
            "llmd_sidecar_prefill_fallbacks",
            "Disaggregated requests prefilled locally because the remote prefill failed.",
            ("reason",),
            registry=self.registry,
        )
        self.prefill_seconds = Histogram(
            "llmd_sidecar_prefill_duration_seconds",
            "Duration of successful remote prefill legs.",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.ssrf_rejections = Counter(
            "llmd_sidecar_ssrf_rejections",
            "Requests refused because the prefill host is not allowed.",
            registry=self.registry,
        )
        for mode in ("passthrough", "disaggregated"):
            self.requests.labels(mode)
        for reason in ("timeout", "connect", "status", "invalid_response", "decode_kv_load"):
            self.fallbacks.labels(reason)


# Largest prefill answer read. It carries one token and the transfer parameters; echo or
# prompt_logprobs from the client can make it a few MB. Past this the pod is misbehaving: reading on
# would only fill memory (the prefill timeout alone lets a fast pod send gigabytes).
MAX_PREFILL_ANSWER_BYTES = 64 << 20


class PrefillFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Sidecar:
    def __init__(self, options: SidecarOptions, tracer: Any = None) -> None:
        """``tracer``: an OpenTelemetry Tracer (``--tracing``; see sidecar/tracing.py), None when off."""
        self.options = options
        self.tracer = tracer
        self.metrics = SidecarMetrics()
        self.model_server = f"http://{options.model_server_host}:{options.model_server_port}"
        self.guard = options.guard()
        self._session: aiohttp.ClientSession | None = None
        self._local: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.metrics.registry),
                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            )

        app.router.add_get("/metrics", metrics)
        return app

    async def _open(self, _app: web.Application) -> None:
        self._session = _session(
            aiohttp.TCPConnector(limit=0, limit_per_host=self.options.max_conns_per_host)
        )
        # The local model server's leg has no connection limit. Sharing the prefill limit (100 per
        # host) made the 101st concurrent request wait in the sidecar for a connection, with no
        # timeout (the local leg has no total), in a queue vLLM (256 sequences by default) never
        # saw: not in its waiting metric, so not in the EPP's scheduling either.
        self._local = _session(aiohttp.TCPConnector(limit=0))

    async def _close(self, _app: web.Application) -> None:
        for session in (self._session, self._local):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The prefill pods' session."""
        if self._session is None:
            raise RuntimeError("the sidecar's client session is not open (app not started)")
        return self._session

    @property
    def local(self) -> aiohttp.ClientSession:
        """The local model server's session."""
        if self._local is None:
            raise RuntimeError("the sidecar's client session is not open (app not started)")
        return self._local

    # --- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        prefiller = request.headers.get(PREFILLER_HEADER)
        body = await request.read() if request.can_read_body else b""
        disaggregate = (
            prefiller is not None and request.method == "POST" and request.path in DISAGGREGATED_PATHS
        )
        parsed: Any = None
        if disaggregate or _may_carry_transfer_fields(body):
            # Client-supplied transfer parameters must never reach the model server, whatever the
            # path: they make vLLM connect to the host they name. Checking needs the parsed body.
            try:
                parsed = jsonbody.loads(body, max_containers=jsonbody.MAX_REQUEST_CONTAINERS)
            except jsonbody.BodyError as exc:
                return _error(400, exc.message, exc.field)
            field = client_transfer_field(parsed)
            if field is not None:
                return _error(
                    400, f"'{field}' is set by the serving stack and must not come from a client", field
                )
        if not disaggregate or prefiller is None:
            self.metrics.requests.labels("passthrough").inc()
            return await self._forward(request, body, _forward_headers(request.headers))
        if self.tracer is None:
            return await self._disaggregated(request, parsed, prefiller)
        from opentelemetry import propagate

        parent = propagate.extract(request.headers)
        with self.tracer.start_as_current_span("llm_d.sidecar.pd", context=parent) as span:
            span.set_attribute("llm_d.prefill_endpoint", prefiller)
            response = await self._disaggregated(request, parsed, prefiller)
            span.set_attribute("http.response.status_code", response.status)
            return response

    def _leg(self, name: str, headers: CIMultiDict[str]) -> Any:
        """A child span for one leg (and its ``traceparent`` on the leg's request); nothing when off."""
        if self.tracer is None:
            return contextlib.nullcontext()
        from opentelemetry import propagate

        span = self.tracer.start_as_current_span(name)
        carrier: dict[str, str] = {}

        @contextlib.contextmanager
        def leg() -> Iterator[Any]:
            with span as current:
                propagate.inject(carrier)
                headers.update(carrier)
                yield current

        return leg()

    async def _disaggregated(self, request: web.Request, original: Any, prefiller: str) -> web.StreamResponse:
        try:
            host, port = parse_host_port(prefiller)
        except ValueError as exc:
            return _error(400, str(exc))
        if self.guard is not None:
            refusal = await self.guard.allows(host, port)
            if refusal is not None:
                self.metrics.ssrf_rejections.inc()
                log.warning("refusing prefill on %r: %s", prefiller[:100], refusal)
                return _error(403, f"prefill target refused: {refusal}")
        if not isinstance(original, dict):
            return _error(400, "the request body must be a JSON object")

        self.metrics.requests.labels("disaggregated").inc()
        headers = _forward_headers(request.headers)
        headers[REQUEST_ID_HEADER] = request.headers.get(REQUEST_ID_HEADER) or str(uuid.uuid4())
        url = f"http://{_join_host_port(host, port)}{request.path_qs}"
        # The sidecar itself parses the prefill answer and the session does not decompress:
        # ask for it uncompressed (aiohttp would otherwise offer gzip on its own).
        prefill_headers = CIMultiDict(headers)
        if not self.options.forward_credentials_to_prefill:
            for name in _CREDENTIALS:
                prefill_headers.popall(name, None)
        prefill_headers["Accept-Encoding"] = "identity"
        try:
            with self._leg("llm_d.sidecar.prefill", prefill_headers) as leg:
                try:
                    kv_params = await self._prefill(url, prefill_body(original), prefill_headers, host)
                except PrefillFailed as exc:
                    if leg is not None:
                        leg.set_attribute("llm_d.fallback_reason", exc.reason)
                    raise
        except PrefillFailed as exc:
            self.metrics.fallbacks.labels(exc.reason).inc()
            log.warning(
                "request %s: prefill on %s failed (%s: %s); prefilling locally",
                headers[REQUEST_ID_HEADER],
                prefiller,
                exc.reason,
                exc,
            )
            with self._leg("llm_d.sidecar.decode", headers) as leg:
                if leg is not None:
                    leg.set_attribute("llm_d.local_prefill", True)
                return await self._forward(request, json.dumps(original).encode(), headers)
        # vLLM answers 500 when it cannot load the remote KV (kv_load_failure_policy "fail", e.g. a
        # NIXL handshake timing out); nothing has reached the client yet, so run it locally instead.
        with self._leg("llm_d.sidecar.decode", headers):
            return await self._forward(
                request,
                json.dumps(decode_body(original, kv_params)).encode(),
                headers,
                local_retry=json.dumps(original).encode(),
            )

    async def _prefill(
        self, url: str, body: dict[str, Any], headers: CIMultiDict[str], host: str
    ) -> dict[str, Any]:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(
            total=self.options.prefill_timeout_s, sock_connect=self.options.connect_timeout_s
        )
        try:
            # No redirects: the answer must come from the host the EPP chose, not one it points to.
            async with self.session.post(
                url, json=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                if response.status // 100 != 2:
                    detail = await response.content.read(200)  # for the log; the rest is not needed
                    raise PrefillFailed("status", f"HTTP {response.status}: {detail!r}")
                payload = await _read_at_most(response, MAX_PREFILL_ANSWER_BYTES)
        except TimeoutError as exc:
            raise PrefillFailed("timeout", f"no answer within {self.options.prefill_timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise PrefillFailed("connect", repr(exc)) from exc
        try:
            params = kv_params_from_prefill(jsonbody.loads(payload), prefill_host=host)
        except (jsonbody.BodyError, InvalidPrefillResponse) as exc:
            raise PrefillFailed("invalid_response", str(exc)) from exc
        self.metrics.prefill_seconds.observe(time.monotonic() - started)
        return params

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        headers: CIMultiDict[str],
        local_retry: bytes | None = None,
    ) -> web.StreamResponse:
        """Send the request to the local model server and stream its answer back as it arrives.

        With ``local_retry``, a 5xx answer (seen before anything is sent to the client) is dropped
        and ``local_retry`` is sent instead: the P/D decode leg falling back to a local prefill.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.options.connect_timeout_s, sock_read=self.options.read_timeout_s
        )
        url = f"{self.model_server}{request.path_qs}"
        # The client's Host, as the gateway alone (Envoy keeps it) would hand it over: vLLM builds
        # absolute URLs from it (a trailing slash is a 307 to http://<Host>/v1/...), and the model
        # server's own address (aiohttp's default) redirected clients to their own loopback.
        local_headers = CIMultiDict(headers)
        if host := request.headers.get("Host"):
            local_headers["Host"] = host
        response: web.StreamResponse | None = None
        try:
            upstream_cm = self.local.request(
                request.method,
                url,
                data=body or None,
                headers=local_headers,
                timeout=timeout,
                allow_redirects=False,
            )
            async with upstream_cm as upstream:
                if local_retry is not None and upstream.status >= 500:
                    detail = b"<answer cut short>"
                    with contextlib.suppress(aiohttp.ClientError):  # a broken error answer is one too
                        detail = await upstream.content.read(200)  # only logged: never the whole answer
                    self.metrics.fallbacks.labels("decode_kv_load").inc()
                    log.warning(
                        "request %s: decode with remote KV failed (HTTP %d: %r); prefilling locally",
                        headers.get(REQUEST_ID_HEADER),
                        upstream.status,
                        detail,
                    )
                    return await self._forward(request, local_retry, headers)
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=_forward_headers(upstream.headers)
                )
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                else:
                    response.enable_chunked_encoding()
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        # Every way a model server's answer can break, not only a refused or dropped connection:
        # an answer cut mid-body (ClientPayloadError) or no HTTP at all (ClientResponseError)
        # escaped as an unhandled exception, a bare 500 from aiohttp (no local retry under P/D).
        except (aiohttp.ClientError, TimeoutError) as exc:
            if response is not None and response.prepared:
                # Headers are gone already; the only honest signal left is a cut connection.
                log.error("model server stream broke for %s: %r", request.path, exc)
                raise
            log.error("model server %s unreachable for %s: %r", self.model_server, request.path, exc)
            return _error(502, f"model server unavailable: {exc!r}")


def _session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    # auto_decompress off: bodies pass through byte for byte, Content-Encoding included. So
    # aiohttp must not offer encodings of its own: only what the client accepts goes upstream.
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
    )


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise PrefillFailed("invalid_response", f"prefill answer exceeds {limit} bytes")
    return bytes(body)


def _forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    # RFC 9110 7.6.1: headers a sender names in Connection belong to that one hop as well.
    connection_scoped = {
        token.strip().lower()
        for value in _all_values(headers, "Connection")
        for token in value.split(",")
        if token.strip()
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in _NOT_FORWARDED and lowered not in connection_scoped and lowered != PREFILLER_HEADER:
            out.add(name, value)
    return out


def _all_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)  # multidicts hold repeated headers
    if getall is not None:
        values: list[str] = getall(name, [])
        return values
    value = headers.get(name)
    return [value] if value is not None else []


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _may_carry_transfer_fields(body: bytes) -> bool:
    """False when the body cannot be a JSON object holding a transfer field: not an object, or
    neither the name nor a \\u escape (which could spell it) appears. Most pass-through requests
    skip the JSON parse, and non-JSON bodies (multipart uploads) are never parsed."""
    return body.lstrip()[:1] == b"{" and (b"transfer_params" in body or b"\\u" in body)


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    # vLLM's error shape (message, type, param, code), so clients parse both the same way.
    return web.json_response(
        {"error": {"message": message, "type": "SidecarError", "param": param, "code": status}}, status=status
    )


async def serve(options: SidecarOptions) -> None:
    provider = None
    if options.tracing:
        from sidecar.tracing import tracer_provider

        provider = tracer_provider()
    sidecar = Sidecar(options, provider.get_tracer("llm-d.sidecar") if provider is not None else None)
    # handler_cancellation: a client that disconnects cancels its handler, and with it both legs
    # (aiohttp closes a cancelled upstream request's connection, and vLLM aborts a request whose
    # connection closes, freeing its KV blocks). aiohttp's default (off, unlike its TestServer)
    # let a prefill run to its timeout and then a whole decode run for a client long gone.
    runners = [web.AppRunner(sidecar.app(), access_log=None, handler_cancellation=True, **HTTP_SERVER_LIMITS)]
    if options.metrics_port:
        runners.append(web.AppRunner(sidecar.metrics_app(), access_log=None))
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], options.host, options.port, reuse_address=True).start()
    if options.metrics_port:
        await web.TCPSite(runners[1], options.host, options.metrics_port, reuse_address=True).start()
    log.info(
        "P/D sidecar on %s:%d -> model server %s (connector %s)",
        options.host,
        options.port,
        sidecar.model_server,
        options.kv_connector,
    )
    try:
        await asyncio.Event().wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)  # export the last batch of spans
