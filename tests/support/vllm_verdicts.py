"""How real vLLM 0.32.0 (CPU, the tiny model) answers one field set to each value, on top of a valid
request: ``(api, field, value, status)``. Recorded on 2026-11-27 by posting each body to
``python -m vllm.entrypoints.openai.api_server`` (``--max-model-len 2048``, base request
``{"model": "tiny", "prompt": "hello there", "max_tokens": 2}`` or the chat equivalent with
``messages: [{"role": "user", "content": "hi"}]``). ``tests/simulator/test_sampling.py`` holds the
simulator to these verdicts; ``tests/slow/test_sim_matches_vllm.py`` re-checks them against a
running vLLM, so a vLLM upgrade that changes one shows up there.

Left out on purpose: values the simulator refuses as documented limitations (``n`` > 1, prompt
lists), and ``best_of`` (accepted and ignored by both).
"""

from __future__ import annotations

from typing import Any

BASE = {
    "completions": ("/v1/completions", {"model": "tiny", "prompt": "hello there", "max_tokens": 2}),
    "chat": (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ),
}

VERDICTS: list[tuple[str, str, Any, int]] = [
    ("completions", "temperature", "hot", 400),
    ("completions", "temperature", -5, 400),
    ("completions", "temperature", 2.5, 400),
    ("completions", "temperature", 2, 200),
    ("completions", "temperature", "0.5", 200),
    ("completions", "temperature", True, 200),
    ("completions", "temperature", None, 200),
    ("completions", "temperature", [1], 400),
    ("completions", "top_p", 0, 400),
    ("completions", "top_p", 1.5, 400),
    ("completions", "top_p", -1, 400),
    ("completions", "top_p", "x", 400),
    ("completions", "top_p", None, 200),
    ("completions", "top_p", 1, 200),
    ("completions", "top_k", -2, 400),
    ("completions", "top_k", -1, 200),
    ("completions", "top_k", 0, 200),
    ("completions", "top_k", 5, 200),
    ("completions", "top_k", 1.5, 400),
    ("completions", "top_k", "3", 200),
    ("completions", "top_k", None, 200),
    ("completions", "min_p", -0.1, 400),
    ("completions", "min_p", 1.1, 400),
    ("completions", "min_p", 0.5, 200),
    ("completions", "min_p", None, 200),
    ("completions", "presence_penalty", 3, 400),
    ("completions", "presence_penalty", -2, 200),
    ("completions", "presence_penalty", "a", 400),
    ("completions", "presence_penalty", None, 200),
    ("completions", "frequency_penalty", -3, 400),
    ("completions", "frequency_penalty", 2, 200),
    ("completions", "frequency_penalty", None, 200),
    ("completions", "repetition_penalty", 0, 400),
    ("completions", "repetition_penalty", -1, 400),
    ("completions", "repetition_penalty", 1.2, 200),
    ("completions", "repetition_penalty", None, 200),
    ("completions", "max_tokens", None, 200),
    ("completions", "max_tokens", 0, 400),
    ("completions", "max_tokens", -1, 400),
    ("completions", "max_tokens", "5", 200),
    ("completions", "max_tokens", 2.0, 200),
    ("completions", "max_tokens", 2.5, 400),
    ("completions", "max_tokens", True, 200),
    ("completions", "max_tokens", "x", 400),
    ("completions", "max_tokens", 100000000000000000000, 400),
    ("completions", "min_tokens", -1, 400),
    ("completions", "min_tokens", 5, 400),
    ("completions", "min_tokens", 1, 200),
    ("completions", "min_tokens", None, 400),
    ("completions", "seed", "x", 400),
    ("completions", "seed", 1.5, 400),
    ("completions", "seed", -1, 200),
    ("completions", "seed", 1180591620717411303424, 400),
    ("completions", "seed", None, 200),
    ("completions", "n", 0, 400),
    ("completions", "n", None, 400),
    ("completions", "n", "1", 200),
    ("completions", "n", 1.0, 200),
    ("completions", "stop", "", 400),
    ("completions", "stop", [""], 400),
    ("completions", "stop", 5, 400),
    ("completions", "stop", ["a", 1], 400),
    ("completions", "stop", None, 200),
    ("completions", "stop", "x", 200),
    ("completions", "stop", [], 200),
    ("completions", "stop_token_ids", ["a"], 400),
    ("completions", "stop_token_ids", [1], 200),
    ("completions", "stop_token_ids", None, 200),
    ("completions", "stop_token_ids", 5, 400),
    ("completions", "logprobs", -2, 400),
    ("completions", "logprobs", -1, 400),
    ("completions", "logprobs", 0, 200),
    ("completions", "logprobs", 21, 400),
    ("completions", "logprobs", True, 200),
    ("completions", "logprobs", None, 200),
    ("completions", "echo", "x", 400),
    ("completions", "echo", None, 200),
    ("completions", "echo", 1, 200),
    ("completions", "ignore_eos", "x", 400),
    ("completions", "ignore_eos", None, 400),
    ("completions", "ignore_eos", 1, 200),
    ("completions", "stream", "x", 400),
    ("completions", "stream", None, 200),
    ("completions", "stream", 1, 200),
    ("completions", "stream", 0, 200),
    ("completions", "user", 5, 400),
    ("completions", "user", None, 200),
    ("completions", "logit_bias", {"1": 200}, 200),
    ("completions", "logit_bias", {"x": 1}, 400),
    ("completions", "logit_bias", [1], 400),
    ("completions", "logit_bias", None, 200),
    ("completions", "suffix", 5, 400),
    ("completions", "suffix", None, 200),
    ("chat", "temperature", "hot", 400),
    ("chat", "temperature", -5, 400),
    ("chat", "temperature", None, 200),
    ("chat", "max_tokens", None, 200),
    ("chat", "max_tokens", 0, 400),
    ("chat", "max_tokens", "x", 400),
    ("chat", "max_completion_tokens", None, 200),
    ("chat", "max_completion_tokens", 0, 400),
    ("chat", "max_completion_tokens", 3, 200),
    ("chat", "max_completion_tokens", "x", 400),
    ("chat", "logprobs", True, 200),
    ("chat", "logprobs", 1, 200),
    ("chat", "logprobs", "x", 400),
    ("chat", "logprobs", None, 200),
    ("chat", "top_logprobs", 2, 400),
    ("chat", "top_logprobs", -1, 400),
    ("chat", "top_logprobs", 21, 400),
    ("chat", "top_logprobs", None, 200),
    ("chat", "n", 0, 400),
    # No model, or an empty name, is the served model (vllm/entrypoints/serve/engine/serving.py,
    # _is_model_supported); a name that is not a string is pydantic's 400. Recorded 2026-11-28.
    ("completions", "model", None, 200),
    ("completions", "model", "", 200),
    ("completions", "model", 5, 400),
    ("chat", "model", None, 200),
    ("chat", "model", ["tiny"], 400),
]

