"""Valid JSON the EPP cannot use (issue 12, findings 1-3): lone surrogates anywhere, deep nesting,
non-finite numbers, client-supplied transfer parameters. Each must end in a 400 naming the field,
through the whole stream with a real Director (prefix hashing, model rewrite), never in a 500."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import jsonbody
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics, RewriteTarget
from epp.director import SchedulingDirector
from epp.metrics import ServerMetrics
from epp.server.body import parse_request_body
from epp.server.stream import ExtProcStream, StreamSettings
from epp.types import EppError
from tests.support.epp import spec
from tests.support.extproc import Collector, body_msg, feed, request_headers

LONE = "\ud800"
# Every place a surrogate can hide in a body the EPP reads, and the field the 400 must name.
SURROGATE_CASES = [
    ("/v1/completions", {"model": "m", "prompt": LONE}, "prompt"),
    ("/v1/completions", {"model": "m", "prompt": ["ok", "x" + LONE]}, "prompt[1]"),
    ("/v1/completions", {"model": "m", "prompt": "ok", "cache_salt": LONE}, "cache_salt"),
    ("/v1/completions", {"model": "m" + LONE, "prompt": "ok"}, "model"),
    ("/v1/completions", {"model": "m", "prompt": "ok", "user": {"tags": ["a", LONE]}}, "user.tags[1]"),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": LONE}]},
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": LONE, "content": "x"}]},
        "messages[0].role",
    ),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
        "messages[0].content[0].text",
    ),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": LONE}]}]},
        "messages[0].tool_calls[0].id",
    ),
    ("/v1/embeddings", {"model": "m", "input": LONE}, "input"),
]


def _raw(body: object) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: the surrogate travels as a \ud800 escape


def _nested(levels: int) -> object:
    """``levels`` lists, one inside the other."""
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(("path", "body", "field"), SURROGATE_CASES)
def test_lone_surrogates_are_400_naming_the_field(path: str, body: dict[str, object], field: str) -> None:
    with pytest.raises(EppError) as caught:
        parse_request_body(path, _raw(body))
    assert caught.value.status == 400
    assert f"'{field}'" in caught.value.message and "surrogate" in caught.value.message


def test_a_surrogate_in_a_key_is_refused_and_a_valid_pair_is_fine() -> None:
    with pytest.raises(EppError, match="a key of 'metadata'"):
        parse_request_body("/v1/completions", _raw({"model": "m", "prompt": "p", "metadata": {LONE: 1}}))
    _, parsed = parse_request_body("/v1/completions", _raw({"model": "m", "prompt": "smile \U0001f600"}))
    assert parsed.prompt_text == "smile \U0001f600"


def test_nesting_is_limited_to_one_depth_shared_with_the_sidecar_and_simulator() -> None:
    # The body object itself is level 1, so an extra field may nest MAX_DEPTH - 1 levels.
    fine = {"model": "m", "prompt": "p", "extra": _nested(jsonbody.MAX_DEPTH - 1)}
    parse_request_body("/v1/completions", _raw(fine))
    deep = {"model": "m", "prompt": "p", "extra": _nested(jsonbody.MAX_DEPTH)}
    with pytest.raises(EppError) as caught:
        parse_request_body("/v1/completions", _raw(deep))
    assert caught.value.status == 400 and "'extra' nests deeper than 100 levels" in caught.value.message
    for depth in (500, 990, 5000):  # the depths that crashed the sidecar, and one past json's own limit
        with pytest.raises(EppError, match="nests deeper"):
            parse_request_body(
                "/v1/completions",
                _raw({"model": "m", "prompt": "p"})[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}",
            )


def _many(item: bytes, count: int) -> bytes:
    return b",".join([item] * count)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        # A million one-token prompts: 3.6 s of the event loop before (every request stalled).
        (
            "/v1/completions",
            b'{"model":"m","prompt":[' + _many(b"[1]", jsonbody.MAX_REQUEST_CONTAINERS) + b"]}",
        ),
        (
            "/v1/completions",
            b'{"model":"m","prompt":"p","x":[' + _many(b"{}", jsonbody.MAX_REQUEST_CONTAINERS) + b"]}",
        ),
        (
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"u","content":[' + _many(b'{"a":1}', 10**5) + b"]}]}",
        ),
    ],
)
def test_a_body_of_too_many_arrays_and_objects_is_400_before_any_is_built(path: str, raw: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(EppError) as caught:
        parse_request_body(path, raw)
    assert caught.value.status == 400 and "more than 100000 JSON arrays and objects" in caught.value.message
    assert time.perf_counter() - started < 1.0  # generous: ~0.03 s; it was seconds


def test_the_container_cap_counts_no_bracket_inside_a_string() -> None:
    # As many arrays as allowed, and brackets in strings (escaped quotes too) that a byte count sees.
    cap = jsonbody.MAX_REQUEST_CONTAINERS
    prompt = json.dumps('[{"\\' * cap)
    raw = b'{"model":"m","prompt":' + prompt.encode() + b',"x":[' + _many(b"[]", cap - 2) + b"]}"
    _, parsed = parse_request_body("/v1/completions", raw)
    assert parsed.prompt_text.startswith('[{"\\')
    one_more = raw[:-2] + b",[]]}"
    with pytest.raises(EppError, match="more than 100000"):
        parse_request_body("/v1/completions", one_more)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
def test_non_finite_numbers_are_refused(number: bytes) -> None:
    with pytest.raises(EppError) as caught:
        parse_request_body("/v1/completions", b'{"model":"m","prompt":"p","temperature":' + number + b"}")
    assert caught.value.status == 400 and "not valid JSON" in caught.value.message


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (
            {
                "kv_transfer_params": {
                    "do_remote_prefill": True,
                    "remote_host": "169.254.169.254",
                    "remote_port": 80,
                }
            },
            "kv_transfer_params",
        ),
        ({"kv_transfer_params": None}, "kv_transfer_params"),
        ({"ec_transfer_params": {"remote_host": "10.0.0.1"}}, "ec_transfer_params"),
        ({"vllm_xargs": {"kv_transfer_params": "x"}}, "vllm_xargs.kv_transfer_params"),
    ],
)
@pytest.mark.parametrize(
    "path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses"]
)
def test_client_transfer_params_are_refused_on_every_path(
    extra: dict[str, object], field: str, path: str
) -> None:
    body = {"model": "m", "prompt": "p", "messages": [{"role": "u", "content": "c"}], "input": "i", **extra}
    with pytest.raises(EppError) as caught:
        parse_request_body(path, _raw(body))
    assert caught.value.status == 400 and f"'{field}'" in caught.value.message


def test_an_escaped_key_spelling_does_not_sneak_transfer_params_through() -> None:
    raw = b'{"model":"m","prompt":"p","kv_transfer\\u005fparams":{"remote_host":"10.9.9.9"}}'
    with pytest.raises(EppError, match="kv_transfer_params"):
        parse_request_body("/v1/completions", raw)


# ---------------------------------------------------------------- through the whole stream


def _real_director(rewrite: bool = False) -> SchedulingDirector:
    datastore = Datastore()
    director = SchedulingDirector(datastore, load_config(None))  # default profile: prefix + load scorers
    datastore.replace_endpoints(spec(f"pod-{i}", i + 1) for i in range(2))
    for endpoint in datastore.endpoints():
        endpoint.metrics = EndpointMetrics(updated_at=time.monotonic())
    if rewrite:
        datastore.set_model_rewrites({"m": [RewriteTarget("m-v2")]})
    return director


async def _status_of(
    director: SchedulingDirector, path: str, raw: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    out = Collector()
    stream = ExtProcStream(director, StreamSettings(), ServerMetrics(CollectorRegistry()))
    await stream.run(feed([request_headers(path, headers), body_msg(raw)]), out)
    first = out.sent[0]
    if first.HasField("immediate_response"):
        return first.immediate_response.status.code, first.immediate_response.body
    body = b"".join(m.request_body.response.body_mutation.streamed_response.body for m in out.sent[1:])
    return 200, body


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "chat_template_kwargs": {"messages": 5},
        },
    ],
)
async def test_a_body_the_tokenizer_chokes_on_is_routed_untokenized(
    body: dict[str, object], tmp_path: Path
) -> None:
    """Precise prefix routing with the local tokenizer: the chat template raised TypeError on these
    bodies (valid to the parser, refused by vLLM itself), and the decision re-ran the failed
    tokenization and answered 500."""
    from tests.epp.plugins.test_precise import config
    from tests.epp.plugins.test_tokens import write_model

    model = write_model(tmp_path / "model")
    datastore = Datastore()
    director = SchedulingDirector(
        datastore, load_config(config(token_params={"local": {"path": str(model)}}))
    )
    datastore.replace_endpoints(spec(f"pod-{i}", i + 1) for i in range(2))
    status, _ = await _status_of(director, "/v1/chat/completions", _raw(body))
    assert status == 200


@pytest.mark.parametrize("rewrite", [False, True])
@pytest.mark.parametrize(("path", "body", "field"), SURROGATE_CASES)
async def test_the_stream_answers_400_with_the_field_never_500(
    rewrite: bool, path: str, body: dict[str, object], field: str
) -> None:
    status, answer = await _status_of(_real_director(rewrite), path, _raw(body))
    assert status == 400
    assert field in json.loads(answer)["error"]["message"]


@pytest.mark.parametrize("encoding", ["gzip", "br", "GZIP", "deflate, gzip"])
async def test_a_compressed_body_is_415_naming_the_encoding(encoding: str) -> None:
    """It was a 400 saying the gzip bytes are "not UTF-8 text"."""
    raw = gzip.compress(_raw({"model": "m", "prompt": "p"}))
    status, answer = await _status_of(
        _real_director(), "/v1/completions", raw, {"content-encoding": encoding}
    )
    assert status == 415
    message = json.loads(answer)["error"]["message"]
    assert f"content-encoding {encoding.lower()!r} are not supported" in message
    plain = _raw({"model": "m", "prompt": "p"})  # identity is no encoding at all
    status, _ = await _status_of(_real_director(), "/v1/completions", plain, {"content-encoding": "identity"})
    assert status == 200


async def test_a_rewritten_body_is_valid_utf8_json() -> None:
    body = {"model": "m", "prompt": "smile \U0001f600 \u2028", "cache_salt": "s\u00e9"}
    status, sent = await _status_of(_real_director(rewrite=True), "/v1/completions", _raw(body))
    assert status == 200
    assert json.loads(sent.decode("utf-8")) == {**body, "model": "m-v2"}


_any_char = st.characters(codec=None, exclude_categories=())  # surrogates included
_text = st.text(_any_char, max_size=6)
_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        *("model", "prompt", "messages", "input", "cache_salt", "stream", "role", "content", "x"),
        *("prompt_embeds", "tokens", "query", "documents", "text_1"),
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(_keys, _json | _text, max_size=5),
    st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/x", "/detokenize", "/v1/rerank"]),
    st.booleans(),
)
async def test_any_json_body_gets_a_routing_answer_or_a_4xx(
    body: dict[str, object], path: str, rewrite: bool
) -> None:
    body.setdefault("model", "m")
    status, _ = await _status_of(_real_director(rewrite), path, _raw(body))
    assert status == 200 or 400 <= status < 500, (status, body)


async def test_a_model_server_answer_nested_too_deep_is_passed_through_without_usage() -> None:
    """The response side reads ``usage`` out of the model server's JSON: the same depth limit keeps a
    deeply nested answer from raising RecursionError in the stream (a sibling of finding 2)."""
    from epp.server.response_body import BufferedBodyTracker, SseTracker

    deep = b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    tracker = BufferedBodyTracker()
    tracker.feed(deep, True)
    assert tracker.usage is None
    sse = SseTracker(None)
    assert sse.feed(b"data: " + deep + b"\n\n", True) == b"data: " + deep + b"\n\n"
    assert sse.usage is None
