"""``token-producer``: the request's prompt as token ids, for the precise prefix-cache producer.

llm-d-router v0.10 (``pkg/epp/framework/plugins/requestcontrol/dataproducer/tokenizer``) has the
backends ``estimate`` (the default: about 4 bytes per token, no model), ``vllm`` (``modelName`` plus
``vllm.url``/``timeout``/``mmTimeout``: vLLM's ``/v1/completions/render`` and
``/v1/chat/completions/render``) and the deprecated ``udsTokenizerConfig``. This EPP adds two:

* ``local``: the model's ``tokenizer.json`` and chat template, from a directory (``local.path``)
  or downloaded from the Hugging Face Hub at start (``local.huggingFace.repo``/``revision``),
  tokenized in-process exactly as vLLM does (:mod:`epp.kvevents.tokenization`), with no service
  to run beside the EPP;
* ``simulator``: the vLLM simulator's pseudo-tokenizer (4 characters per token), **for the
  simulator only** (:mod:`epp.kvevents.simulator_tokens`).

Tokenizing never blocks the event loop for long: the plugin is a preparer (the director awaits it
before the decision) and hands prompts longer than :data:`INLINE_CHARS` to a small thread pool
(the ``tokenizers`` library releases the GIL, so that work runs beside the loop); the ``vllm``
backend is an HTTP call with its timeout. A request that cannot be tokenized (media parts, a bad
shape, a render error) is left without tokens and counted in ``epp_tokenization_skipped_total``;
its precise prefix score is then zero on every endpoint, as in llm-d.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import aiohttp

from epp import metrics
from epp.datastore import Endpoint
from epp.kvevents import simulator_tokens
from epp.kvevents.chat_template import UnsupportedPrompt
from epp.kvevents.hashing import pack_tokens
from epp.kvevents.tokenization import PromptTokenizer
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import DataProducer, Lifecycle, Preparer, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.registry import register

log = logging.getLogger(__name__)

# The data key of a request's token ids (llm-d's TokenizedPromptDataKey), in request.state under
# the producing plugin's name.
TOKENIZED_PROMPT = "tokenized-prompt"
# Shorter prompts are tokenized on the loop: below this, a thread hop (~35-100 us) costs about as
# much as the tokenizing itself (~0.25 us per character with a 128k-vocabulary BPE).
INLINE_CHARS = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
HF_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True, slots=True)
class TokenizedPrompt:
    token_ids: Sequence[int]
    # True when these are the engine's own ids (local, vllm, simulator); the estimate backend's
    # packed bytes are not, and precise prefix matching refuses them.
    exact: bool
    backend: str
    # The ids as native unsigned 32-bit bytes (epp.kvevents.hashing.pack_tokens), made during the
    # preparation; None when an id does not fit.
    packed: bytes | None = None


class Skip(Exception):
    """The request is left untokenized; ``reason`` labels the metric."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Backend:
    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    synchronous: ClassVar[bool] = True  # can tokenize inside produce() (direct decide() callers)

    def tokenize(self, request: SchedulingRequest) -> list[int]:
        raise Skip("async_only")

    def tokenize_packed(self, request: SchedulingRequest) -> tuple[list[int], bytes | None]:
        """The ids, and the same ids packed as the precise producer's memo keys on them (packing
        16k ids costs ~0.3 ms: done here, in the preparation, rather than in the decision)."""
        tokens = self.tokenize(request)
        return tokens, pack_tokens(tokens) if self.exact else None

    async def tokenize_async(self, request: SchedulingRequest) -> tuple[list[int], bytes | None]:
        return self.tokenize_packed(request)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def _token_list(prompt: Any) -> list[int] | None:
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return list(prompt)
    return None


class EstimateBackend(Backend):
    """llm-d's default: the prompt's UTF-8 bytes packed 4 to a token id (no model, no service)."""

    name = "estimate"
    exact = False

    def tokenize(self, request: SchedulingRequest) -> list[int]:
        given = _token_list(request.body.get("prompt"))
        if given is not None:
            return given
        data = request.prompt_text.encode()
        return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