# What vLLM 0.32 (FastAPI) answers outside its routes' bodies, recorded against the real server on
# 2026-11-28 with Host ROUTE_VERDICTS_HOST: (method, path, status, JSON body or None for an empty
# one, Location). tests/simulator/test_server.py holds the simulator to them; the slow parity test
# re-checks both servers.
ROUTE_VERDICTS_HOST = "gw.example.com"
ROUTE_VERDICTS: list[tuple[str, str, int, dict[str, str] | None, str | None]] = [
    ("GET", "/no/such/route", 404, {"detail": "Not Found"}, None),
    ("POST", "/v1//completions", 404, {"detail": "Not Found"}, None),
    ("GET", "/v1/completions", 405, {"detail": "Method Not Allowed"}, None),
    ("OPTIONS", "/v1/chat/completions", 405, {"detail": "Method Not Allowed"}, None),
    ("DELETE", "/v1/models", 405, {"detail": "Method Not Allowed"}, None),
    ("HEAD", "/health", 405, None, None),  # FastAPI adds no HEAD to a GET route
    ("HEAD", "/v1/models", 405, None, None),
    ("HEAD", "/metrics", 200, None, None),  # prometheus' routes do
    ("GET", "/version", 200, {"version": "0.32.0"}, None),
    ("GET", "/ping", 200, None, None),  # SageMaker's health check, GET or POST
    ("POST", "/ping", 200, None, None),
    # Starlette's redirect_slashes: the other spelling of a route, 307 to http://<Host>/<route>.
    ("POST", "/v1/completions/", 307, None, "http://gw.example.com/v1/completions"),
    ("GET", "/v1/models/", 307, None, "http://gw.example.com/v1/models"),
    ("GET", "/health/?x=1", 307, None, "http://gw.example.com/health?x=1"),
]

# The Content-Type of a valid completions body and vLLM 0.32's status (None: no header). vLLM's
# routes depend on validate_json_request (vllm/entrypoints/serve/utils/api_utils.py): the media type,
# case-insensitive, must be application/json, whatever the parameters. Recorded 2026-11-28.
CONTENT_TYPE_VERDICTS: list[tuple[str | None, int]] = [
    ("application/json", 200),
    ("Application/JSON; Charset=UTF-8", 200),
    ("application/json;charset=latin-1", 200),
    (None, 400),
    ("text/plain", 400),
    ("application/x-www-form-urlencoded", 400),
]
