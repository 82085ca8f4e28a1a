"""Request body parsing: an OpenAI completions / chat body becomes a :class:`ParsedBody`.

Every way a body can be wrong ends in an ``EppError(400, ...)`` naming the problem; nothing else
escapes, so the stream state machine can hand any body to :func:`parse_request_body`.
"""

from __future__ import annotations

import json
from typing import Any

import jsonbody
from epp.types import EppError, ParsedBody

_CHAT_SUFFIX = "/chat/completions"
_COMPLETIONS_SUFFIX = "/completions"


def parse_request_body(path: str, raw: bytes) -> tuple[dict[str, Any], ParsedBody]:
    """Decode ``raw`` and extract what scheduling needs. ``path`` may carry a query string."""
    body = _decode_json_object(raw)
    _refuse_transfer_params(body)
    model = body.get("model")
    if model is None:
        raise EppError(400, "request body has no 'model' field")
    # An empty name is the model server's default: vLLM serves it with its served model (any falsy
    # name passes _is_model_supported, vllm/entrypoints/serve/engine/serving.py) and llm-d's EPP
    # routes it, only a string being required. A blank one is an unknown model (404), as on vLLM.
    if not isinstance(model, str):
        raise EppError(400, f"'model' must be a string, got {_describe(model)}")
    # Read as vLLM reads it (jsonbody.lax_bool): "yes" or 1 stream; null is the default, no stream.
    stream = False if body.get("stream") is None else jsonbody.lax_bool(body["stream"])
    if stream is None:
        raise EppError(400, f"'stream' must be a boolean, got {_describe(body['stream'])}")

    route = path.split("?", 1)[0].rstrip("/")
    if route.endswith(_CHAT_SUFFIX) or (not route.endswith(_COMPLETIONS_SUFFIX) and "messages" in body):
        api, prompt_text = "chat", _render_messages(body.get("messages"))
    elif route.endswith(_COMPLETIONS_SUFFIX) and "prompt" not in body and "prompt_embeds" in body:
        # vLLM serves completions from embeddings alone (--enable-prompt-embeds): base64 strings.
        api, prompt_text = "completions", _render_prompt(body["prompt_embeds"], field="prompt_embeds")
    elif route.endswith(_COMPLETIONS_SUFFIX) or "prompt" in body:
        api, prompt_text = "completions", _render_prompt(body.get("prompt"))
    elif "input" in body:  # embeddings / responses style bodies: schedule on the input text
        api, prompt_text = "completions", _render_input(body["input"])
    else:
        # Any other vLLM route that names a model (/detokenize, /v1/rerank, /v1/score, adapter
        # loading, ...) is routed on what text it carries, possibly none: vLLM answers it (or
        # refuses it) itself. A 400 here refused requests vLLM serves.
        api, prompt_text = "completions", _render_other(body)
    return body, ParsedBody(model=model, prompt_text=prompt_text, stream=stream, api=api)


# Text-bearing fields of vLLM's other routes, in the order they are rendered: scoring and reranking
# (vllm/entrypoints/pooling/scoring/protocol.py) and /detokenize's token ids.
_OTHER_TEXT_FIELDS = (
    "query",
    "queries",
    "text_1",
    "data_1",
    "documents",
    "items",
    "text_2",
    "data_2",
    "tokens",
)


def _render_other(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for name in _OTHER_TEXT_FIELDS:
        value = body.get(name)
        items = value if isinstance(value, list) and not _is_token_ids_list(value) else [value]
        for item in items:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, list) and _is_token_ids_list(item):
                parts.append(" ".join(str(t) for t in item))
            elif item is not None:
                parts.append(json.dumps(item, sort_keys=True))
    return "\n".join(parts)


def _decode_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise EppError(400, "request body is empty; expected a JSON object")
    try:
        body = jsonbody.loads(raw, max_containers=jsonbody.MAX_REQUEST_CONTAINERS)
    except jsonbody.BodyError as error:
        raise EppError(400, error.message) from None
    if not isinstance(body, dict):
        raise EppError(400, f"request body must be a JSON object, got {_describe(body)}")
    return body


# Fields that make a vLLM server open connections to hosts named in them: NixlConnector's side
# channel (kv_transfer_params.remote_host/remote_port) and the encoder-cache connector
# (ec_transfer_params). Only the P/D sidecar behind the gateway may set them; from a client they are
# an SSRF vector. vLLM also copies ``vllm_xargs`` into the same extra_args dict these two land in
# (vllm/entrypoints/openai/completion/protocol.py, to_sampling_params), so they are refused there too.
TRANSFER_FIELDS = ("kv_transfer_params", "ec_transfer_params")


