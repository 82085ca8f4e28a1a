"""token-producer: backend selection and strict parameters (llm-d's names), each backend's token ids
(estimate, local tokenizer.json from a directory or a Hub download, the vLLM render API, the
simulator's pseudo-tokenizer), skipped requests, and that long prompts are tokenized off the loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from epp.kvevents.tokenization import PromptTokenizer
from epp.plugins.tokens import (
    INLINE_CHARS,
    EstimateBackend,
    LocalBackend,
    SimulatorBackend,
    TokenizedPrompt,
    TokenProducer,
    VllmRenderBackend,
    tokenized_prompt,
)
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import SchedulingRequest
from epp.scheduling.registry import create
from simulator.tokens import render_chat
from simulator.tokens import token_ids as sim_token_ids

WORDS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "user", "assistant", "hello", "world", "\n"]
CHATML = (
    "{{ bos_token }}{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_model(directory: Path) -> Path:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (directory / "chat_template.jinja").write_text(CHATML)
    return directory


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model")


def request(body: dict[str, Any], prompt_text: str | None = None) -> SchedulingRequest:
    text = prompt_text if prompt_text is not None else str(body.get("prompt", ""))
    return SchedulingRequest("r1", "m", text, {}, body=body)


def producer(params: dict[str, Any] | None) -> TokenProducer:
    plugin = create("token-producer", "token-producer", params)
    assert isinstance(plugin, TokenProducer)
    return plugin


def skipped(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "epp_tokenization_skipped_total", {"plugin": "token-producer", "reason": reason}
    )
    return value or 0.0


# ---- configuration ---------------------------------------------------------------------------------


def test_no_backend_is_llm_d_estimate_and_model_name_alone_selects_vllm() -> None:
    assert isinstance(producer(None).backend, EstimateBackend)
    vllm = producer({"modelName": "Qwen/Qwen3-0.6B"}).backend
    assert isinstance(vllm, VllmRenderBackend)
    assert (vllm.url, vllm.timeout, vllm.mm_timeout) == ("http://localhost:8000", 5.0, 30.0)
    custom = producer({"modelName": "m", "vllm": {"url": "http://render:8000/", "timeout": "250ms"}}).backend
    assert isinstance(custom, VllmRenderBackend)
    assert (custom.url, custom.timeout) == ("http://render:8000", 0.25)
    assert isinstance(producer({"simulator": {}}).backend, SimulatorBackend)


def test_deprecated_type_name_tokenizer_still_loads() -> None:
    plugin = create("tokenizer", "t", {"simulator": {}})
    assert isinstance(plugin, TokenProducer) and plugin.type_name == "token-producer"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"estimate": {}, "simulator": {}}, "'simulator' and 'estimate' are alternatives"),
        ({"vllm": {"url": "http://x:1"}}, "'modelName' is required by the vllm backend"),
        ({"modelName": "m", "vllm": {"url": "https://x"}}, "'vllm.url' must be an http:// URL"),
        ({"modelName": "m", "vllm": {"timeouts": "1s"}}, "unknown parameter(s) 'vllm.timeouts'"),
        ({"udsTokenizerConfig": {"socketFile": "/tmp/t.sock"}}, "'udsTokenizerConfig' (llm-d's deprecated"),
        ({"estimate": {"image": {"mode": "static"}}}, "'estimate.image' is not supported"),
        ({"local": {}}, "'local.path' or 'local.huggingFace.repo' must be given"),
        ({"local": {"path": "/nonexistent"}}, "'local.path' could not be loaded"),
        ({"local": {"huggingFace": {"repo": "a/b", "branch": "x"}}}, "'local.huggingFace.branch'"),
        ({"simulator": {"charsPerToken": 3}}, "unknown parameter(s) 'simulator.charsPerToken'"),
    ],
)
def test_bad_parameters_name_the_key(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        producer(params)
    assert message in str(error.value)
    assert "token-producer" in str(error.value)


# ---- backends ----------------------------------------------------------------------------------------


def test_estimate_packs_four_bytes_per_token_and_passes_token_ids_through() -> None:
    backend = EstimateBackend()
    assert backend.tokenize(request({"prompt": "abcdefghi"})) == [
        int.from_bytes(b"abcd", "little"),
        int.from_bytes(b"efgh", "little"),
        ord("i"),
    ]
    assert backend.tokenize(request({"prompt": [5, 6, 7]})) == [5, 6, 7]


def test_simulator_backend_equals_the_simulators_own_tokens() -> None:
    backend = SimulatorBackend()
    text = "You are a helpful assistant.\nQ: what is 2+2? ünïcode ok\0nul"
    assert backend.tokenize(request({"prompt": text})) == sim_token_ids(text)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    assert backend.tokenize(request({"messages": messages})) == sim_token_ids(render_chat(messages))


def test_local_backend_tokenizes_as_vllm_does(model_dir: Path) -> None:
    plugin = producer({"local": {"path": str(model_dir)}})
    assert isinstance(plugin.backend, LocalBackend)
    expected = PromptTokenizer.from_dir(model_dir)
    chat = {"messages": [{"role": "user", "content": "hello world"}]}
    assert plugin.backend.tokenize(request(chat, "user hello world")) == expected.request_tokens(chat)
    assert plugin.backend.tokenize(request({"prompt": "hello world"})) == [1, 7, 8]


def test_local_chat_template_path_overrides_the_models(model_dir: Path, tmp_path: Path) -> None:
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    plugin = producer({"local": {"path": str(model_dir), "chatTemplatePath": str(template)}})
    chat = {"messages": [{"role": "user", "content": "hello world"}]}
    assert plugin.backend.tokenize(request(chat, "hello world")) == [7, 8]


async def test_long_prompts_are_tokenized_off_the_event_loop(model_dir: Path) -> None:
    plugin = producer({"local": {"path": str(model_dir)}})
    assert isinstance(plugin.backend, LocalBackend)
    threads: list[str] = []
    inner = plugin.backend.tokenize

    def spy(req: SchedulingRequest) -> list[int]:
        threads.append(threading.current_thread().name)
        return inner(req)

    plugin.backend.tokenize = spy  # type: ignore[method-assign]
    await plugin.start()
    try:
        short = request({"prompt": "hello world"})
        await plugin.prepare(short)
        long_text = " ".join(["hello world"] * (INLINE_CHARS // 11 + 1))
        long = request({"prompt": long_text})
        await plugin.prepare(long)
    finally:
        await plugin.stop()
    assert threads[0] == threading.current_thread().name  # short: inline, cheaper than a hop
    assert threads[1].startswith("tokenize")  # long: the plugin's worker thread
    prepared = long.state["token-producer"]
    assert isinstance(prepared, TokenizedPrompt) and prepared.exact and prepared.backend == "local"
    assert list(prepared.token_ids) == [1] + [7, 8] * (INLINE_CHARS // 11 + 1)


async def test_unsupported_prompts_are_skipped_and_counted(model_dir: Path) -> None:
    plugin = producer({"local": {"path": str(model_dir)}})
    before = skipped("unsupported")
    media = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    req = request(media, "user")
    await plugin.prepare(req)
    assert tokenized_prompt(req, "token-producer") is None
    assert skipped("unsupported") == before + 1
    plugin.produce(req, [])  # the decision does not try again (nor count the skip twice)
    assert skipped("unsupported") == before + 1


@pytest.mark.parametrize(
    "body",
    [
        # The protocol layer lets these through (vLLM answers them itself); the local backend's own
        # code and the template raised TypeError on them, which failed the whole request with a 500.
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]},
        {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"messages": 5}},
    ],
)
async def test_anything_a_backend_raises_leaves_the_request_untokenized(
    model_dir: Path, body: dict[str, Any]
) -> None:
    plugin = producer({"local": {"path": str(model_dir)}})
    before = skipped("error")
    req = request(body, "x")
    await plugin.prepare(req)
    assert tokenized_prompt(req, "token-producer") is None and skipped("error") == before + 1
    plugin.produce(req, [])
    assert skipped("error") == before + 1
    direct = request(body, "x")  # a direct decide() caller: produce alone
    plugin.produce(direct, [])
    assert tokenized_prompt(direct, "token-producer") is None and skipped("error") == before + 2


def test_produce_fills_in_for_direct_decide_callers_and_keeps_prepared_tokens() -> None:
    plugin = producer({"simulator": {}})
    req = request({"prompt": "abcdefgh"})
    plugin.produce(req, [])
    assert list(req.state["token-producer"].token_ids) == sim_token_ids("abcdefgh")
    prepared = request({"prompt": "abcdefgh"})
    prepared.state["token-producer"] = TokenizedPrompt([9], True, "simulator")
    plugin.produce(prepared, [])
    assert list(prepared.state["token-producer"].token_ids) == [9]


# ---- Hub download ------------------------------------------------------------------------------------


@pytest.fixture
async def hub(model_dir: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in for huggingface.co's resolve URLs; records each path and auth header."""
    seen: list[str] = []

    async def resolve(req: web.Request) -> web.StreamResponse:
        seen.append(f"{req.path} {req.headers.get('Authorization', '')}")
        if req.match_info["repo"] != "org/model":
            return web.Response(status=401)
        name = req.match_info["file"]
        if name == "chat_template.jinja":
            return web.Response(status=404)
        return web.Response(body=(model_dir / name).read_bytes())

    app = web.Application()
    app.router.add_get("/{repo:.+}/resolve/{revision}/{file}", resolve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_hub_download_at_start(
    hub: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = hub
    monkeypatch.setenv("HF_TOKEN", "secret")
    params = {
        "local": {
            "huggingFace": {"repo": "org/model", "revision": "abc123", "endpoint": url},
            "cacheDir": str(tmp_path / "cache"),
        }
    }
    plugin = producer(params)
    assert isinstance(plugin.backend, LocalBackend) and plugin.backend.tokenizer is None
    await plugin.start()
    try:
        assert plugin.backend.tokenize(request({"prompt": "hello world"})) == [1, 7, 8]
    finally:
        await plugin.stop()
    assert "/org/model/resolve/abc123/tokenizer.json Bearer secret" in seen
    assert (tmp_path / "cache" / "org--model" / "abc123" / "tokenizer.json").is_file()
    # A second start reuses the cached copy.
    seen.clear()
    again = producer(params)
    await again.start()
    await again.stop()
    assert seen == []


async def test_hub_download_failure_fails_the_start(hub: tuple[str, list[str]], tmp_path: Path) -> None:
    url, _ = hub
    plugin = producer(
        {
            "local": {
                "huggingFace": {"repo": "org/gated", "endpoint": url},
                "cacheDir": str(tmp_path / "cache"),
            }
        }
    )
    with pytest.raises(RuntimeError, match=r"HTTP 401.*HF_TOKEN"):
        await plugin.start()
    await plugin.stop()


# ---- vLLM render API ---------------------------------------------------------------------------------


@pytest.fixture
async def render() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, Any]]], Callable[[int], None]]]:
    """A stand-in for vLLM's render endpoints; ``fail(status)`` makes it answer that status."""
    calls: list[tuple[str, dict[str, Any]]] = []
    failing: list[int] = []
    release = asyncio.Event()  # holds the "slow" answer until the test is over

    async def handler(req: web.Request) -> web.Response:
        body = await req.json()
        calls.append((req.path, body))
        if failing:
            return web.Response(status=failing[0], text="boom")
        if req.path == "/v1/chat/completions/render":
            return web.json_response({"request_id": "x", "token_ids": [1, 2, 3]})
        if body.get("prompt") == "slow":
            await release.wait()
        return web.json_response([{"request_id": "x", "token_ids": [4, 5]}])

    app = web.Application()
    app.router.add_post("/v1/chat/completions/render", handler)
    app.router.add_post("/v1/completions/render", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", calls, failing.append
    release.set()
    await runner.cleanup()


async def test_vllm_render_backend(
    render: tuple[str, list[tuple[str, dict[str, Any]]], Callable[[int], None]],
) -> None:
    url, calls, fail = render
    plugin = producer({"modelName": "served", "vllm": {"url": url, "timeout": "300ms"}})
    await plugin.start()
    try:
        chat = request({"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        await plugin.prepare(chat)
        completion = request({"model": "alias", "prompt": "hi", "stream": True, "stream_options": {}})
        await plugin.prepare(completion)
        assert list(chat.state["token-producer"].token_ids) == [1, 2, 3]
        assert list(completion.state["token-producer"].token_ids) == [4, 5]
        assert [path for path, _ in calls] == ["/v1/chat/completions/render", "/v1/completions/render"]
        assert all(body["model"] == "served" and "stream" not in body for _, body in calls)
        # No tokens from a render that takes longer than the timeout or fails; both counted.
        timeouts, errors = skipped("render_unavailable"), skipped("render_http_500")
        slow = request({"prompt": "slow"})
        await plugin.prepare(slow)
        fail(500)
        failed = request({"prompt": "x"})
        await plugin.prepare(failed)
        assert tokenized_prompt(slow, "token-producer") is None
        assert tokenized_prompt(failed, "token-producer") is None
        assert skipped("render_unavailable") == timeouts + 1
        assert skipped("render_http_500") == errors + 1
        # produce() cannot call out synchronously: it leaves the request alone.
        sync = request({"prompt": "hi"})
        plugin.produce(sync, [])
        assert "token-producer" not in sync.state
    finally:
        await plugin.stop()


async def test_a_hung_render_service_is_not_asked_again_until_its_cooldown(
    render: tuple[str, list[tuple[str, dict[str, Any]]], Callable[[int], None]],
) -> None:
    """Every request waited the full timeout (5 s by default) on a render service that hangs, then
    was scheduled untokenized anyway: a dead dependency added its timeout to every request."""
    url, calls, _ = render
    plugin = producer({"modelName": "served", "vllm": {"url": url, "timeout": "50ms"}})
    backend = plugin.backend
    assert isinstance(backend, VllmRenderBackend)
    now = [100.0]
    backend.clock = lambda: now[0]
    await plugin.start()
    try:
        unavailable, open_ = skipped("render_unavailable"), skipped("render_circuit_open")
        for _ in range(VllmRenderBackend.RENDER_FAILURES_TO_OPEN):
            await plugin.prepare(request({"prompt": "slow"}))  # each waits out the timeout
        assert skipped("render_unavailable") == unavailable + VllmRenderBackend.RENDER_FAILURES_TO_OPEN
        sent = len(calls)
        for _ in range(20):  # at once, without a request to the service
            await asyncio.wait_for(plugin.prepare(request({"prompt": "hi"})), 0.04)
        assert len(calls) == sent and skipped("render_circuit_open") == open_ + 20
        now[0] += VllmRenderBackend.RENDER_COOLDOWN_S
        recovered = request({"prompt": "hi"})
        await plugin.prepare(recovered)  # the probe reaches the service, which answers again
        assert len(calls) == sent + 1
        assert list(recovered.state["token-producer"].token_ids) == [4, 5]
        await plugin.prepare(request({"prompt": "hi"}))
        assert len(calls) == sent + 2  # closed again
    finally:
        await plugin.stop()


@pytest.mark.parametrize("text", ["plain ascii prompt " * 30, "ünïcode and\0nul " * 10, ""])
def test_packed_ids_are_what_the_memo_packs(text: str) -> None:
    from epp.kvevents.hashing import pack_tokens

    tokens, packed = SimulatorBackend().tokenize_packed(request({"prompt": text or "x"}))
    assert packed == pack_tokens(tokens)
