"""The simulator's HTTP surface: vLLM's OpenAI routes, /health, /v1/models, /metrics, and the P/D pull.

Response bodies and SSE chunks copy vLLM 0.32's field sets (checked against a real server by
``tests/slow/test_sim_matches_vllm.py``); the generated text is filler, one word per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import xxhash
from aiohttp import web

import jsonbody
from runloop import HTTP_SERVER_LIMITS
from simulator.engine import Engine, EngineDead, RequestTooLarge, Sequence
from simulator.kvevents import BlockKeyer, KvEventPublisher, KvEventsConfig, none_hash_seed
from simulator.lora import LoraError
from simulator.outputblocks import OutputBlockKeys, xxh64_chain
from simulator.params import SimParams
from simulator.requests import ApiError, GenerationRequest, parse_detokenize, parse_generation, parse_tokenize
from simulator.tokens import (
    CHARS_PER_TOKEN,
    block_hashes,
    output_token,
    piece_id,
    token_ids,
    token_pieces,
)
from simulator.transfer import KV_BYTES_PER_TOKEN, PULL_PATH, KvExports, TransferError, pull_remote
from simulator.vllm_metrics import CONTENT_TYPE, SimMetrics

log = logging.getLogger(__name__)


def _json(body: Any, status: int = 200) -> web.Response:
    # Compact separators and a bare "application/json" (no charset), as vLLM's FastAPI answers have.
    return web.Response(
        body=_compact(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


async def _json_body(request: web.Request, *, declared: bool = True) -> Any:
    """The body, parsed with the limits the EPP and the sidecar apply (jsonbody): a prompt with a
    lone surrogate cannot be tokenised, hashed or logged, and is refused with the field named.

    ``declared``: as vLLM's routes (validate_json_request in vllm/entrypoints/serve/utils/api_utils.py),
    the Content-Type's media type must be application/json (any case, any parameters) before the
    body is even read; no Content-Type is refused too."""
    media_type = request.headers.get("Content-Type", "").lower().split(";", 1)[0]
    if declared and media_type != "application/json":
        message = "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
        raise ApiError(400, message, None, "Bad Request")
    try:
        return jsonbody.loads(await request.read(), max_containers=jsonbody.MAX_REQUEST_CONTAINERS)
    except jsonbody.BodyError as exc:
        raise ApiError(400, exc.message, exc.field or "body") from None


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@web.middleware
async def _as_fastapi_answers(request: web.Request, handler: Any) -> web.StreamResponse:
    """What vLLM's FastAPI app answers where no route does: JSON ``{"detail": ...}`` 404s and 405s
    (aiohttp's are plain text), and Starlette's ``redirect_slashes``: a path that matches a route
    once its trailing slash is added or removed is a 307 to that spelling on the request's Host."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPMethodNotAllowed as exc:
        answer = _json({"detail": "Method Not Allowed"}, status=405)
        answer.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return answer
    except web.HTTPNotFound:
        path = request.path
        other = path[:-1] if path.endswith("/") else path + "/"
        if path != "/" and await _routes(request, other):
            query = f"?{request.query_string}" if request.query_string else ""
            return web.Response(status=307, headers={"Location": f"http://{request.host}{other}{query}"})
        return _json({"detail": "Not Found"}, status=404)


async def _routes(request: web.Request, path: str) -> bool:
    """Whether some route serves ``path``, by any method (Starlette redirects on a partial match)."""
    match = await request.app.router.resolve(request.clone(rel_url=path))
    return not isinstance(match.http_exception, web.HTTPNotFound)


VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-sim"
PULL_TIMEOUT_S = 10.0


class SimServer:
    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.metrics = SimMetrics(params)
        self.engine = Engine(params, self.metrics)
        self.metrics.bind(self.engine)
        self.exports = KvExports(self.engine, params)
        self.created = int(time.time())
        self._session: aiohttp.ClientSession | None = None
        # KV events (--kv-events-config): vLLM's block keys, and a publisher watching the pool.
        self.events: KvEventPublisher | None = None
        self.keyer: BlockKeyer | None = None
        self._untracking: set[asyncio.Task[None]] = set()
        events = KvEventsConfig.parse(params.kv_events_config) if params.kv_events_config else None
        if events is not None and events.enabled:
            algorithm = params.prefix_caching_hash_algo
            self.keyer = BlockKeyer(algorithm, params.block_size, none_hash_seed(algorithm))
            self.events = KvEventPublisher(events, params.block_size)
            self.engine.pool.observer = self.events

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_as_fastapi_answers])
        # allow_head=False: FastAPI adds no HEAD to a GET route (vLLM answers HEAD /health 405).
        app.router.add_get("/health", self._health, allow_head=False)
        # SageMaker's health check, which vLLM serves on GET and POST
        # (vllm/entrypoints/serve/sagemaker/api_router.py).
        app.router.add_route("GET", "/ping", self._health)
        app.router.add_post("/ping", self._health)
        app.router.add_get("/version", self._version, allow_head=False)
        app.router.add_get("/v1/models", self._models, allow_head=False)
        # vLLM 0.32 serves /metrics twice: the instrumentator's route (any query ignored) and, with
        # a trailing slash, prometheus_client's ASGI app, which honours ?name[]= filters
        # (vllm/entrypoints/serve/instrumentator/metrics.py).
        # Both answer HEAD in vLLM (prometheus routes), unlike the FastAPI ones.
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/metrics/", self._filtered_metrics)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_post(PULL_PATH, self._pull)
        lora = self.engine.lora
        if lora is not None and lora.runtime_updates:
            # Only with VLLM_ALLOW_RUNTIME_LORA_UPDATING, as vLLM attaches these routes
            # (vllm/entrypoints/serve/lora/api_router.py).
            app.router.add_post("/v1/load_lora_adapter", self._load_lora)
            app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession()
        if self.events is not None:
            await self.events.start()
        await self.engine.start()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.engine.stop()
        if self.events is not None:
            await self.events.stop()
        self.exports.close()
        if self._session is not None:
            await self._session.close()

    # --- simple routes -------------------------------------------------------------------------

    async def _health(self, _request: web.Request) -> web.Response:
        # vLLM answers 503 once its engine is dead (vllm/entrypoints/serve/instrumentator/health.py),
        # so a liveness probe restarts the pod instead of leaving it to time requests out.
        return web.Response(status=200 if self.engine.healthy else 503)

    async def _version(self, _request: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION})

    async def _models(self, _request: web.Request) -> web.Response:
        models = [self._model_card(self.params.model, self.params.model, None, self.params.max_model_len)]
        if self.engine.lora is not None:
            # Adapters follow the base model, each with its path as root and the base as parent, and
            # no max_model_len of their own (vllm/entrypoints/openai/models/serving.py).
            models += [
                self._model_card(name, path, self.params.model, None)
                for name, path in self.engine.lora.adapters.items()
            ]
        return _json({"object": "list", "data": models})

    def _model_card(
        self, name: str, root: str, parent: str | None, max_model_len: int | None
    ) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{secrets.token_hex(8)}",
                    "object": "model_permission",
                    "created": self.created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }

    async def _load_lora(self, request: web.Request) -> web.Response:
        return await self._lora_call(request, load=True)

    async def _unload_lora(self, request: web.Request) -> web.Response:
        return await self._lora_call(request, load=False)

    async def _lora_call(self, request: web.Request, *, load: bool) -> web.Response:
        lora = self.engine.lora
        assert lora is not None
        try:
            body = await _json_body(request)
            text = lora.load(body) if load else lora.unload(body)
        except ApiError as exc:
            return _json(exc.body(), status=exc.status)
        except LoraError as exc:
            error = {"message": exc.message, "type": exc.error_type, "param": None, "code": exc.status}
            return _json({"error": error}, status=exc.status)
        # vLLM answers success as a plain body, without a JSON content type.
        return web.Response(text=text, status=200)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _filtered_metrics(self, request: web.Request) -> web.Response:
        names = request.query.getall("name[]", [])
        page = self.metrics.render(names or None)
        return web.Response(body=page, headers={"Content-Type": CONTENT_TYPE})

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            parsed = parse_tokenize(await _json_body(request), self.params.model)
        except ApiError as exc:
            return _json(exc.body(), status=exc.status)
        pieces = token_pieces(parsed.text)
        return _json(
            {
                "count": len(pieces),
                "max_model_len": self.params.max_model_len,
                "tokens": token_ids(parsed.text),
                "token_strs": pieces if parsed.return_token_strs else None,
            }
        )

    async def _detokenize(self, request: web.Request) -> web.Response:
        try:
            text = parse_detokenize(await _json_body(request), self.params.model)
        except ApiError as exc:
            return _json(exc.body(), status=exc.status)
        return _json({"prompt": text})

    async def _pull(self, request: web.Request) -> web.Response:
        try:
            body = await _json_body(request, declared=False)  # the simulator's own route
            hashes = self.exports.pull(
                str(body["remote_engine_id"]),
                str(body["remote_request_id"]),
                [int(b) for b in body["remote_block_ids"]],
            )
        except (ApiError, ValueError, KeyError, TypeError):
            return _json({"error": "no KV held for that engine/request/blocks"}, status=404)
        return _json({"block_hashes": hashes})

    # --- generation ----------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _generate(self, request: web.Request, api: str) -> web.StreamResponse:
        try:
            body = await _json_body(request)
            if self.params.request_log:
                self._log_request(request, body)
            lora = self.engine.lora
            parsed = parse_generation(
                "chat" if api == "chat" else "completions",
                body,
                self.params.model,
                self.params.max_model_len,
                self.params.default_output_tokens,
                adapters=lora.adapters if lora is not None else (),
            )
            kv = parsed.kv_transfer_params or {}
            exporting = bool(kv.get("do_remote_decode"))
            importing = bool(kv.get("do_remote_prefill"))
            if exporting and self.params.role == "decode":
                raise ApiError(
                    400,
                    "this instance has role 'decode': it does not prefill for remote decoders",
                    "kv_transfer_params",
                )
            if exporting and parsed.stream:
                raise ApiError(
                    400,
                    "the simulator returns kv_transfer_params only on non-streaming prefill requests",
                    "stream",
                )
            if importing and self.params.role == "prefill":
                raise ApiError(
                    400,
                    "this instance has role 'prefill': it does not decode remote prefills",
                    "kv_transfer_params",
                )
        except ApiError as exc:
            return _json(exc.body(), status=exc.status)

        request_id = f"{'chatcmpl' if api == 'chat' else 'cmpl'}-{secrets.token_hex(8)}"
        lora = self.engine.lora
        adapter = parsed.model if lora is not None and lora.is_adapter(parsed.model) else None
        # vLLM keys cached blocks by adapter too (its block hashes carry the LoRA's name and path as
        # an extra key, vllm/v1/core/kv_cache_utils.py _gen_lora_extra_hash_keys): an adapter never
        # reuses the base model's or another adapter's KV.
        tokens = token_ids(parsed.prompt_text) if self.keyer is not None else []
        salt = f"lora:{adapter}" if adapter else ""
        extra: tuple[Any, ...] | None = None
        digest = b""
        if self.keyer is not None:
            extra = None if adapter is None or lora is None else (("lora", adapter, lora.adapters[adapter]),)
            hashes, digest = self.keyer.chain(tokens, extra)
        else:
            hashes = block_hashes(parsed.prompt_text, self.params.block_size, salt=salt)
        # API server work (tokenising, detokenising) happens before the engine sees the request.
        await asyncio.sleep(
            self.params.request_overhead_s + self.params.tokenize_per_token_s * parsed.prompt_tokens
        )
        seq = Sequence(
            request_id=request_id,
            prompt_tokens=parsed.prompt_tokens,
            hashes=hashes,
            max_tokens=parsed.max_tokens,
            hold_blocks=exporting,
            limit_reason="length" if parsed.explicit_max_tokens else "stop",
            lora=adapter,
        )
        if self.keyer is not None:
            seq.output_keys = self._vllm_output_keys(seq, tokens, extra, digest)
        else:
            seq.output_keys = self._own_output_keys(seq, parsed.prompt_text, salt)
        if importing:
            pulled = await self._pull_kv(kv, hashes)
            if pulled is None and self.params.kv_load_failure_policy == "fail":
                error = ApiError(500, f"Request {request_id} failed with an internal error during generation")
                return _json(error.body(), status=500)
            seq.remote_prefilled = pulled is not None
            seq.transferred_hashes = pulled or []
        try:
            self.engine.submit(seq)
        except RequestTooLarge as exc:
            error = ApiError(400, str(exc), "max_tokens")
            return _json(error.body(), status=400)
        except EngineDead as exc:
            return _json(ApiError(500, str(exc)).body(), status=500)
        if self.events is not None:  # before the engine's next step, so no store goes undescribed
            self.events.track(hashes, tokens)
            task = asyncio.get_running_loop().create_task(self._untrack(seq))
            self._untracking.add(task)
            task.add_done_callback(self._untracking.discard)
        try:
            if parsed.stream:
                return await self._stream(request, parsed, seq)
            await seq.done.wait()
        except BaseException:
            self.engine.abort(seq)
            raise
        if seq.finish_reason == "abort":
            return _json(ApiError(500, "request aborted").body(), status=500)
        kv_out = self.exports.export(request_id, seq) if exporting else None
        return _json(self._full_response(parsed, seq, kv_out))

    # Keys for the blocks past the prompt's full ones (its tail, then generated tokens), chained to
    # the prompt's: vLLM caches those blocks too (simulator/outputblocks.py).

    def _own_output_keys(self, seq: Sequence, prompt_text: str, salt: str) -> OutputBlockKeys:
        size, parent = self.params.block_size, seq.hashes[-1] if seq.hashes else None
        tail = token_ids(prompt_text[len(seq.hashes) * size * CHARS_PER_TOKEN :])
        start = parent if parent is not None else xxhash.xxh64_intdigest(salt.encode())
        return OutputBlockKeys(size, tail, self._output_ids(seq), xxh64_chain(start), parent)

    def _vllm_output_keys(
        self, seq: Sequence, tokens: list[int], extra: tuple[Any, ...] | None, digest: bytes
    ) -> OutputBlockKeys:
        """vLLM's keys over token ids, with the request's LoRA extra key; ``digest`` is the prompt
        chain's last digest."""
        keyer, events = self.keyer, self.events
        assert keyer is not None and events is not None  # a keyer is made only with the publisher
        state = [digest]

        def next_key(ids: list[int]) -> int:
            keys, state[0] = keyer.chain(ids, extra, state[0])
            return keys[0]

        def on_block(key: int, parent: int | None, ids: list[int]) -> None:
            events.track([key], ids, parent)  # before the engine stores it: no undescribed store

        size, parent = self.params.block_size, seq.hashes[-1] if seq.hashes else None
        tail = tokens[len(seq.hashes) * size :]
        return OutputBlockKeys(size, tail, self._output_ids(seq), next_key, parent, on_block)

    def _output_ids(self, seq: Sequence) -> Callable[[int], int]:
        seed = self._output_seed(seq)
        return lambda index: piece_id(output_token(seed, index))

    async def _untrack(self, seq: Sequence) -> None:
        await seq.done.wait()
        assert self.events is not None
        self.events.untrack(seq.hashes)
        self.events.untrack(seq.output_hashes)

    def _log_request(self, request: web.Request, body: Any) -> None:
        # A small append per request, on the loop: this is a debugging aid, not a serving path.
        entry = {"path": request.path, "x-request-id": request.headers.get("x-request-id"), "body": body}
        assert self.params.request_log is not None
        with open(self.params.request_log, "a", encoding="utf-8") as log_file:
            log_file.write(_compact(entry) + "\n")

    async def _pull_kv(self, kv: dict[str, Any], hashes: list[int]) -> list[int] | None:
        """Pull the remote prefill's blocks; None when that failed (counted as a failed transfer)."""
        assert self._session is not None
        try:
            pulled, elapsed = await pull_remote(self._session, kv, hashes, PULL_TIMEOUT_S)
        except TransferError as exc:
            log.warning(
                "KV pull failed (kv_load_failure_policy %s): %s", self.params.kv_load_failure_policy, exc
            )
            self.metrics.nixl_failure()
            return None
        transfer_s = self.params.kv_transfer_per_token_s * len(pulled) * self.params.block_size
        await asyncio.sleep(transfer_s)
        self.metrics.nixl_transfer(
            elapsed + transfer_s, len(pulled) * self.params.block_size * KV_BYTES_PER_TOKEN
        )
        return pulled

    # --- response shapes -----------------------------------------------------------------------

    def _text(self, seq: Sequence, start: int, end: int) -> str:
        seed = self._output_seed(seq)
        return "".join(output_token(seed, i) for i in range(start, end))

    @staticmethod
    def _output_seed(seq: Sequence) -> int:
        """What picks the sequence's output words (so its output tokens are known in advance)."""
        return seq.hashes[0] if seq.hashes else seq.prompt_tokens

    def _logprobs(
        self, parsed: GenerationRequest, seq: Sequence, start: int, end: int, offset: int
    ) -> dict[str, Any] | None:
        """Output tokens ``start``..``end`` with made-up logprobs, in vLLM's shape for the API:
        completions list tokens, their logprobs, text offsets (from ``offset``) and a dict of the
        sampled token and its top-k; chat one entry per token with its UTF-8 bytes and the top-k
        (vllm/entrypoints/openai/{completion,chat_completion}/serving.py)."""
        k = parsed.top_logprobs
        if k is None:
            return None
        seed = self._output_seed(seq)
        entries = []
        for position in range(start, end):
            token = output_token(seed, position)
            logprob = -0.05 - ((seed + position) % 97) / 50
            top = [(token, logprob)]
            for rank in range(1, 4 * k + 4):
                if len(top) >= k:
                    break
                other = output_token(seed + 13 * rank, position)
                if all(other != seen for seen, _ in top):
                    top.append((other, logprob - 0.25 * rank))
            entries.append((token, logprob, top if k else []))
        if parsed.api == "chat":
            return {
                "content": [
                    {
                        "token": token,
                        "logprob": logprob,
                        "bytes": list(token.encode()),
                        "top_logprobs": [
                            {"token": alt, "logprob": value, "bytes": list(alt.encode())}
                            for alt, value in top
                        ],
                    }
                    for token, logprob, top in entries
                ]
            }
        offsets = []
        for token, _, _ in entries:
            offsets.append(offset)
            offset += len(token)
        return {
            "text_offset": offsets,
            "token_logprobs": [logprob for _, logprob, _ in entries],
            "tokens": [token for token, _, _ in entries],
            # The sampled token is always listed, with its top-k (k = 0: the token alone).
            "top_logprobs": [dict(top) if top else {token: logprob} for token, logprob, top in entries],
        }

    def _usage(self, seq: Sequence) -> dict[str, Any]:
        return {
            "prompt_tokens": seq.prompt_tokens,
            "total_tokens": seq.prompt_tokens + seq.generated,
            "completion_tokens": seq.generated,
        }

    def _full_response(
        self, parsed: GenerationRequest, seq: Sequence, kv_out: dict[str, Any] | None
    ) -> dict[str, Any]:
        finish = seq.finish_reason
        logprobs = self._logprobs(parsed, seq, 0, seq.generated, 0)
        common = {"logprobs": logprobs, "finish_reason": finish, "stop_reason": None, "token_ids": None}
        usage = {**self._usage(seq), "prompt_tokens_details": None, "completion_tokens_details": None}
        head = {
            "id": seq.request_id,
            "object": "chat.completion" if parsed.api == "chat" else "text_completion",
            "created": int(time.time()),
            "model": parsed.model,
        }
        text = self._text(seq, 0, seq.generated)
        if parsed.api == "chat":
            message = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            }
            return {
                **head,
                "choices": [{"index": 0, "message": message, **common, "routed_experts": None}],
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": usage,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": kv_out,
                "ec_transfer_params": None,
                "metrics": None,
            }
        choice = {
            "index": 0,
            "text": text,
            **common,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        return {
            **head,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage,
            "kv_transfer_params": kv_out,
            "ec_transfer_params": None,
            "metrics": None,
        }

    async def _stream(
        self, request: web.Request, parsed: GenerationRequest, seq: Sequence
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in self._chunks(parsed, seq):
            await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _chunks(self, parsed: GenerationRequest, seq: Sequence) -> AsyncIterator[dict[str, Any]]:
        chat = parsed.api == "chat"
        head = {
            "id": seq.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": parsed.model,
        }
        first = await seq.tokens.get()
        if first is None:
            return  # aborted before its first token

        # With continuous_usage_stats every event carries the running usage; chat's (a UsageInfo
        # built with completion_tokens_details=None, dumped with exclude_unset) names that field.
        def running_usage(generated: int) -> dict[str, Any]:
            usage = {
                "prompt_tokens": seq.prompt_tokens,
                "total_tokens": seq.prompt_tokens + generated,
                "completion_tokens": generated,
            }
            return {**usage, "completion_tokens_details": None} if chat else usage

        if chat:
            # vLLM 0.32 sends the role chunk with the first token, not when the stream opens
            # (vllm/entrypoints/openai/chat_completion/serving.py: the role delta is emitted while
            # handling the first engine output); sending it early made the EPP's TTFT read ~5 ms.
            role: dict[str, Any] = {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
            if parsed.continuous_usage:
                role["usage"] = running_usage(0)
            yield {**role, "prompt_token_ids": None, "prompt_text": None}
        position: int | None = first
        offset = 0  # completions' text_offset of the next token
        while position is not None:
            last = position + 1 >= seq.max_tokens
            text = self._text(seq, position, position + 1)
            choice: dict[str, Any] = {"index": 0}
            if chat:
                choice["delta"] = {"content": text}
            else:
                choice["text"] = text
            choice["logprobs"] = self._logprobs(parsed, seq, position, position + 1, offset)
            offset += len(text)
            choice["finish_reason"] = seq.limit_reason if last else None
            if last or not chat:
                choice["stop_reason"] = None
            if not chat:
                choice["prompt_token_ids"] = None
            choice["token_ids"] = None
            chunk: dict[str, Any] = {**head, "choices": [choice]}
            if last and not parsed.include_usage:
                # The terminal chunk is stamped only when no usage chunk follows (that one is).
                chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
            if parsed.continuous_usage:
                chunk["usage"] = running_usage(position + 1)
            yield chunk
            position = await seq.tokens.get()
        if seq.finish_reason == "abort":
            return
        if parsed.include_usage:
            yield {**head, "choices": [], "usage": self._usage(seq), "system_fingerprint": SYSTEM_FINGERPRINT}


async def serve(params: SimParams, host: str, port: int) -> None:
    """Run until cancelled (SIGINT/SIGTERM are turned into cancellation by the caller)."""
    server = SimServer(params)
    # handler_cancellation: vLLM aborts a request whose client disconnects, streaming or not
    # (with_cancellation / listen_for_disconnect in its API server). aiohttp's default (off, unlike
    # its TestServer) left a non-streaming request generating, holding its slot and KV blocks,
    # until done for a client long gone.
    runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True, **HTTP_SERVER_LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info(
        "vLLM simulator for %r (role %s) listening on http://%s:%d", params.model, params.role, host, port
    )
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