def _refuse_transfer_params(body: dict[str, Any]) -> None:
    for name in TRANSFER_FIELDS:
        if name in body:
            raise EppError(400, f"'{name}' is set by the serving stack and must not come from a client")
    xargs = body.get("vllm_xargs")
    if isinstance(xargs, dict):
        for name in TRANSFER_FIELDS:
            if name in xargs:
                raise EppError(
                    400, f"'vllm_xargs.{name}' is set by the serving stack and must not come from a client"
                )


def _render_prompt(prompt: Any, field: str = "prompt") -> str:
    """A completions prompt: a string, a list of strings, or token ids (a list, or a list of lists)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if all(_is_token_ids(p) for p in prompt):
            return " ".join(str(t) for t in prompt)
        if all(isinstance(p, list) and _is_token_ids_list(p) for p in prompt):
            return "\n".join(" ".join(str(t) for t in ids) for ids in prompt)
    if prompt is None:
        raise EppError(400, f"request body has no '{field}' field")
    raise EppError(
        400, f"'{field}' must be a string, a non-empty list of strings or token ids, got {_describe(prompt)}"
    )


def _render_input(value: Any) -> str:
    """``input``: an embeddings input (shaped like a completions prompt), or a Responses API input,
    which may also be a list of items: messages (``role`` and ``content``, whose parts are
    ``input_text`` and the like) and others (function calls and their outputs, reasoning), rendered
    in order like chat messages. A list of items was refused as "must be a string ... got list",
    though the gateway routes /v1/responses to the pool and multi-turn Responses bodies are such lists."""
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        parts: list[str] = []
        for index, item in enumerate(value):
            role = item.get("role")
            if role is None:  # not a message: hashed as what it is
                parts.append(json.dumps(item, sort_keys=True) + "\n")
            elif not isinstance(role, str) or not role:
                raise EppError(400, f"input[{index}].role must be a non-empty string, got {_describe(role)}")
            else:
                parts.append(f"<|{role}|>\n{_render_content(item, f'input[{index}]')}\n")
        return "".join(parts)
    return _render_prompt(value, field="input")


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_ids_list(values: list[Any]) -> bool:
    return bool(values) and all(_is_token_ids(v) for v in values)


def _render_messages(messages: Any) -> str:
    """Chat messages rendered in order, one block per message, so a shared conversation prefix
    renders to a shared text prefix (what prefix-affinity hashing needs)."""
    if messages is None:
        raise EppError(400, "chat request body has no 'messages' field")
    if not isinstance(messages, list) or not messages:
        raise EppError(400, f"'messages' must be a non-empty list, got {_describe(messages)}")
    parts: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise EppError(400, f"messages[{index}] must be an object, got {_describe(message)}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise EppError(400, f"messages[{index}].role must be a non-empty string, got {_describe(role)}")
        # A chat message's content is optional in vLLM (an assistant turn to continue, a user turn
        # of only a name: CustomChatCompletionMessageParam is total=False in vllm/renderers/chat_utils.py):
        # vLLM 0.32 answers both with a 200.
        content = _render_content(message, f"messages[{index}]", content_required=False)
        parts.append(f"<|{role}|>\n{content}\n")
    return "".join(parts)


def _render_content(message: dict[str, Any], where: str, *, content_required: bool = True) -> str:
    content = message.get("content")
    rendered: list[str] = []
    if isinstance(content, str):
        rendered.append(content)
    elif isinstance(content, list):
        for part_index, part in enumerate(content):
            if not isinstance(part, dict):
                raise EppError(400, f"{where}.content[{part_index}] must be an object, got {_describe(part)}")
            text = part.get("text")
            # Non-text parts (images, audio) still have to hash differently from each other.
            rendered.append(text if isinstance(text, str) else json.dumps(part, sort_keys=True))
    elif content is not None:
        raise EppError(
            400,
            f"{where}.content must be a string, a list of parts or null, got {_describe(content)}",
        )
    elif content_required and "tool_calls" not in message:
        raise EppError(400, f"{where} has neither 'content' nor 'tool_calls'")
    if "tool_calls" in message:
        rendered.append(json.dumps(message["tool_calls"], sort_keys=True))
    return "".join(rendered)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
