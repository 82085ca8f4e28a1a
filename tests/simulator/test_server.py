"""The simulator's HTTP API, in-process: routes, vLLM response shapes, SSE framing, metrics, P/D."""

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore import Datastore, EndpointSpec
from epp.scrape.parser import VLLM
from epp.scrape.scraper import MetricsScraper, filtered_paths
from simulator.params import SimParams
from simulator.server import SYSTEM_FINGERPRINT, SimServer
from tests.support.vllm_verdicts import CONTENT_TYPE_VERDICTS, ROUTE_VERDICTS, ROUTE_VERDICTS_HOST

FAST = {
    "request_overhead_s": 0.0,
    "tokenize_per_token_s": 0.0,
    "step_overhead_s": 0.0005,
    "prefill_per_token_s": 0.000001,
    "decode_per_seq_s": 0.0001,
    "kv_transfer_per_token_s": 0.0,
}

# Field sets of vLLM 0.32.0's answers (captured from the real server; tests/slow re-checks them).
COMPLETION_KEYS = {
    "id",
    "object",
    "created",
    "model",
    "choices",
    "service_tier",
    "system_fingerprint",
    "usage",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
}
COMPLETION_CHOICE_KEYS = {
    "index",
    "text",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "prompt_logprobs",
    "prompt_token_ids",
    "routed_experts",
}
CHAT_KEYS = {
    "id",
    "object",
    "created",
    "model",
    "choices",
    "service_tier",
    "system_fingerprint",
    "usage",
    "prompt_logprobs",
    "prompt_token_ids",
    "prompt_text",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
}


async def start(params: SimParams) -> tuple[TestServer, aiohttp.ClientSession]:
    server = TestServer(SimServer(params).app(), host="127.0.0.1")
    await server.start_server()
    return server, aiohttp.ClientSession(base_url=str(server.make_url("/")))


@pytest.fixture
async def sim() -> AsyncIterator[aiohttp.ClientSession]:
    server, session = await start(SimParams(model="tiny", **FAST))
    yield session
    await session.close()
    await server.close()


