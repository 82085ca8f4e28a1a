"""The model name put back into a model server's answer, spelled as vLLM spells it."""

from __future__ import annotations

import json

import pytest

from epp.server.response_body import ModelNameRewriter, SseTracker

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