class SimulatorBackend(Backend):
    """The vLLM simulator's pseudo-tokenizer. Pure Python, ~10x cheaper than a BPE tokenizer
    (about 1 ms for a 6k-token prompt), so it always runs inline."""

    name = "simulator"

    def tokenize(self, request: SchedulingRequest) -> list[int]:
        return self.tokenize_packed(request)[0]

    def tokenize_packed(self, request: SchedulingRequest) -> tuple[list[int], bytes | None]:
        try:
            tokens, packed = simulator_tokens.request_tokens_packed(request.body)
        except UnsupportedPrompt as exc:
            raise Skip("unsupported", str(exc)) from exc
        return tokens, packed if packed is not None else pack_tokens(tokens)


class LocalBackend(Backend):
    """``tokenizer.json`` + chat template in-process (a directory, or downloaded at start)."""

    name = "local"

    def __init__(
        self,
        *,
        path: Path | None,
        chat_template_path: Path | None,
        repo: str | None,
        revision: str,
        endpoint: str,
        token_env: str,
        cache_dir: Path,
        download_timeout: float,
        workers: int,
    ) -> None:
        self.path = path
        self.chat_template_path = chat_template_path
        self.repo = repo
        self.revision = revision
        self.endpoint = endpoint.rstrip("/")
        self.token_env = token_env
        self.cache_dir = cache_dir
        self.download_timeout = download_timeout
        self.workers = workers
        self.tokenizer: PromptTokenizer | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        if path is not None:
            self.tokenizer = self._load(path)  # at config load: a bad path fails the start

    def _load(self, directory: Path) -> PromptTokenizer:
        template = None
        if self.chat_template_path is not None:
            template = self.chat_template_path.read_text(encoding="utf-8")
        return PromptTokenizer.from_dir(directory, chat_template=template)

    def tokenize(self, request: SchedulingRequest) -> list[int]:
        if self.tokenizer is None:
            raise Skip("tokenizer_not_loaded")
        try:
            return self.tokenizer.request_tokens(request.body)
        except UnsupportedPrompt as exc:
            raise Skip("unsupported", str(exc)) from exc

    async def tokenize_async(self, request: SchedulingRequest) -> tuple[list[int], bytes | None]:
        if len(request.prompt_text) <= INLINE_CHARS or self._executor is None:
            return self.tokenize_packed(request)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.tokenize_packed, request)

    async def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="tokenize"
        )
        if self.tokenizer is None and self.repo is not None:
            directory = await asyncio.to_thread(self._download)
            self.tokenizer = await asyncio.to_thread(self._load, directory)
            log.info("token-producer: loaded the tokenizer of %s@%s", self.repo, self.revision)

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _download(self) -> Path:
        """tokenizer.json (required), tokenizer_config.json and chat_template.jinja (optional) of
        ``repo`` at ``revision`` into the cache directory; an existing complete copy is reused."""
        assert self.repo is not None
        target = self.cache_dir / self.repo.replace("/", "--") / self.revision
        if (target / "tokenizer.json").is_file():
            return target
        target.mkdir(parents=True, exist_ok=True)
        token = os.environ.get(self.token_env, "")
        for filename in TOKENIZER_FILES:
            url = f"{self.endpoint}/{self.repo}/resolve/{self.revision}/{filename}"
            request = urllib.request.Request(url)
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=self.download_timeout) as response:
                    data = response.read()
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and filename != "tokenizer.json":
                    continue  # optional file
                raise RuntimeError(
                    f"token-producer: downloading {url} failed with HTTP {exc.code} (check "
                    f"local.huggingFace.repo/revision, and {self.token_env} for a gated model)"
                ) from exc
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                raise RuntimeError(f"token-producer: downloading {url} failed: {exc}") from exc
            partial = target / f".{filename}.part"
            partial.write_bytes(data)
            partial.replace(target / filename)  # tokenizer.json appears complete or not at all
        return target