async def metrics(session: aiohttp.ClientSession) -> dict[str, float]:
    async with session.get("/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {
        f"{s.name}{json.dumps(dict(sorted(s.labels.items())))}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    key = f"{name}{json.dumps(dict(sorted({'engine': '0', 'model_name': 'tiny', **labels}.items())))}"
    return samples[key]


async def sse_events(response: aiohttp.ClientResponse) -> list[str]:
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    raw = (await response.read()).decode()
    assert raw.endswith("\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


async def test_health_and_models(sim):
    async with sim.get("/health") as r:
        assert r.status == 200
    async with sim.get("/v1/models") as r:
        body = await r.json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"], m["max_model_len"]) for m in body["data"]] == [
        ("tiny", "model", "vllm", 4096)
    ]


@pytest.mark.parametrize(("method", "path", "status", "body", "location"), ROUTE_VERDICTS)
async def test_routes_answer_as_vllms_fastapi_does(sim, method, path, status, body, location):
    """The simulator answered aiohttp's plain-text "404: Not Found" and "405: Method Not Allowed"
    (vLLM: FastAPI's JSON ``detail``), 200 to HEAD, 404 to /version, /ping and a trailing slash."""
    headers = {"host": ROUTE_VERDICTS_HOST}
    async with sim.request(method, path, headers=headers, allow_redirects=False) as r:
        assert r.status == status
        raw = await r.read()
        assert r.headers.get("Location") == location
    if body is None:
        assert raw == b""
    else:
        assert r.headers["Content-Type"] == "application/json" and json.loads(raw) == body


@pytest.mark.parametrize(("content_type", "status"), CONTENT_TYPE_VERDICTS)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}),
        ("/tokenize", {"model": "tiny", "prompt": "x"}),
        ("/detokenize", {"model": "tiny", "tokens": [65]}),
    ],
)
async def test_the_body_must_be_declared_json_as_vllm_requires(sim, path, body, content_type, status):
    """The simulator served any Content-Type, or none (``requests.post(url, data=json.dumps(...))``
    sends none): a client that worked against it met vLLM's 400 only in production."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    skip = ["Content-Type"] if content_type is None else []  # not even aiohttp's octet-stream
    async with sim.post(path, data=json.dumps(body).encode(), headers=headers, skip_auto_headers=skip) as r:
        assert r.status == status
        answer = await r.json()
    if status == 400:
        assert answer["error"] == {
            "message": "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        }


async def test_completion_shape_and_usage(sim):
    async with sim.post("/v1/completions", json={"model": "tiny", "prompt": "a" * 40, "max_tokens": 3}) as r:
        assert r.status == 200
        body = await r.json()
    assert set(body) == COMPLETION_KEYS
    assert set(body["choices"][0]) == COMPLETION_CHOICE_KEYS
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"].split()) == 3
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


async def test_chat_shape_and_default_length(sim):
    messages = [{"role": "user", "content": "hello"}]
    async with sim.post("/v1/chat/completions", json={"model": "tiny", "messages": messages}) as r:
        body = await r.json()
    assert set(body) == CHAT_KEYS
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 16  # default_output_tokens: the simulated EOS
    assert value(await metrics(sim), "vllm:request_success_total", finished_reason="stop") == 1


async def test_completion_stream_with_usage(sim):
    request = {
        "model": "tiny",
        "prompt": "hello",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with sim.post("/v1/completions", json=request) as r:
        events = await sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "length"]
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["completion_tokens"] == 3
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize(
    "options", [None, {"include_usage": True}, {"include_usage": True, "continuous_usage_stats": True}]
)
async def test_stream_usage_and_fingerprint_as_vllm_sends_them(sim, api, options):
    """vLLM 0.32 (vllm/entrypoints/openai/{completion,chat_completion}/serving.py): the final event
    carries system_fingerprint (the usage chunk, else the last token chunk), and with
    continuous_usage_stats every event carries the running usage (chat: the role chunk's is 0, and
    each has completion_tokens_details null). The simulator sent neither."""
    path, body = (
        ("/v1/completions", {"prompt": "a" * 40})
        if api == "completions"
        else (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a" * 40}]},
        )
    )
    request = {"model": "tiny", **body, "max_tokens": 3, "stream": True}
    if options is not None:
        request["stream_options"] = options
    async with sim.post(path, json=request) as r:
        chunks = [json.loads(e) for e in (await sse_events(r))[:-1]]
    with_usage = options is not None
    continuous = with_usage and options.get("continuous_usage_stats")
    tokens = chunks[1:4] if api == "chat" else chunks[:3]
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None, None, "length"]
    assert [c.get("system_fingerprint") for c in tokens] == [
        None,
        None,
        None if with_usage else SYSTEM_FINGERPRINT,
    ]
    prompt = chunks[-1]["usage"]["prompt_tokens"] if with_usage else 0
    if continuous:
        extra = {"completion_tokens_details": None} if api == "chat" else {}
        counts = [0, 1, 2, 3] if api == "chat" else [1, 2, 3]
        assert [c["usage"] for c in chunks[: len(counts)]] == [
            {"prompt_tokens": prompt, "total_tokens": prompt + n, "completion_tokens": n, **extra}
            for n in counts
        ]
    else:
        assert all("usage" not in c for c in chunks[: len(chunks) - with_usage])
    if with_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["system_fingerprint"] == SYSTEM_FINGERPRINT
        assert chunks[-1]["usage"] == {
            "prompt_tokens": prompt,
            "total_tokens": prompt + 3,
            "completion_tokens": 3,
        }


def _check_completion_logprobs(logprobs: dict, text: str, k: int, start: int = 0) -> None:
    assert set(logprobs) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
    tokens = logprobs["tokens"]
    assert "".join(tokens) == text
    offsets = [start + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert logprobs["text_offset"] == offsets
    for token, logprob, top in zip(tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert logprob < 0 and top[token] == logprob and len(top) == max(k, 1)  # the sampled token, top-k
        assert all(value <= logprob for value in top.values())


def _check_chat_logprobs(logprobs: dict, text: str, k: int) -> None:
    content = logprobs["content"]
    assert "".join(entry["token"] for entry in content) == text
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode()) and entry["logprob"] < 0
        top = entry["top_logprobs"]
        assert len(top) == k and all(set(t) == {"token", "logprob", "bytes"} for t in top)
        assert not top or (top[0]["token"], top[0]["logprob"]) == (entry["token"], entry["logprob"])


@pytest.mark.parametrize("k", [0, 1, 3])
async def test_logprobs_are_returned_when_asked_for(sim, k):
    """vLLM returns a logprobs object when asked (completions ``logprobs: k``, chat ``logprobs: true``
    with ``top_logprobs: k``); the simulator answered ``logprobs: null`` whatever was asked, so a
    client reading them worked only against vLLM."""
    request = {"model": "tiny", "prompt": "a" * 40, "max_tokens": 4, "logprobs": k}
    async with sim.post("/v1/completions", json=request) as r:
        choice = (await r.json())["choices"][0]
    _check_completion_logprobs(choice["logprobs"], choice["text"], k)
    async with sim.post("/v1/completions", json={**request, "stream": True}) as r:
        chunks = [json.loads(e)["choices"][0] for e in (await sse_events(r))[:-1]]
    text = ""
    for chunk in chunks:
        _check_completion_logprobs(chunk["logprobs"], chunk["text"], k, start=len(text))
        text += chunk["text"]
    assert text == choice["text"]

    messages = [{"role": "user", "content": "a" * 40}]
    request = {"model": "tiny", "messages": messages, "max_tokens": 4, "logprobs": True, "top_logprobs": k}
    async with sim.post("/v1/chat/completions", json=request) as r:
        choice = (await r.json())["choices"][0]
    _check_chat_logprobs(choice["logprobs"], choice["message"]["content"], k)
    async with sim.post("/v1/chat/completions", json={**request, "stream": True}) as r:
        chunks = [json.loads(e)["choices"][0] for e in (await sse_events(r))[:-1]]
    assert chunks[0]["logprobs"] is None  # the role chunk
    for chunk in chunks[1:]:
        _check_chat_logprobs(chunk["logprobs"], chunk["delta"]["content"], k)


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/completions", {"prompt": "x", "logprobs": None}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": False}),
    ],
)
async def test_no_logprobs_unless_asked(sim, path, extra):
    async with sim.post(path, json={"model": "tiny", "max_tokens": 2, **extra}) as r:
        assert (await r.json())["choices"][0]["logprobs"] is None


async def test_chat_stream_without_usage_starts_with_the_role(sim):
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 2,
        "stream": True,
    }
    async with sim.post("/v1/chat/completions", json=request) as r:
        events = await sse_events(r)
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 3
    assert "usage" not in chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "The model `other` does not exist"),
        ("/v1/completions", {"model": "tiny"}, 400, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens must be"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 5000}, 400, "max_model_len=4096"),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x" * 16000, "max_tokens": 200},
            400,
            "context length",
        ),
        ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, "one text prompt"),
        ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "stream": "maybe"},
            400,
            "Input should be a valid boolean",
        ),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "stream_options": {}}, 400, "`stream=True`"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 2}, 400, "one choice per request"),
    ],
)
async def test_bad_requests_get_vllm_style_errors(sim, path, body, status, message):
    async with sim.post(path, json=body) as r:
        assert r.status == status
        error = (await r.json())["error"]
    assert message in error["message"]
    assert error["code"] == status and error["type"] in ("BadRequestError", "NotFoundError", "Bad Request")


@pytest.mark.parametrize("model", [None, ""])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
        ("/tokenize", {"prompt": "x"}),
        ("/detokenize", {"tokens": [65]}),
    ],
)
async def test_no_model_name_means_the_served_model(sim, path, body, model):
    """vLLM 0.32 serves a null or empty ``model`` with its served model, and names that model in the
    answer; the simulator answered 404 "The model `None` does not exist"."""
    async with sim.post(path, json={**body, "model": model}) as r:
        assert r.status == 200, await r.text()
        answer = await r.json()
    if path.startswith("/v1/"):
        assert answer["model"] == "tiny"


async def test_invalid_json_is_a_400(sim):
    async with sim.post(
        "/v1/completions", data=b"{not json", headers={"content-type": "application/json"}
    ) as r:
        assert r.status == 400
        assert "JSON" in (await r.json())["error"]["message"]


async def test_metrics_track_prefix_hits_and_requests(sim):
    prompt = {"model": "tiny", "prompt": "z" * 4000, "max_tokens": 2}
    before = await metrics(sim)
    for _ in range(2):
        async with sim.post("/v1/completions", json=prompt) as r:
            assert r.status == 200
    after = await metrics(sim)
    assert (
        value(after, "vllm:prefix_cache_queries_total") - value(before, "vllm:prefix_cache_queries_total")
        == 2000
    )
    assert value(after, "vllm:prefix_cache_hits_total") == 992
    assert value(after, "vllm:request_success_total", finished_reason="length") == 2
    assert value(after, "vllm:time_to_first_token_seconds_count") == 2
    assert value(after, "vllm:num_requests_running") == 0
    assert value(after, "vllm:kv_cache_usage_perc") == 0
    info = [k for k in after if k.startswith("vllm:cache_config_info")]
    assert len(info) == 1 and '"block_size": "16"' in info[0] and '"num_gpu_blocks": "32768"' in info[0]


async def test_metric_types_match_vllm(sim):
    async with sim.get("/metrics") as r:
        families = {f.name: f.type for f in text_string_to_metric_families(await r.text())}
    assert families["vllm:num_requests_waiting"] == "gauge"
    assert families["vllm:kv_cache_usage_perc"] == "gauge"
    assert families["vllm:prefix_cache_hits"] == "counter"
    assert families["vllm:request_success"] == "counter"
    assert families["vllm:time_to_first_token_seconds"] == "histogram"
    assert families["vllm:cache_config_info"] == "gauge"


async def test_metrics_slash_honours_name_filters_as_vllm_does(sim):
    async def families(path: str) -> set[str]:
        async with sim.get(path) as r:
            assert r.status == 200
            return {f.name for f in text_string_to_metric_families(await r.text())}

    everything = await families("/metrics")
    query = "name[]=vllm:num_requests_waiting&name[]=vllm:prefix_cache_hits_total&name[]=vllm:absent"
    # vLLM's /metrics route ignores the query; /metrics/ is prometheus_client's app, which filters
    # by sample name (a counter answers to its _total).
    assert await families(f"/metrics?{query}") == everything
    # (The counter's _created samples parse as a family of their own, on both pages.)
    kept = {"vllm:num_requests_waiting", "vllm:prefix_cache_hits", "vllm:prefix_cache_hits_created"}
    assert await families(f"/metrics/?{query}") == kept & everything
    assert "vllm:prefix_cache_hits" in everything
    assert await families("/metrics/") == everything


async def test_the_epp_scrapes_the_simulator_filtered():
    server, session = await start(SimParams(model="tiny", **FAST))
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.05)
    scraper._start = lambda endpoint, first_delay: None  # type: ignore[method-assign]
    await scraper.start()
    try:
        datastore.replace_endpoints([EndpointSpec("sim", "127.0.0.1", 1, server.port)])
        (endpoint,) = datastore.endpoints()
        assert await scraper.scrape(endpoint)
        from_full = dataclasses.replace(endpoint.metrics, updated_at=0.0)
        assert await scraper.scrape(endpoint)
        assert scraper.filtered_path(endpoint) == filtered_paths("/metrics", VLLM)[1]
        assert dataclasses.replace(endpoint.metrics, updated_at=0.0) == from_full
        assert from_full.num_gpu_blocks is not None
    finally:
        await scraper.stop()
        await session.close()
        await server.close()


async def test_pd_prefill_then_decode_moves_the_kv():
    prefill_server, prefill = await start(SimParams(model="tiny", role="prefill", **FAST))
    decode_server, decode = await start(SimParams(model="tiny", role="decode", **FAST))
    try:
        prompt = "k" * 4000
        prefill_request = {
            "model": "tiny",
            "prompt": prompt,
            "max_tokens": 1,
            "stream": False,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False},
        }
        async with prefill.post("/v1/completions", json=prefill_request) as r:
            kv = (await r.json())["kv_transfer_params"]
        assert kv["do_remote_prefill"] is True and kv["do_remote_decode"] is False
        assert kv["remote_host"] == "127.0.0.1" and kv["transfer_mode"] == "pull"
        assert isinstance(kv["remote_engine_id"], str) and len(kv["remote_block_ids"][0]) == 63
        # The sim serves pulls on its HTTP port: point the params at the test server's port.
        kv["remote_port"] = prefill_server.port
        async with decode.post(
            "/v1/completions",
            json={"model": "tiny", "prompt": prompt, "max_tokens": 4, "kv_transfer_params": kv},
        ) as r:
            assert r.status == 200
            assert (await r.json())["usage"]["completion_tokens"] == 4
        d = await metrics(decode)
        assert value(d, "vllm:external_prefix_cache_hits_total") == 1000
        assert value(d, "vllm:prefix_cache_hits_total") == 0
        assert value(d, "vllm:nixl_xfer_time_seconds_count") == 1
        assert value(await metrics(prefill), "vllm:kv_cache_usage_perc") == 0  # freed after the pull

        # Pulling the same blocks twice fails; with vLLM's default policy the request fails too.
        async with decode.post(
            "/v1/completions", json={"model": "tiny", "prompt": "q" * 400, "kv_transfer_params": kv}
        ) as r:
            assert r.status == 500
            assert "internal error" in (await r.json())["error"]["message"]
        d = await metrics(decode)
        assert value(d, "vllm:nixl_num_failed_transfers_total") == 1
        assert value(d, "vllm:external_prefix_cache_hits_total") == 1000
    finally:
        for session, server in ((prefill, prefill_server), (decode, decode_server)):
            await session.close()
            await server.close()


async def test_roles_refuse_the_other_side_of_pd():
    server, session = await start(SimParams(model="tiny", role="decode", **FAST))
    try:
        request = {"model": "tiny", "prompt": "x", "kv_transfer_params": {"do_remote_decode": True}}
        async with session.post("/v1/completions", json=request) as r:
            assert r.status == 400
            assert "role 'decode'" in (await r.json())["error"]["message"]
    finally:
        await session.close()
        await server.close()


async def test_recompute_policy_prefills_locally_when_the_pull_fails():
    server, session = await start(
        SimParams(model="tiny", role="decode", kv_load_failure_policy="recompute", **FAST)
    )
    try:
        unreachable = {
            "do_remote_prefill": True,
            "remote_engine_id": "e",
            "remote_request_id": "r",
            "remote_block_ids": [[1]],
            "remote_host": "127.0.0.1",
            "remote_port": 9,
        }
        async with session.post(
            "/v1/completions",
            json={"model": "tiny", "prompt": "w" * 400, "max_tokens": 2, "kv_transfer_params": unreachable},
        ) as r:
            assert r.status == 200
        d = await metrics(session)
        assert value(d, "vllm:nixl_num_failed_transfers_total") == 1
        assert value(d, "vllm:external_prefix_cache_hits_total") == 0
    finally:
        await session.close()
        await server.close()


async def test_a_streaming_prefill_for_a_remote_decoder_is_refused(sim):
    request = {
        "model": "tiny",
        "prompt": "x",
        "stream": True,
        "kv_transfer_params": {"do_remote_decode": True},
    }
    async with sim.post("/v1/completions", json=request) as r:
        assert r.status == 400
        assert "non-streaming" in (await r.json())["error"]["message"]


async def test_tokenize_and_detokenize_round_trip_with_vllm_shapes(sim):
    prompt = "def main():\n    return 42"
    async with sim.post("/tokenize", json={"model": "tiny", "prompt": prompt}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        tokenized = await r.json()
    assert set(tokenized) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tokenized["count"] == len(tokenized["tokens"]) == 7  # 26 characters, 4 per token
    assert tokenized["max_model_len"] == 4096 and tokenized["token_strs"] is None
    async with sim.post("/detokenize", json={"model": "tiny", "tokens": tokenized["tokens"]}) as r:
        assert r.status == 200
        assert await r.json() == {"prompt": prompt}


async def test_tokenize_counts_what_a_generation_request_is_billed(sim):
    messages = [{"role": "user", "content": "hello there"}]
    async with sim.post("/tokenize", json={"messages": messages, "return_token_strs": True}) as r:
        tokenized = await r.json()
    async with sim.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1}) as r:
        usage = (await r.json())["usage"]
    assert tokenized["count"] == usage["prompt_tokens"]
    assert "".join(tokenized["token_strs"]).endswith("<|im_start|>assistant\n")
    open_turn = {
        "messages": messages,
        "add_generation_prompt": False,
        "continue_final_message": True,
        "return_token_strs": True,
    }
    async with sim.post("/tokenize", json=open_turn) as r:
        assert r.status == 200
        assert "".join((await r.json())["token_strs"]) == "<|im_start|>user\nhello there"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": "other", "prompt": "x"}, 404, "model"),
        ("/tokenize", {"model": "tiny"}, 400, "prompt"),
        ("/tokenize", {"prompt": "x", "return_token_strs": "yes"}, 400, "return_token_strs"),
        ("/tokenize", {"messages": [{"content": "no role"}]}, 400, "messages"),
        (
            "/tokenize",
            {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True},
            400,
            "messages",
        ),
        ("/detokenize", {"tokens": [1, "2"]}, 400, "tokens"),
        ("/detokenize", {"tokens": [0]}, 400, "tokens"),
        ("/detokenize", {"tokens": [128]}, 400, "tokens"),
        ("/detokenize", {"model": "other", "tokens": [65]}, 404, "model"),
        ("/tokenize", {"model": 5, "prompt": "x"}, 400, "body.model"),
        ("/detokenize", {"model": ["tiny"], "tokens": [65]}, 400, "body.model"),
    ],
)
async def test_tokenizer_routes_refuse_bad_bodies_like_vllm(sim, path, body, status, param):
    async with sim.post(path, json=body) as r:
        assert r.status == status
        error = (await r.json())["error"]
    assert error["param"] == param and error["code"] == status and error["message"]


async def test_the_chat_role_chunk_waits_for_the_first_token():
    """vLLM 0.32 emits the role delta with the first engine output, so a client (and the EPP's TTFT
    metric) sees the first body bytes at the first token, not when the stream opens (issue 12)."""
    from simulator.engine import Sequence
    from simulator.requests import parse_generation

    server = SimServer(SimParams(model="tiny", **FAST))
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    parsed = parse_generation("chat", chat, "tiny", 4096, 16)
    seq = Sequence(request_id="chatcmpl-1", prompt_tokens=4, hashes=[], max_tokens=2)
    chunks = server._chunks(parsed, seq)
    first = asyncio.ensure_future(chunks.__anext__())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not first.done()  # no token yet: nothing to send, not even the role
    seq.tokens.put_nowait(0)
    role = await asyncio.wait_for(first, 1)
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # The first token follows the role chunk without waiting for anything else.
    token = await asyncio.wait_for(chunks.__anext__(), 1)
    assert "content" in token["choices"][0]["delta"] and "role" not in token["choices"][0]["delta"]
    seq.tokens.put_nowait(1)
    seq.tokens.put_nowait(None)
    assert [c["choices"][0]["finish_reason"] async for c in chunks] == ["length"]


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("127.0.0.1/x", 80),
        ("u@127.0.0.1", 80),
        ("127.0.0.1", "80/x"),
        ("127.0.0.1", 0),
        (["h"], 80),
        ("h", True),
    ],
)
async def test_kv_pull_targets_are_a_host_and_a_port_only(host, port):
    from simulator.transfer import TransferError, pull_remote

    params = {
        "remote_host": host,
        "remote_port": port,
        "remote_engine_id": "e",
        "remote_request_id": "r",
        "remote_block_ids": [1],
    }
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TransferError, match="incomplete"):
            await pull_remote(session, params, [1], 1.0)


@pytest.mark.parametrize(
    ("raw", "param", "message"),
    [
        (b'{"model":"tiny","prompt":"\\ud800"}', "prompt", "surrogate"),
        (b'{"model":"tiny","messages":[{"role":"\\udfff","content":"x"}]}', "messages[0].role", "surrogate"),
        (b'{"model":"tiny","prompt":"x","e":' + b"[" * 600 + b"]" * 600 + b"}", "e", "nests deeper"),
        (b'{"model":"tiny","prompt":"x","temperature":NaN}', "body", "NaN"),
    ],
)
async def test_bodies_no_stage_could_use_are_400s_naming_the_field(sim, raw, param, message):
    """The simulator reads bodies with the EPP's and the sidecar's limits (issue 12): a prompt it
    could not tokenise, hash or log is refused up front, never a 500 (or a dead request log)."""
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    async with sim.post(path, data=raw, headers={"content-type": "application/json"}) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["param"] == param and message in error["message"]
