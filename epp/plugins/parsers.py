"""Request-parser plugins named in llm-d configs.

Request parsing lives in the protocol layer (``epp.server``), which understands the OpenAI
completions and chat bodies that vLLM serves. These registrations let configs that name the
matching llm-d parsers load unchanged; parsers for other APIs are not registered, so a config
that needs one fails at start-up as an unknown type instead of misparsing requests.
"""

from __future__ import annotations

from typing import Self

from epp.scheduling.framework import Plugin
from epp.scheduling.params import Params
from epp.scheduling.registry import register


class RequestParser(Plugin):
    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        # llm-d-router's parser factories never decode parameters: any are accepted.
        params.ignore_all()
        return cls(name)


@register("openai-parser")
class OpenAiParser(RequestParser):
    """OpenAI /v1/completions and /v1/chat/completions: what the protocol layer parses."""


@register("vllmhttp-parser")
class VllmHttpParser(RequestParser):
    """vLLM's HTTP server speaks the same OpenAI API, so the built-in parser covers it."""
