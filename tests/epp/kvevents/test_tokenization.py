"""Prompt → token ids as vLLM computes them: completions with special tokens, chat rendered by the
model's template (transformers' Jinja environment, vLLM's message normalisation) without them.
The tiny tokenizer here is built in the test; tests/slow/test_kvevents_vllm.py checks the same code
against real vLLM's /tokenize on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from epp.kvevents.chat_template import ChatTemplate, UnsupportedPrompt, detect_content_format
from epp.kvevents.tokenization import PromptTokenizer

WORDS = [
    "<unk>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "user",
    "assistant",
    "system",
    "hello",
    "world",
    "a",
    "b",
    "\n",
    "tool",
    "x",
]
CHATML = (
    "{{ bos_token }}{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    vocab = {word: i for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "unk_token": "<unk>"})
    )
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    return tmp_path


def test_completion_adds_special_tokens_and_chat_does_not(model_dir: Path) -> None:
    tok = PromptTokenizer.from_dir(model_dir)
    assert tok.request_tokens({"prompt": "hello world"}) == [1, 8, 9]
    assert tok.request_tokens({"prompt": "hello world", "add_special_tokens": False}) == [8, 9]
    # BOS comes from the template's {{ bos_token }} only.
    assert tok.request_tokens({"messages": [{"role": "user", "content": "hello"}]}) == [1, 3, 5, 8, 4, 3, 6]


@pytest.mark.parametrize(
    ("value", "bos"), [("false", False), ("No", False), (0, False), ("true", True), (1.0, True)]
)
def test_flags_are_read_as_vllm_reads_them(model_dir: Path, value: object, bos: bool) -> None:
    """vLLM's request models read these flags with pydantic's lax booleans: "false" is False. The EPP
    took bool("false"), True: it added a BOS vLLM did not, every block hash was shifted, and precise
    prefix routing found no cached block for such requests."""
    tok = PromptTokenizer.from_dir(model_dir)
    body = {"prompt": "hello world", "add_special_tokens": value}
    assert tok.request_tokens(body) == ([1, 8, 9] if bos else [8, 9])
    chat = {"messages": [{"role": "user", "content": "hello"}], "add_generation_prompt": value}
    ending = [3, 6] if bos else []  # the generation prompt (<|im_start|>assistant)
    assert tok.request_tokens(chat) == [1, 3, 5, 8, 4, *ending]


def test_a_flag_vllm_refuses_leaves_the_request_untokenized(model_dir: Path) -> None:
    tok = PromptTokenizer.from_dir(model_dir)
    for value in ("maybe", None, 2):  # each a 400 on vLLM 0.32 (null: "Input should be a valid boolean")
        with pytest.raises(UnsupportedPrompt, match="add_special_tokens"):
            tok.request_tokens({"prompt": "hello", "add_special_tokens": value})


def test_token_prompts_and_batches(model_dir: Path) -> None:
    tok = PromptTokenizer.from_dir(model_dir)
    assert tok.request_tokens({"prompt": [5, 6, 7]}) == [5, 6, 7]
    assert tok.request_tokens({"prompt": ["hello", "world"]}) == [1, 8]
    assert tok.request_tokens({"prompt": [[4, 4], [5]]}) == [4, 4]
    for body in ({"prompt": [1, -2]}, {"prompt": [True]}, {"other": 1}, {"messages": "x"}):
        with pytest.raises(UnsupportedPrompt):
            tok.request_tokens(body)


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        PromptTokenizer.from_dir(tmp_path)


def test_template_from_tokenizer_config_and_tool_use_selection(model_dir: Path) -> None:
    (model_dir / "chat_template.jinja").unlink()
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "default", "template": "D{{ messages[0]['content'] }}"},
        {"name": "tool_use", "template": "T{{ tools | length }}"},
    ]
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tok = PromptTokenizer.from_dir(model_dir)
    assert tok.chat_text({"messages": [{"role": "user", "content": "hi"}]}) == "Dhi"
    assert tok.chat_text({"messages": [], "tools": [{"type": "function"}]}) == "T1"
    overridden = PromptTokenizer.from_dir(model_dir, chat_template="O")
    assert overridden.chat_text({"messages": []}) == "O"


def test_no_template(model_dir: Path) -> None:
    (model_dir / "chat_template.jinja").unlink()
    with pytest.raises(UnsupportedPrompt, match="no chat template"):
        PromptTokenizer.from_dir(model_dir).request_tokens({"messages": []})


def render(template: str, messages: list[dict[str, object]], **kwargs: object) -> str:
    return ChatTemplate(template).render(messages, **kwargs)  # type: ignore[arg-type]


def test_environment_matches_transformers() -> None:
    # trim_blocks + lstrip_blocks, loopcontrols, {% generation %}, tojson without HTML escaping.
    template = (
        "{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n"
        "{% generation %}{{ m['content'] | tojson }}{% endgeneration %}\n{% endfor %}"
    )
    assert (
        render(template, [{"role": "user", "content": "<a & b>"}, {"role": "user", "content": "x"}])
        == '"<a & b>"'
    )
    with pytest.raises(UnsupportedPrompt, match="no system"):
        render("{{ raise_exception('no system') }}", [])
    assert render("{{ strftime_now('%Y') | length }}", []) == "4"


def test_content_format_string_joins_text_parts() -> None:
    template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert ChatTemplate(template).content_format == "string"
    parts = [
        {"type": "text", "text": "a"},
        "b",
        {"type": "text", "text": None},
        {"type": "input_text", "text": "c"},
    ]
    assert (
        render(template, [{"role": "user", "content": parts}, {"role": "user", "content": None}])
        == "[a\nb\nc][]"
    )


def test_content_format_openai_keeps_parts() -> None:
    template = "{% for m in messages %}{% for p in m.content %}<{{ p.text }}>{% endfor %}{% endfor %}"
    assert ChatTemplate(template).content_format == "openai"
    assert (
        render(template, [{"role": "user", "content": "a"}, {"role": "user", "content": ["b", "c"]}])
        == "<a><b><c>"
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "{% for message in messages[1:] %}{% for c in message['content'] %}{% endfor %}{% endfor %}",
            "openai",
        ),
        (
            "{% set msgs = messages %}{% for m in msgs %}{% for c in m.content %}{% endfor %}{% endfor %}",
            "openai",
        ),
        (
            "{% for m in messages %}{% set content = m.content %}"
            "{% for c in content %}{% endfor %}{% endfor %}",
            "openai",
        ),
        (
            "{% macro r(parts) %}{% for p in parts %}{% endfor %}{% endmacro %}"
            "{% for m in messages %}{{ r(m['content']) }}{% endfor %}",
            "openai",
        ),
        ("{% macro r(parts) %}{% for p in parts %}{% endfor %}{% endmacro %}{{ r(tools) }}", "string"),
        ("{% for m in messages %}{% for t in m.tool_calls %}{% endfor %}{% endfor %}", "string"),
    ],
)
def test_content_format_detection(template: str, expected: str) -> None:
    env = ChatTemplate(template)
    assert env.content_format == expected
    assert detect_content_format(env._template.environment.parse(template)) == expected


def test_continue_final_message_cuts_after_the_final_content() -> None:
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</end>{% endfor %}"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "partial"}]
    assert render(template, messages, add_generation_prompt=False, continue_final_message=True) == (
        "<user>q</end><assistant>partial"
    )
    with pytest.raises(UnsupportedPrompt, match="exclusive"):
        render(template, messages, continue_final_message=True)


def test_tool_calls_arguments_become_objects_and_developer_becomes_system() -> None:
    template = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}{{ c.function.arguments | tojson }}{% endfor %};{% endfor %}"
    )
    messages = [
        {"role": "system", "content": "s1"},
        {"role": "user", "content": "u"},
        {"role": "developer", "content": "d", "tools": []},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                {"type": "function", "function": {"name": "g", "arguments": "not json"}},
                {"type": "function", "function": {"name": "h", "arguments": "[1]"}},
            ],
        },
        {"role": "assistant", "content": "done", "tool_calls": []},
        {
            "role": "tool",
            "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}],
            "tool_call_id": "1",
        },
    ]
    assert render(template, messages, add_generation_prompt=False) == (
        'system:s1\n\nd;user:u;assistant:{"x": 1}{}{};assistant:done;tool:r1\nr2;'
    )


def test_developer_role_kept_when_the_template_knows_it() -> None:
    template = "{% for m in messages %}{% if m.role == 'developer' %}D{% endif %}{{ m.content }}{% endfor %}"
    assert render(template, [{"role": "developer", "content": "x"}]) == "Dx"


def test_billing_header_line_dropped_from_system() -> None:
    template = "{% for m in messages %}{{ m.content }}|{% endfor %}"
    messages = [
        {"role": "system", "content": "x-anthropic-billing-header: cch=1\nbe brief"},
        {"role": "user", "content": "x-anthropic-billing-header: kept"},
    ]
    assert render(template, messages) == "be brief|x-anthropic-billing-header: kept|"


def test_kwargs_merge_like_vllm() -> None:
    template = "{{ enable_thinking }}|{{ reasoning_effort }}|{{ custom }}|{{ documents }}|{{ bos_token }}"
    out = render(
        template,
        [],
        reasoning_effort="low",
        chat_template_kwargs={"custom": 1},
        special_tokens={"bos_token": "<s>"},
    )
    assert out == "True|low|1|None|<s>"
    kept = render(template, [], chat_template_kwargs={"enable_thinking": False, "reasoning_effort": "high"})
    assert kept == "False|high||None|"


@pytest.mark.parametrize(
    "content",
    [[{"type": "image_url", "image_url": {"url": "http://x"}}], [{"type": "text", "text": 3}], [7], {"a": 1}],
)
def test_media_and_bad_parts_are_unsupported(content: object) -> None:
    with pytest.raises(UnsupportedPrompt):
        render("{{ messages }}", [{"role": "user", "content": content}])


def test_bad_messages_are_unsupported() -> None:
    for message in ({"content": "x"}, "text", {"role": "assistant", "tool_calls": [{"type": "web"}]}):
        with pytest.raises(UnsupportedPrompt):
            render("{{ messages }}", [message])  # type: ignore[list-item]
