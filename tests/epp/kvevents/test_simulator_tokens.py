"""The EPP's copy of the simulator's pseudo-tokenizer gives the simulator's own ids (any text,
including non-ASCII and NUL, and chat rendered as the simulator renders it)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.kvevents import simulator_tokens
from epp.kvevents.chat_template import UnsupportedPrompt
from simulator import tokens as sim


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=200))
def test_token_ids_equal_the_simulators(text: str) -> None:
    assert simulator_tokens.token_ids(text) == sim.token_ids(text)


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=3000))
def test_the_ascii_fast_path_equals_the_simulators(text: str) -> None:
    assert simulator_tokens.token_ids(text) == sim.token_ids(text)


def test_long_prompts_beyond_the_cached_masks() -> None:
    text = "abc defg hij " * 25_000  # 325,000 characters: masks built for this call only
    assert simulator_tokens.token_ids(text) == sim.token_ids(text)


def test_chat_and_completion_bodies_as_the_simulator_reads_them() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ]
    assert simulator_tokens.prompt_text({"messages": messages}) == sim.render_chat(messages)
    assert simulator_tokens.prompt_text({"prompt": ["only"]}) == "only"
    for bad in ({"messages": []}, {"prompt": ["a", "b"]}, {"prompt": [1, 2]}, {}):
        with pytest.raises(UnsupportedPrompt):
            simulator_tokens.request_tokens(bad)
    with pytest.raises(UnsupportedPrompt, match="text parts"):
        simulator_tokens.prompt_text({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
