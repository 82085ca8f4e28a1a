"""The model name put back into a model server's answer, spelled as vLLM spells it."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.server.response_body import BufferedBodyTracker, ModelNameRewriter, SseTracker, usage_from_payload
from epp.types import Usage

NAMES = ["m-v2", "modèle-lora", "org/日本語-7b", 'quote"and\\slash', "emoji-\U0001f600"]


def _vllm_json(value: object) -> bytes:
    """vLLM's spelling: pydantic's model_dump_json (SSE chunks, completions) and starlette's
    JSONResponse (chat) both write non-ASCII characters as raw UTF-8, not as \\u escapes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("target", NAMES)
@pytest.mark.parametrize("client", ["m", "clienté/名前"])
def test_the_client_gets_its_model_name_back_whatever_the_characters(target: str, client: str) -> None:
    """A non-ASCII target name was looked for only as \\u escapes: the client saw the target's name."""
    rewrite = ModelNameRewriter(target, client)
    answer = {"id": "x", "model": target, "choices": [{"text": target}]}
    for spelling in (_vllm_json(answer), json.dumps(answer).encode(), json.dumps(answer, indent=1).encode()):
        assert json.loads(rewrite(spelling)) == {**answer, "model": client}


def test_a_non_ascii_name_split_across_sse_chunks_is_rewritten() -> None:
    target = "org/日本語-7b"
    event = b"data: " + _vllm_json({"model": target, "choices": []}) + b"\n\n"
    cut = event.index("日".encode()) + 1  # inside the character's UTF-8 bytes
    tracker = SseTracker(ModelNameRewriter(target, "m"))
    out = tracker.feed(event[:cut], False) + tracker.feed(event[cut:] + b"data: [DONE]\n\n", True)
    assert out == b'data: {"model":"m","choices":[]}\n\ndata: [DONE]\n\n'


_NAME = "org/日本語-7b"
_ANSWER = _vllm_json({"id": "x", "model": _NAME, "data": [{"embedding": [0.5] * 40}], "usage": {}})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(_ANSWER)), max_size=12), st.sampled_from([_NAME, "m-v2"]))
def test_a_json_answer_is_rewritten_as_it_passes_holding_only_a_pattern_long_tail(
    cuts: list[int], target: str
) -> None:
    """A JSON answer was held whole until its end to be rewritten: an embeddings or logprobs answer
    of any size sat in the EPP's memory (and reached the client only at the end)."""
    answer = _ANSWER.replace(_vllm_json(_NAME), _vllm_json(target))
    answer = answer + b" " + answer.replace(b'"model":', b'"model": ')  # with and without a space
    rewrite = ModelNameRewriter(target, "m")
    stream = rewrite.stream()
    out, points = [], sorted({0, *cuts, len(answer)})
    for start, end in itertools.pairwise(points):
        out.append(stream.feed(answer[start:end], end == len(answer)))
        assert stream.held < rewrite.longest, (stream.held, rewrite.longest)
    whole = b"".join(out)
    assert whole == rewrite(answer)
    assert whole.count(b'"model":"m"') == whole.count(b'"model": "m"') == 1


# vLLM 0.32's Responses API answers (tiny-llama, max_output_tokens 3), cut to what matters here.
_RESPONSES_USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
    "output_tokens": 3,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 14,
}
_RESPONSE = {
    "id": "resp_1",
    "model": "tiny",
    "object": "response",
    "status": "incomplete",
    "usage": _RESPONSES_USAGE,
}


def test_the_usage_of_a_responses_api_answer_is_read() -> None:
    """/v1/responses counts input_tokens and output_tokens: its answers were counted as no usage."""
    tracker = BufferedBodyTracker()
    body = _vllm_json(_RESPONSE)
    tracker.feed(body[:30], False)
    tracker.feed(body[30:], True)
    assert tracker.usage == Usage(11, 3, 4)


def test_the_usage_of_a_streamed_responses_api_answer_is_read() -> None:
    """Streamed, the usage is inside the response.completed event's ``response``."""
    created = {"response": {**_RESPONSE, "usage": None}, "sequence_number": 0, "type": "response.created"}
    completed = {"response": _RESPONSE, "sequence_number": 9, "type": "response.completed"}
    stream = (
        b"event: response.created\ndata: " + _vllm_json(created) + b"\n\n"
        b"event: response.completed\ndata: " + _vllm_json(completed) + b"\n\n"
    )
    tracker = SseTracker(None)
    for start in range(0, len(stream), 50):
        tracker.feed(stream[start : start + 50], start + 50 >= len(stream))
    assert tracker.usage == Usage(11, 3, 4)


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": -1, "output_tokens": 3},
        {"input_tokens": 1, "output_tokens": None},
        {"input_tokens": "1", "output_tokens": 3},
        {"prompt_tokens": True, "completion_tokens": 1},
    ],
)
def test_a_malformed_usage_is_no_usage(usage: dict[str, object]) -> None:
    assert usage_from_payload({"usage": usage}) is None
    assert usage_from_payload({"response": {"usage": usage}}) is None


def test_a_stream_with_usage_in_every_event_parses_one_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """``stream_options.continuous_usage_stats``: vLLM puts the running usage in every event. Each
    one was parsed as JSON as it passed (12x the EPP's CPU per streamed token); only the last counts."""
    import epp.server.response_body as module

    parses = []
    real_loads = module.jsonbody.loads
    monkeypatch.setattr(
        module.jsonbody, "loads", lambda raw, **kw: parses.append(raw) or real_loads(raw, **kw)
    )
    tracker = SseTracker(None)
    for n in range(1, 101):
        usage = {"prompt_tokens": 7, "total_tokens": 7 + n, "completion_tokens": n}
        event = {"id": "c", "model": "tiny", "choices": [{"index": 0, "text": " w"}], "usage": usage}
        tracker.feed(b"data: " + _vllm_json(event) + b"\n\n", False)
    tracker.feed(b"data: [DONE]\n\n", True)
    assert tracker.usage == Usage(7, 100, None)
    assert len(parses) == 1


def test_a_malformed_last_usage_event_leaves_no_usage() -> None:
    tracker = SseTracker(None)
    tracker.feed(b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n', False)
    assert tracker.usage == Usage(1, 1, None)
    tracker.feed(b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 2}}\n\n', False)
    tracker.feed(b'data: {"usage": {"prompt_tokens": -2}}\n\ndata: [DONE]\n\n', True)
    assert tracker.usage is None  # the last usage counts, or none: not an older one


def test_events_with_a_null_usage_do_not_hide_the_usage() -> None:
    """OpenAI's own stream sends "usage": null in every event but one."""
    tracker = SseTracker(None)
    tracker.feed(
        b'data: {"usage": null}\n\ndata: {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n', False
    )
    tracker.feed(b'data: {"choices": [], "usage":null}\n\ndata: [DONE]\n\n', True)
    assert tracker.usage == Usage(3, 2, None)
