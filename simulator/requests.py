"""Validation of OpenAI-style request bodies into what the engine needs, with vLLM's error shapes."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Literal

from simulator.sampling import MAX_LOGPROBS, SamplingError, check_truncation, validate_sampling
from simulator.tokens import count_tokens, id_piece, render_chat

Api = Literal["completions", "chat"]


class ApiError(Exception):
    """An error vLLM would answer with ``{"error": {message, type, param, code}}``."""

    def __init__(
        self, status: int, message: str, param: str | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self._error_type = error_type

    @property
    def error_type(self) -> str:
        if self._error_type is not None:
            return self._error_type
        return {400: "BadRequestError", 404: "NotFoundError"}.get(self.status, "InternalServerError")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    api: Api
    model: str
    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    explicit_max_tokens: bool
    stream: bool
    include_usage: bool
    # stream_options.continuous_usage_stats, which counts only with include_usage
    # (should_include_usage in vllm/entrypoints/serve/utils/api_utils.py).
    continuous_usage: bool
    # How many alternatives to list with each output token's logprob; None: no logprobs asked for
    # (completions: ``logprobs``; chat: ``top_logprobs`` once ``logprobs`` is true).
    top_logprobs: int | None
    kv_transfer_params: dict[str, Any] | None


def parse_generation(
    api: Api,
    body: Any,
    served_model: str,
    max_model_len: int,
    default_output_tokens: int,
    adapters: Container[str] = (),
) -> GenerationRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        sampling = validate_sampling(api, body)
        check_truncation(body, max_model_len)
    except SamplingError as exc:
        # pydantic's type errors are typed "Bad Request" by vLLM, its own range checks BadRequestError.
        raise ApiError(400, exc.message, exc.param, "Bad Request" if exc.validation else None) from None
    # No name (null or empty) is the served model, and the answer names it: vLLM's
    # _is_model_supported (vllm/entrypoints/serve/engine/serving.py) accepts any falsy name.
    model = sampling.get("model") or served_model
    # LoRA adapters are served under their own names; vLLM's 404 still lists only the base model.
    if model != served_model and not (isinstance(model, str) and model in adapters):
        raise ApiError(404, f"The model `{model}` does not exist. Valid aliases: {served_model}.", "model")
    prompt_text = _prompt_text(api, body)
    prompt_tokens = count_tokens(prompt_text)
    # Chat prefers max_completion_tokens (the newer name); completions only know max_tokens.
    max_tokens = (
        sampling.get("max_completion_tokens", sampling.get("max_tokens"))
        if api == "chat"
        else sampling.get("max_tokens")
    )
    if max_tokens is not None and max_tokens > max_model_len:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.",
            "max_tokens",
        )
    output_tokens = max_tokens if max_tokens is not None else default_output_tokens
    if prompt_tokens + output_tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_tokens} input tokens and asks for {output_tokens} output tokens. "
            "Please reduce the length of the input messages or the completion.",
            "input_tokens",
        )
    stream = sampling.get("stream", False)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    if stream_options is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    choices = sampling.get("n", 1)
    if choices != 1:
        raise ApiError(
            400, f"the simulator generates one choice per request; n={choices!r} is not supported", "n"
        )
    include_usage = bool(stream_options and stream_options.get("include_usage"))
    continuous_usage = include_usage and bool(stream_options and stream_options.get("continuous_usage_stats"))
    if api == "chat":
        top_logprobs = (sampling.get("top_logprobs") or 0) if sampling.get("logprobs") else None
    else:
        top_logprobs = sampling.get("logprobs")
    if top_logprobs == -1:  # vLLM: the whole vocabulary; the simulator lists as many as it allows
        top_logprobs = MAX_LOGPROBS
    kv_params = body.get("kv_transfer_params")
    if kv_params is not None and not isinstance(kv_params, dict):
        raise ApiError(400, "kv_transfer_params must be an object", "kv_transfer_params")
    return GenerationRequest(
        api=api,
        model=model,
        prompt_text=prompt_text,
        prompt_tokens=prompt_tokens,
        max_tokens=output_tokens,
        explicit_max_tokens=max_tokens is not None,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        top_logprobs=top_logprobs,
        kv_transfer_params=kv_params,
    )


def _prompt_text(api: Api, body: dict[str, Any]) -> str:
    if api == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", "messages")
        try:
            return render_chat(messages)
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages") from exc
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise ApiError(
            400,
            "the simulator serves one text prompt per request (got a list of "
            f"{len(prompt)} prompts or token ids)",
            "prompt",
        )
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    return prompt


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    text: str
    return_token_strs: bool


def _check_model(body: dict[str, Any], served_model: str) -> None:
    try:
        model = validate_sampling("completions", {"model": body.get("model")}).get("model")
    except SamplingError as exc:
        raise ApiError(400, exc.message, exc.param, "Bad Request") from None
    # vLLM takes no name (null or empty) as its served model: _is_model_supported in
    # vllm/entrypoints/serve/engine/serving.py returns True for any falsy name.
    if model and model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist. Valid aliases: {served_model}.", "model")


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None and name == "return_token_strs":
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be a boolean, got {value!r}", name)
    return value


def parse_tokenize(body: Any, served_model: str) -> TokenizeRequest:
    """vLLM's /tokenize body: a completion ``prompt`` or chat ``messages`` (with its template flags)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_model(body, served_model)
    # The pseudo-tokenizer has no BOS token, so add_special_tokens changes nothing; it is still checked.
    if "messages" in body and "prompt" not in body:
        messages = body["messages"]
        if not isinstance(messages, list):
            raise ApiError(400, "messages must be a list", "messages")
        try:
            text = render_chat(
                messages,
                add_generation_prompt=_flag(body, "add_generation_prompt", True),
                continue_final_message=_flag(body, "continue_final_message", False),
            )
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages") from exc
        _flag(body, "add_special_tokens", False)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string (or send chat messages)", "prompt")
        text = prompt
        _flag(body, "add_special_tokens", True)
    return TokenizeRequest(text=text, return_token_strs=_flag(body, "return_token_strs", False))


def parse_detokenize(body: Any, served_model: str) -> str:
    """vLLM's /detokenize body ``{"model", "tokens": [ids]}`` to the text those ids stand for."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_model(body, served_model)
    tokens = body.get("tokens")
    if not isinstance(tokens, list):
        raise ApiError(400, "tokens must be a list of token ids", "tokens")
    pieces = []
    for index, token in enumerate(tokens):
        if not isinstance(token, int) or isinstance(token, bool):
            raise ApiError(400, f"tokens[{index}] must be an integer, got {token!r}", "tokens")
        try:
            pieces.append(id_piece(token))
        except ValueError as exc:
            raise ApiError(400, f"tokens[{index}]: {exc}", "tokens") from exc
    return "".join(pieces)
