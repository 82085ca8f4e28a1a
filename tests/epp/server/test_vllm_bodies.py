"""Bodies real vLLM 0.32 answers with a 200 (tiny-llama; the verdicts are in each case's comment)
must be routed by the EPP, through a real Director: the EPP reads a body only to schedule it, so it
must never be stricter than the model server behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.director import SchedulingDirector
from tests.epp.server.test_hostile_bodies import _real_director, _status_of
from tests.support.epp import spec

VLLM_200 = [
    # pydantic's lax booleans: null is the default (no streaming), "yes" and 1 stream.
    ("/v1/completions", {"model": "m", "prompt": "hi", "stream": None}),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
    ),
    ("/v1/completions", {"model": "m", "prompt": "hi", "stream": 1}),
    # A message's content is optional: a user turn without one, an assistant turn to continue.
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user"}]}),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},
    ),
    (
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}],
        },
    ),
    # Routes whose text is not in messages, prompt or input.
    ("/detokenize", {"model": "m", "tokens": [1, 2, 3]}),
    ("/v1/rerank", {"model": "m", "query": "q", "documents": ["a", "b"]}),
    ("/v1/score", {"model": "m", "text_1": "a", "text_2": "b"}),
    # With --enable-prompt-embeds (without it vLLM's own 400 says to set it).
    ("/v1/completions", {"model": "m", "prompt_embeds": "QUJD"}),
]


@pytest.mark.parametrize("rewrite", [False, True])
@pytest.mark.parametrize(("path", "body"), VLLM_200)
async def test_a_body_vllm_serves_is_routed(rewrite: bool, path: str, body: dict[str, object]) -> None:
    status, sent = await _status_of(_real_director(rewrite), path, json.dumps(body).encode())
    assert status == 200, sent
    assert json.loads(sent)["model"] == ("m-v2" if rewrite else "m")


@pytest.mark.parametrize(("path", "body"), VLLM_200)
async def test_a_body_vllm_serves_is_routed_with_the_local_tokenizer(
    path: str, body: dict[str, object], tmp_path: Path
) -> None:
    """Precise prefix routing tokenizes the body itself; a body it cannot tokenize goes untokenized."""
    from tests.epp.plugins.test_precise import config
    from tests.epp.plugins.test_tokens import write_model

    model = write_model(tmp_path / "model")
    datastore = Datastore()
    director = SchedulingDirector(
        datastore, load_config(config(token_params={"local": {"path": str(model)}}))
    )
    datastore.replace_endpoints(spec(f"pod-{i}", i + 1) for i in range(2))
    status, sent = await _status_of(director, path, json.dumps(body).encode())
    assert status == 200, sent


@pytest.mark.parametrize("served", [None, frozenset({"m"})])
async def test_an_empty_model_name_is_the_pools_default(served: frozenset[str] | None) -> None:
    """vLLM serves ``"model": ""`` with its served model (any falsy name passes _is_model_supported,
    vllm/entrypoints/serve/engine/serving.py) and llm-d's EPP routes it (it only needs a string);
    this EPP answered 400 "'model' must be a non-empty string". A blank but non-empty name is an
    unknown model, as on vLLM: 404 when the EPP knows the served models."""
    director = _real_director()
    director.served_models = served
    body = {"model": "", "prompt": "hi"}
    status, sent = await _status_of(director, "/v1/completions", json.dumps(body).encode())
    assert status == 200 and json.loads(sent) == body
    status, _ = await _status_of(director, "/v1/completions", json.dumps({**body, "model": " "}).encode())
    assert status == (404 if served else 200)
