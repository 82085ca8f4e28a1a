"""Render an OpenAI chat request to the prompt text vLLM 0.32 renders, without transformers.

vLLM's HF renderer (``vllm/renderers/hf.py``, ``vllm/renderers/chat_utils.py``) does, for text:

1. normalise each message (``_parse_chat_message_content``): ``content`` None → no parts, a string →
   one text part; text-like parts (``text``, ``input_text``, ``output_text``, ``thinking``,
   ``refusal``) kept, others are media. For the template's *content format* (detected from the
   template's Jinja AST: does it loop over ``message['content']``?) ``string`` joins the texts with
   ``"\\n"``, ``openai`` keeps ``[{"type": "text", "text": ...}]``. Assistant ``tool_calls`` and
   ``reasoning`` (also as ``reasoning_content``), tool ``tool_call_id``, ``name`` and ``task`` are
   copied; a tool message's list of text parts becomes one ``"\\n"``-joined string; a system
   message's leading ``x-anthropic-billing-header`` line is dropped; tool-call ``arguments`` JSON
   strings become dicts (invalid or non-object → ``{}``), an empty ``tool_calls`` list is removed;
2. when the template never mentions ``"developer"``/``'developer'``, developer messages become
   system messages and all system messages are merged into one at position 0;
3. ``tokenizer.apply_chat_template(conversation, tools=..., chat_template=..., tokenize=True)``
   with ``add_generation_prompt`` (default true), ``continue_final_message``, ``documents``,
   ``reasoning_effort`` (plus ``enable_thinking`` when set) and the request's
   ``chat_template_kwargs``; transformers (``utils/chat_template_utils.py``) renders in an
   ``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with ``loopcontrols``,
   a ``{% generation %}`` tag, a ``tojson`` filter that does not HTML-escape, and
   ``raise_exception``/``strftime_now``, passing the tokenizer's special tokens (``bos_token``...)
   as variables, then tokenizes the text **without** adding special tokens.

This module reproduces steps 1-3 up to the text with jinja2 alone (transformers would add ~100 MB
and a second of import to the EPP image); :mod:`epp.kvevents.tokenization` tokenizes it. Media
parts raise :class:`UnsupportedPrompt`: their placeholder tokens and hash keys depend on the
processor, so such requests cannot be matched from text.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEXT_PART_FIELDS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "thinking": "thinking",
    "refusal": "refusal",
}
_BILLING_HEADER = "x-anthropic-billing-header"
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker for continue_final_message


class UnsupportedPrompt(ValueError):
    """The request cannot be turned into the engine's tokens here (media, bad shape)."""


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (transformers uses it to track
    assistant tokens; the text is unchanged)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    def __init__(self, source: str) -> None:
        self.source = source
        env = _environment()
        self._template = env.from_string(source)
        self.content_format = detect_content_format(env.parse(source))
        self.supports_developer = '"developer"' in source or "'developer'" in source

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        special_tokens: Mapping[str, str] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        reasoning_effort: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        if continue_final_message and add_generation_prompt:
            raise UnsupportedPrompt("continue_final_message and add_generation_prompt are exclusive")
        conversation = self.conversation(messages)
        kwargs: dict[str, Any] = dict(chat_template_kwargs or {})
        kwargs.pop("chat_template", None)
        kwargs.pop("tokenize", None)
        extra: dict[str, Any] = {
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final_message,
            "documents": documents,
            "reasoning_effort": reasoning_effort,
        }
        if reasoning_effort is not None and "enable_thinking" not in kwargs:
            extra["enable_thinking"] = reasoning_effort != "none"
        # vLLM's merge_kwargs: request fields override chat_template_kwargs unless None/"auto".
        kwargs.update({k: v for k, v in extra.items() if v is not None and v != "auto"})
        if tools is not None:
            kwargs["tools"] = list(tools)
        return self._render(conversation, {**(special_tokens or {}), **kwargs})

    def conversation(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        conversation = [self._message(message) for message in messages]
        _parse_tool_call_arguments(conversation)
        if not self.supports_developer and any(m["role"] == "developer" for m in conversation):
            conversation = _consolidate_system([_developer_as_system(m) for m in conversation])
        return conversation

    def _render(self, conversation: list[dict[str, Any]], variables: dict[str, Any]) -> str:
        continue_final = bool(variables.pop("continue_final_message", False))
        add_generation_prompt = bool(variables.pop("add_generation_prompt", False))
        tools = variables.pop("tools", None)
        documents = variables.pop("documents", None)
        final_text = ""
        if continue_final:
            if not conversation:
                raise UnsupportedPrompt("continue_final_message needs a final message")
            conversation = copy.deepcopy(conversation)
            final = conversation[-1].get("content")
            if isinstance(final, list):
                for part in reversed(final):
                    if "text" in part:
                        final_text = part["text"]
                        part["text"] = part["text"] + _CONTINUE_TAG
                        break
                else:
                    raise UnsupportedPrompt("continue_final_message: no text in the final message")
            elif isinstance(final, str):
                final_text = final
                conversation[-1]["content"] = final + _CONTINUE_TAG
            else:
                raise UnsupportedPrompt("continue_final_message: the final message has no content")
        try:
            text = self._template.render(
                messages=conversation,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.exceptions.TemplateError as exc:
            raise UnsupportedPrompt(f"chat template rejected the request: {exc}") from exc
        if continue_final:
            marker = _CONTINUE_TAG.strip()
            if final_text.strip() not in text or marker not in text:
                raise UnsupportedPrompt("continue_final_message: the template dropped the final message")
            at = text.rindex(marker)
            text = text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        return text

    def _message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise UnsupportedPrompt("each message must be an object with a string role")
        role: str = message["role"]
        content = message.get("content")
        if content is None:
            parts: list[Any] = []
        elif isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = content
        else:
            raise UnsupportedPrompt(
                f"message content must be a string or a list, not {type(content).__name__}"
            )
        if role == "system":
            parts = _strip_billing_header(parts)
        texts = [text for text in (_part_text(part) for part in parts) if text is not None]
        result: dict[str, Any] = {"role": role}
        if self.content_format == "openai":
            result["content"] = [{"type": "text", "text": text} for text in texts]
        else:
            result["content"] = "\n".join(texts)
        if role == "assistant":
            if message.get("tool_calls") is not None:
                result["tool_calls"] = copy.deepcopy(list(message["tool_calls"]))
            if message.get("reasoning") is not None:
                result["reasoning"] = result["reasoning_content"] = message["reasoning"]
        elif role == "tool":
            if "tool_call_id" in message:
                result["tool_call_id"] = message["tool_call_id"]
            if isinstance(result["content"], list):
                result["content"] = "\n".join(part["text"] for part in result["content"])
        if isinstance(message.get("name"), str):
            result["name"] = message["name"]
        if isinstance(message.get("task"), str):
            result["task"] = message["task"]
        if role == "developer":
            result["tools"] = message.get("tools")
        return result


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if not isinstance(part, Mapping):
        raise UnsupportedPrompt("content parts must be strings or objects")
    kind = part.get("type")
    field = TEXT_PART_FIELDS.get(kind) if isinstance(kind, str) else None
    if field is None:
        raise UnsupportedPrompt(f"content part type {kind!r} is not text")
    text = part.get(field)
    if text is None:
        return None  # vLLM skips text parts without content
    if not isinstance(text, str):
        raise UnsupportedPrompt(f"content part {kind!r} has a non-string {field!r}")
    return text


def _strip_billing_header(parts: list[Any]) -> list[Any]:
    out: list[Any] = []
    for part in parts:
        text = (
            part
            if isinstance(part, str)
            else part.get("text")
            if isinstance(part, Mapping) and part.get("type") == "text"
            else None
        )
        if not (isinstance(text, str) and text.startswith(_BILLING_HEADER)):
            out.append(part)
            continue
        rest = text.partition("\n")[2]
        if rest:
            out.append(rest if isinstance(part, str) else {**part, "text": rest})
    return out


def _parse_tool_call_arguments(conversation: list[dict[str, Any]]) -> None:
    for message in conversation:
        calls = message.get("tool_calls")
        if message["role"] != "assistant" or not isinstance(calls, list):
            continue
        if not calls:
            del message["tool_calls"]
            continue
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or call.get("type", "function") != "function":
                raise UnsupportedPrompt("assistant tool_calls must be function calls")
            arguments = function.get("arguments")
            if not arguments:
                function["arguments"] = {}
            elif isinstance(arguments, str):
                try:
                    parsed = json.loads(arguments)
                except json.JSONDecodeError:
                    parsed = None
                function["arguments"] = parsed if isinstance(parsed, dict) else {}
            elif not isinstance(arguments, dict):
                function["arguments"] = {}


def _developer_as_system(message: dict[str, Any]) -> dict[str, Any]:
    if message["role"] != "developer":
        return message
    converted = {k: v for k, v in message.items() if k != "tools"}
    converted["role"] = "system"
    return converted


def _consolidate_system(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    texts: list[str] = []
    others: list[dict[str, Any]] = []
    needed = False
    for position, message in enumerate(conversation):
        if message["role"] != "system":
            others.append(message)
            continue
        if position > 0 or texts:
            needed = True
        content = message.get("content", "")
        if isinstance(content, list):
            content = "\n".join(
                part["text"] if isinstance(part, dict) else part
                for part in content
                if isinstance(part, str) or (isinstance(part, dict) and "text" in part)
            )
        if content:
            texts.append(content)
    if not needed:
        return conversation
    return [{"role": "system", "content": "\n\n".join(texts)}, *others]


# ---- content format detection (vLLM ``_detect_content_format``) ---------------------------------


def detect_content_format(tree: jinja2.nodes.Template) -> str:
    """``openai`` when the template iterates over a message's ``content`` (so it expects a list of
    parts), else ``string``."""
    message_names = set(_loop_targets_over(tree, {"messages"}))
    content_params = _macro_params_bound_to_content(tree, message_names)
    in_macros = {
        id(loop) for macro in tree.find_all(jinja2.nodes.Macro) for loop in macro.find_all(jinja2.nodes.For)
    }
    for loop in tree.find_all(jinja2.nodes.For):
        if _refers_to(loop.iter, message_names, "content"):
            return "openai"
        if isinstance(loop.iter, jinja2.nodes.Name):
            if id(loop) not in in_macros and loop.iter.name == "content":
                return "openai"
            if id(loop) in content_params and loop.iter.name in content_params[id(loop)]:
                return "openai"
    return "string"


def _loop_targets_over(tree: jinja2.nodes.Node, names: set[str]) -> Iterator[str]:
    aliases = set(names)
    for assign in tree.find_all(jinja2.nodes.Assign):  # {% set msgs = messages[1:] %}
        if isinstance(assign.target, jinja2.nodes.Name) and _refers_to(assign.node, names):
            aliases.add(assign.target.name)
    for loop in tree.find_all(jinja2.nodes.For):
        if isinstance(loop.target, jinja2.nodes.Name) and _refers_to(loop.iter, aliases):
            yield loop.target.name


def _macro_params_bound_to_content(
    tree: jinja2.nodes.Template, message_names: set[str]
) -> dict[int, set[str]]:
    bound: dict[int, set[str]] = {}
    for macro in tree.find_all(jinja2.nodes.Macro):
        params = [arg.name for arg in macro.args]
        names: set[str] = set()
        for call in tree.find_all(jinja2.nodes.Call):
            if not (isinstance(call.node, jinja2.nodes.Name) and call.node.name == macro.name):
                continue
            for position, arg in enumerate(call.args):
                if position < len(params) and _refers_to(arg, message_names, "content"):
                    names.add(params[position])
            for keyword in call.kwargs:
                if keyword.key in params and _refers_to(keyword.value, message_names, "content"):
                    names.add(keyword.key)
        if names:
            for loop in macro.find_all(jinja2.nodes.For):
                bound[id(loop)] = names
    return bound


def _refers_to(node: jinja2.nodes.Node, names: set[str], key: str | None = None) -> bool:
    """``node`` is ``name``, ``name[...]``/``name.x`` chains or filters over it; with ``key``, an
    access of ``key`` on such a name (``m['content']``, ``m.content``)."""
    while isinstance(node, jinja2.nodes.Filter | jinja2.nodes.Test) and node.node is not None:
        node = node.node
    if key is None:
        while isinstance(node, jinja2.nodes.Getitem | jinja2.nodes.Getattr):
            node = node.node
        return isinstance(node, jinja2.nodes.Name) and node.name in names
    if isinstance(node, jinja2.nodes.Getitem):
        index = node.arg
        return (
            isinstance(index, jinja2.nodes.Const)
            and index.value == key
            and isinstance(node.node, jinja2.nodes.Name)
            and node.node.name in names
        )
    if isinstance(node, jinja2.nodes.Getattr):
        return node.attr == key and isinstance(node.node, jinja2.nodes.Name) and node.node.name in names
    return False
