"""Token ids of an OpenAI request, as vLLM 0.32 computes them, from the model's tokenizer files.

* Completions (``/v1/completions``): ``prompt`` text → ``tokenizer.encode(prompt,
  add_special_tokens=True)`` (vLLM's ``add_special_tokens`` request field defaults to true there);
  a ``prompt`` that is already a list of token ids is used as is.
* Chat (``/v1/chat/completions``): :class:`~epp.kvevents.chat_template.ChatTemplate` renders the
  text, which is encoded **without** special tokens (transformers' ``apply_chat_template`` does so;
  the template writes BOS itself when the model wants one).

The tokenizer is ``tokenizer.json`` through the ``tokenizers`` library — the same Rust tokenizer
transformers' fast tokenizers wrap, including added/special tokens and the post-processor that
adds BOS. transformers v5 ignores ``add_bos_token``/``add_eos_token`` from
``tokenizer_config.json`` when ``tokenizer.json`` exists (``tokenization_utils_base.py``), so the
post-processor alone decides. The chat template is looked up as transformers does: the
``chat_template.jinja`` file (and ``additional_chat_templates/*.jinja``) first, else
``tokenizer_config.json``'s ``chat_template`` (a string, or a list of ``{name, template}``); with
several, ``default`` (``tool_use`` when the request has tools). vLLM's ``--chat-template``
override corresponds to passing ``chat_template`` here.

Tokenizing is CPU work in Rust that releases the GIL; callers on the event loop with long prompts
can run :meth:`PromptTokenizer.request_tokens` in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

import jsonbody
from epp.kvevents.chat_template import ChatTemplate, UnsupportedPrompt

SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class PromptTokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_templates: Mapping[str, str] | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.special_tokens = dict(special_tokens or {})
        self._templates = {name: ChatTemplate(source) for name, source in (chat_templates or {}).items()}

    @classmethod
    def from_dir(cls, model_dir: str | Path, chat_template: str | None = None) -> PromptTokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, chat template files) from a model
        directory. ``chat_template`` overrides the model's, like vLLM's ``--chat-template``."""
        directory = Path(model_dir)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} not found: the EPP needs the model's fast tokenizer")
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config: dict[str, Any] = {}
        config_file = directory / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
        templates: dict[str, str] = {}
        if chat_template is not None:
            templates["default"] = chat_template
        else:
            templates = _model_templates(directory, config)
        special = {}
        for name in SPECIAL_TOKEN_NAMES:
            value = config.get(name)
            if isinstance(value, dict):  # serialized AddedToken
                value = value.get("content")
            if isinstance(value, str):
                special[name] = value
        return cls(tokenizer, templates, special)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        # encode_batch_fast skips offset tracking: the same ids, about a third less time here.
        ids: list[int] = self.tokenizer.encode_batch_fast([text], add_special_tokens=add_special_tokens)[
            0
        ].ids
        return ids

    def completion_tokens(self, prompt: str | Sequence[int], add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            return self.encode(prompt, add_special_tokens)
        if all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            return list(prompt)
        raise UnsupportedPrompt("prompt must be a string or a list of token ids")

    def chat_template(self, tools: bool = False) -> ChatTemplate:
        if not self._templates:
            raise UnsupportedPrompt("the model has no chat template")
        if len(self._templates) == 1:
            return next(iter(self._templates.values()))
        if tools and "tool_use" in self._templates:
            return self._templates["tool_use"]
        if "default" in self._templates:
            return self._templates["default"]
        raise UnsupportedPrompt("the model has several chat templates and none named default")

    def chat_text(self, body: Mapping[str, Any]) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise UnsupportedPrompt("messages must be a list")
        tools = body.get("tools")
        template = self.chat_template(tools=tools is not None)
        kwargs = body.get("chat_template_kwargs")
        return template.render(
            messages,
            special_tokens=self.special_tokens,
            add_generation_prompt=_flag(body, "add_generation_prompt", True),
            continue_final_message=_flag(body, "continue_final_message", False),
            tools=tools if isinstance(tools, list) else None,
            documents=body.get("documents"),
            reasoning_effort=body.get("reasoning_effort"),
            chat_template_kwargs=kwargs if isinstance(kwargs, Mapping) else None,
        )

    def request_tokens(self, body: Mapping[str, Any]) -> list[int]:
        """Token ids vLLM will see for a chat or completions request body."""
        if "messages" in body:
            if body.get("chat_template") is not None:
                raise UnsupportedPrompt("a per-request chat_template is not predicted")
            return self.encode(self.chat_text(body), False)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch: vLLM serves each prompt separately; route on the first
        if prompt is None:
            raise UnsupportedPrompt("the request has neither messages nor prompt")
        return self.completion_tokens(prompt, _flag(body, "add_special_tokens", True))


def _model_templates(directory: Path, config: Mapping[str, Any]) -> dict[str, str]:
    templates: dict[str, str] = {}
    single = directory / "chat_template.jinja"
    if single.is_file():
        templates["default"] = single.read_text(encoding="utf-8")
    extra_dir = directory / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if templates:
        return templates
    configured = config.get("chat_template")
    if isinstance(configured, str):
        return {"default": configured}
    if isinstance(configured, list):
        return {
            entry["name"]: entry["template"]
            for entry in configured
            if isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("template"), str)
        }
    return {}


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean request field as vLLM reads it (pydantic's lax mode: "false" is False, where
    ``bool("false")`` is True and shifted every token by a BOS vLLM did not add). A value vLLM
    refuses, null included (these fields are not optional), leaves the request untokenized."""
    if name not in body:
        return default
    value = jsonbody.lax_bool(body[name])
    if value is None:
        raise UnsupportedPrompt(f"{name} must be a boolean, got {body[name]!r:.40}")
    return value