class VllmRenderBackend(Backend):
    """vLLM's render endpoints (``vllm serve --enable-scale-out`` or ``vllm launch render``): the
    serving engine's own tokenization, one HTTP round trip per request."""

    name = "vllm"
    synchronous = False

    # A render service that hangs cost every request its full timeout (5 s by default) before it
    # was scheduled anyway, without tokens. After this many unavailable answers in a row the
    # backend stops asking for RENDER_COOLDOWN_S (requests go untokenized at once, counted
    # ``render_circuit_open``); then one request probes, and a success closes the circuit.
    RENDER_FAILURES_TO_OPEN: ClassVar[int] = 3
    RENDER_COOLDOWN_S: ClassVar[float] = 2.0

    def __init__(
        self,
        model: str,
        url: str,
        timeout: float,
        mm_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.mm_timeout = mm_timeout
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._failures = 0  # unavailable answers in a row
        self._open_until = 0.0  # clock() before which no request is sent

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def tokenize_async(self, request: SchedulingRequest) -> tuple[list[int], bytes | None]:
        if self._session is None:
            raise Skip("not_started")
        body = dict(request.body)
        body["model"] = self.model
        body.pop("stream", None)
        body.pop("stream_options", None)
        chat = "messages" in body
        path = "/v1/chat/completions/render" if chat else "/v1/completions/render"
        timeout = self.mm_timeout if chat and _has_media(body.get("messages")) else self.timeout
        if self._failures >= self.RENDER_FAILURES_TO_OPEN:
            now = self.clock()
            if now < self._open_until:
                raise Skip("render_circuit_open")
            self._open_until = now + self.RENDER_COOLDOWN_S  # this request probes; the others wait
        try:
            async with self._session.post(
                self.url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status != 200:
                    raise Skip(f"render_http_{response.status}", (await response.text())[:200])
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failures += 1
            if self._failures == self.RENDER_FAILURES_TO_OPEN:
                self._open_until = self.clock() + self.RENDER_COOLDOWN_S
                log.warning(
                    "render service %s unavailable %d times in a row: not asked for %g s",
                    self.url,
                    self._failures,
                    self.RENDER_COOLDOWN_S,
                )
            raise Skip("render_unavailable", repr(exc)) from exc
        self._failures = 0  # it answered: whatever the answer holds, the service is there
        item = answer if chat else (answer[0] if isinstance(answer, list) and answer else None)
        ids = item.get("token_ids") if isinstance(item, dict) else None
        tokens = _token_list(ids)
        if tokens is None:
            raise Skip("render_bad_answer")
        return tokens, pack_tokens(tokens)


def _has_media(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") not in (None, "text") for part in content
        ):
            return True
    return False


@register("token-producer", deprecated_aliases=("tokenizer",), default_producer=True)
class TokenProducer(DataProducer, Preparer, Lifecycle):
    """Puts the prompt's token ids on the request for the precise prefix-cache producer: ``estimate``
    (default, ~4 bytes per token, no model), ``vllm`` (vLLM's render API), ``local`` (the model's
    tokenizer.json and chat template, on disk or downloaded at start) or ``simulator`` (the vLLM
    simulator's pseudo-tokenizer; for the simulator only). Long prompts are tokenized off the event
    loop."""

    produces = frozenset({TOKENIZED_PROMPT})

    def __init__(self, name: str, backend: Backend) -> None:
        super().__init__(name)
        self.backend = backend

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        if params.has("udsTokenizerConfig"):
            params.raw("udsTokenizerConfig")
            raise params.error(
                "udsTokenizerConfig",
                "(llm-d's deprecated tokenizer sidecar) is not supported; use 'vllm' or 'local'",
            )
        chosen = [key for key in ("estimate", "vllm", "local", "simulator") if params.has(key)]
        model = params.string("modelName", "") or None
        if model is not None and not chosen:
            chosen = ["vllm"]  # llm-d: modelName alone selects the vLLM render backend
        if len(chosen) > 1:
            raise params.error(chosen[1], f"and {chosen[0]!r} are alternatives: configure one backend")
        kind = chosen[0] if chosen else "estimate"
        backend: Backend
        if kind == "estimate":
            estimate = params.section("estimate")
            if estimate.keys():
                raise estimate.error(
                    sorted(estimate.keys())[0], "is not supported: multimodal estimation is not implemented"
                )
            backend = EstimateBackend()
        elif kind == "simulator":
            params.section("simulator").finish()
            backend = SimulatorBackend()
        elif kind == "vllm":
            if model is None:
                raise params.error("modelName", "is required by the vllm backend (the model to render for)")
            vllm = params.section("vllm")
            if vllm.has("http"):  # llm-d-inference-scheduler's samples until llm-d-router renamed it
                vllm.raw("http")
                raise vllm.error("http", "is the old name of 'url' (llm-d-router renamed it): use url")
            url = vllm.string("url", "http://localhost:8000")
            if not url.startswith("http://"):
                raise vllm.error(
                    "url", f"must be an http:// URL (TLS is not supported, as in llm-d), got {url!r}"
                )
            backend = VllmRenderBackend(
                model,
                url,
                vllm.duration("timeout", 5.0),
                vllm.duration("mmTimeout", 30.0),
            )
            vllm.finish()
        else:
            backend = _local_backend(params.section("local"))
        return cls(name, backend)

    def consumes(self) -> frozenset[str]:
        return frozenset()

    async def prepare(self, request: SchedulingRequest) -> None:
        if self.name in request.state:
            return
        try:
            tokens, packed = await self.backend.tokenize_async(request)
        except Exception as exc:
            self._skip(request, exc)
            return
        request.state[self.name] = TokenizedPrompt(tokens, self.backend.exact, self.backend.name, packed)

    def produce(self, request: SchedulingRequest, endpoints: Sequence[Endpoint]) -> None:
        """Only for callers of the synchronous ``decide()`` alone (benchmarks, tests): the director
        has normally prepared the tokens already (or tried to: see _skip)."""
        if self.name in request.state or not self.backend.synchronous:
            return
        try:
            tokens, packed = self.backend.tokenize_packed(request)
        except Exception as exc:
            self._skip(request, exc)
            return
        request.state[self.name] = TokenizedPrompt(tokens, self.backend.exact, self.backend.name, packed)

    def _skip(self, request: SchedulingRequest, exc: Exception) -> None:
        """Leave the request untokenized. Not only Skip: a chat template or tokenizer can raise
        anything on a body the protocol layer accepted (``tool_calls: 5`` made the local backend's
        ``list(5)`` raise TypeError), and a request must never fail for want of tokens. The None
        entry marks it tried, so the decision's produce() does not tokenize it again: that re-ran
        the failure inside the decision (a 500) and counted every skip twice."""
        reason = exc.reason if isinstance(exc, Skip) else "error"
        metrics.TOKENIZATION_SKIPPED.labels(self.name, reason).inc()
        if isinstance(exc, Skip):
            log.debug("token-producer %s: request %s not tokenized: %s", self.name, request.request_id, exc)
        else:  # a client can cause it at will: one line, no traceback
            log.warning("token-producer %s: request %s not tokenized: %r", self.name, request.request_id, exc)
        request.state[self.name] = None

    async def start(self) -> None:
        await self.backend.start()

    async def stop(self) -> None:
        await self.backend.stop()


def _local_backend(local: Params) -> LocalBackend:
    path = local.string("path", "") or None
    chat_template = local.string("chatTemplatePath", "") or None
    hub = local.section("huggingFace")
    repo = hub.string("repo", "") or None
    revision = hub.string("revision", "main")
    endpoint = hub.string("endpoint", HF_ENDPOINT)
    token_env = hub.string("tokenEnv", "HF_TOKEN")
    hub.finish()
    cache_dir = Path(local.string("cacheDir", "/tmp/tokenizers"))
    workers = local.integer("workers", min(4, os.cpu_count() or 1), minimum=1, maximum=64)
    timeout = local.duration("downloadTimeout", 60.0)
    local.finish()
    if (path is None) == (repo is None):
        raise local.error("path", "or 'local.huggingFace.repo' must be given (exactly one)")
    template_path = Path(chat_template) if chat_template else None
    if template_path is not None and not template_path.is_file():
        raise local.error("chatTemplatePath", f"names no file: {chat_template!r}")
    try:
        return LocalBackend(
            path=Path(path) if path else None,
            chat_template_path=template_path,
            repo=repo,
            revision=revision,
            endpoint=endpoint,
            token_env=token_env,
            cache_dir=cache_dir,
            download_timeout=timeout,
            workers=workers,
        )
    except Exception as exc:  # OSError, JSON errors, and the tokenizers library's own Exception
        raise local.error("path", f"could not be loaded as a tokenizer directory: {exc}") from exc


def tokenized_prompt(request: SchedulingRequest, producer: str) -> TokenizedPrompt | None:
    value = request.state.get(producer)
    return value if isinstance(value, TokenizedPrompt) else None


def find_token_producer(plugins: Mapping[str, Any], owner: Any) -> TokenProducer:
    producers = [p for p in plugins.values() if isinstance(p, TokenProducer)]
    if len(producers) != 1:
        raise ConfigError(
            f"plugin {owner.name!r} (type {owner.type_name}): needs exactly one token-producer, found "
            f"{len(producers)}"
        )
    return producers[0]
