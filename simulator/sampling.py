"""Validation of the sampling fields of a request, with vLLM 0.32's verdicts.

vLLM checks a request twice: pydantic (lax mode) converts each field to its declared type
(``vllm/entrypoints/openai/{completion,chat_completion}/protocol.py``), then
``SamplingParams._verify_args`` (``vllm/sampling_params.py``) checks ranges. The simulator ignores
these values when generating, but it must refuse the same requests, or a client tested against it
would meet 400s only in production. ``tests/slow/test_sim_matches_vllm.py`` sends the same bodies
to both and compares the statuses.

Lax conversion, as pydantic 2 does it: an int field takes an integral float (``2.0``), a digit
string (``"5"``) or a bool; a float field takes an int, a bool or a numeric string; a bool field
takes 0/1 and the usual words (``"true"``, ``"off"`` ...); a string field takes only a string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jsonbody
from simulator.tokens import VOCAB_SIZE

Api = Literal["completions", "chat"]

_INT64 = 2**63
# The most logprobs vLLM returns per token unless --max-logprobs raises it (ModelConfig default).
MAX_LOGPROBS = 20

_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT_TEXT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*|\s*[+-]?(inf|infinity|nan)\s*", re.I)


class SamplingError(ValueError):
    """A refused field. ``validation``: a type error (vLLM's pydantic 400, ``param`` ``body.<name>``,
    type "Bad Request") rather than a range error (``param`` the bare name, "BadRequestError")."""

    def __init__(self, message: str, param: str | None, validation: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.validation = validation


def _type_error(name: str, kind: str, message: str, value: Any) -> SamplingError:
    shown = "None" if value is None else str(value)[:40]
    detail = f"{{'type': '{kind}', 'loc': 'body.{name}', 'msg': '{message}', 'input': '{shown}'}}"
    return SamplingError(f"1 validation error:\n  {detail}", f"body.{name}", validation=True)


def as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _type_error(
            name,
            "int_from_float",
            "Input should be a valid integer, got a number with a fractional part",
            value,
        )
    if isinstance(value, str):
        if value.isascii() and _INT_TEXT.fullmatch(value):
            try:
                return int(value)
            except ValueError:
                # Over Python's 4,300-digit limit for int(str) (a 500 before): pydantic-core
                # refuses such strings too, with this error type.
                raise _type_error(
                    name,
                    "int_parsing_size",
                    "Unable to parse input string as an integer, exceeded maximum size",
                    value,
                ) from None
        raise _type_error(
            name,
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            value,
        )
    raise _type_error(name, "int_type", "Input should be a valid integer", value)


def as_float(name: str, value: Any) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        if value.isascii() and _FLOAT_TEXT.fullmatch(value):
            return float(value)
        raise _type_error(
            name, "float_parsing", "Input should be a valid number, unable to parse string as a number", value
        )
    raise _type_error(name, "float_type", "Input should be a valid number", value)


def as_bool(name: str, value: Any) -> bool:
    converted = jsonbody.lax_bool(value)
    if converted is not None:
        return converted
    kind = "bool_parsing" if isinstance(value, str | int | float) else "bool_type"
    raise _type_error(name, kind, "Input should be a valid boolean", value)


def as_str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _type_error(name, "string_type", "Input should be a valid string", value)


Converter = Callable[[str, Any], Any]
# name -> (converter, null allowed). Fields both APIs declare the same way.
_COMMON: dict[str, tuple[Converter, bool]] = {
    # Not sampling, but declared the same way (``str | None``): a name that is no string is
    # pydantic's 400 before any model lookup.
    "model": (as_str, True),
    "temperature": (as_float, True),
    "top_p": (as_float, True),
    "top_k": (as_int, True),
    "min_p": (as_float, True),
    "presence_penalty": (as_float, True),
    "frequency_penalty": (as_float, True),
    "repetition_penalty": (as_float, True),
    "seed": (as_int, True),
    "n": (as_int, False),
    "min_tokens": (as_int, False),
    "ignore_eos": (as_bool, False),
    "user": (as_str, True),
    "stream": (as_bool, True),
    "max_tokens": (as_int, True),
}
_PER_API: dict[str, dict[str, tuple[Converter, bool]]] = {
    "completions": {"echo": (as_bool, True), "logprobs": (as_int, True), "suffix": (as_str, True)},
    "chat": {
        "max_completion_tokens": (as_int, True),
        "logprobs": (as_bool, True),
        "top_logprobs": (as_int, True),
    },
}


def validate_sampling(api: Api, body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling fields of ``body`` converted as vLLM converts them (absent and null fields are
    left out), or :class:`SamplingError` for the first field vLLM would refuse."""
    values: dict[str, Any] = {}
    for name, (convert, nullable) in {**_COMMON, **_PER_API[api]}.items():
        if name not in body:
            continue
        raw = body[name]
        if raw is None:
            if not nullable:
                kind = "bool_type" if convert is as_bool else "int_type"  # the non-null fields
                raise _type_error(name, kind, "Input should be a valid value", None)
            continue
        values[name] = convert(name, raw)
    values["stop"] = _stop(body.get("stop"))
    _stop_token_ids(body.get("stop_token_ids"))
    _logit_bias(body.get("logit_bias"))
    _check_ranges(api, values)
    return values


def check_truncation(body: Mapping[str, Any], max_model_len: int) -> None:
    """``truncate_prompt_tokens`` as vLLM 0.32 checks it (``Field(ge=-1)``, then
    ``renderers/params.py``'s ``TokenizeParams.__post_init__`` against the context length): it was
    ignored, so ``10**12`` or ``"x"`` were served with a 200."""
    raw = body.get("truncate_prompt_tokens")
    if raw is None:
        return
    value = as_int("truncate_prompt_tokens", raw)
    if value < -1:
        raise _type_error(
            "truncate_prompt_tokens", "greater_than_equal", "Input should be greater than or equal to -1", raw
        )
    if value > max_model_len:
        raise SamplingError(
            f"truncate_prompt_tokens={value} cannot be greater than max_model_len = {max_model_len}."
            " Please request a smaller truncation size.",
            None,
        )


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        stops = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        stops = list(value)
    else:
        raise _type_error("stop", "string_type", "Input should be a valid string or a list of strings", value)
    if any(not stop for stop in stops):
        raise SamplingError("stop cannot contain an empty string.", None)
    return stops


def _stop_token_ids(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _type_error("stop_token_ids", "list_type", "Input should be a valid list", value)
    for index, item in enumerate(value):
        as_int(f"stop_token_ids.{index}", item)


def _logit_bias(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _type_error("logit_bias", "dict_type", "Input should be a valid dictionary", value)
    for key, bias in value.items():
        as_float(f"logit_bias.{key}", bias)
    bad = [key for key in value if not (key.isascii() and _INT_TEXT.fullmatch(key))]
    if bad:
        raise SamplingError(f"logit_bias keys must be integer token ids, got {bad!r}", "logit_bias")
    # vLLM's input processor (_validate_logit_bias) refuses ids outside the vocabulary: a key of
    # -1 or 10**20 was served with a 200 here, ignored, where vLLM answers 400.
    out_of_vocab = [key.strip() for key in value if not _in_vocabulary(key)]
    if out_of_vocab:
        shown = ", ".join(key if len(key) <= 40 else key[:40] + "..." for key in out_of_vocab[:10])
        raise SamplingError(
            f"token_id(s) [{shown}] in logit_bias contain out-of-vocab token ids."
            f" Vocabulary size: {VOCAB_SIZE}",
            None,
        )


def _in_vocabulary(key: str) -> bool:
    """Whether an integer key (checked by _INT_TEXT) is an id in [0, VOCAB_SIZE). Only its
    significant digits are converted: int() of over 4,300 digits raises, which would be a 500."""
    text = key.strip()
    significant = text.lstrip("+-").lstrip("0") or "0"
    if len(significant) > len(str(VOCAB_SIZE)):
        return False
    number = int(significant)
    return not (text.startswith("-") and number) and number < VOCAB_SIZE


# The range checks of SamplingParams._verify_args that pass ``parameter=`` to their error.
_NAMED_IN_RANGE_ERRORS = frozenset({"temperature", "top_p", "max_tokens", "logprobs", "top_logprobs"})


def _check_ranges(api: Api, v: Mapping[str, Any]) -> None:
    def refuse(name: str, rule: str) -> SamplingError:
        # vLLM names the parameter (error.param) only for some of its range checks.
        return SamplingError(
            f"{name} {rule}, got {v[name]}.", name if name in _NAMED_IN_RANGE_ERRORS else None
        )

    if "seed" in v and not -_INT64 <= v["seed"] < _INT64:
        raise _type_error("seed", "less_than_equal", "Input should fit in a signed 64-bit integer", v["seed"])
    if v.get("n", 1) < 1:
        raise refuse("n", "must be at least 1")
    for name in ("presence_penalty", "frequency_penalty"):
        if name in v and not -2.0 <= v[name] <= 2.0:
            raise refuse(name, "must be in [-2, 2]")
    if "repetition_penalty" in v and not (
        math.isfinite(v["repetition_penalty"]) and v["repetition_penalty"] > 0
    ):
        raise refuse("repetition_penalty", "must be a finite number greater than zero")
    if "temperature" in v and not (math.isfinite(v["temperature"]) and 0.0 <= v["temperature"] <= 2.0):
        raise refuse("temperature", "must be a finite number in [0, 2]")
    if "top_p" in v and not 0.0 < v["top_p"] <= 1.0:
        raise refuse("top_p", "must be in (0, 1]")
    if v.get("top_k", 0) < -1:
        raise refuse("top_k", "must be 0 (disable), or at least 1")
    if "min_p" in v and not 0.0 <= v["min_p"] <= 1.0:
        raise refuse("min_p", "must be in [0, 1]")
    for name in ("max_tokens", "max_completion_tokens"):
        if name in v and v[name] < 1:
            # vLLM reports both names as max_tokens (the chat field is copied into it).
            raise SamplingError(f"max_tokens must be at least 1, got {v[name]}.", "max_tokens")
    if v.get("min_tokens", 0) < 0:
        raise refuse("min_tokens", "must be greater than or equal to 0")
    limit = v.get("max_completion_tokens", v.get("max_tokens")) if api == "chat" else v.get("max_tokens")
    if limit is not None and v.get("min_tokens", 0) > limit:
        raise refuse("min_tokens", f"must be less than or equal to max_tokens={limit}")
    if api == "completions" and "logprobs" in v:
        logprobs = v["logprobs"]
        if logprobs < -1:
            raise refuse("logprobs", "must be a positive value or -1")
        # -1 asks for the whole vocabulary, which is over the limit too.
        if logprobs == -1 or logprobs > MAX_LOGPROBS:
            raise SamplingError(f"logprobs may be at most {MAX_LOGPROBS}, got {logprobs}.", "logprobs")
    if api == "chat" and "top_logprobs" in v:
        top = v["top_logprobs"]
        if top < -1:
            raise refuse("top_logprobs", "must be a positive value or -1")
        if (top == -1 or top > 0) and not v.get("logprobs"):
            raise SamplingError("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
        if top == -1 or top > MAX_LOGPROBS:
            raise SamplingError(f"top_logprobs may be at most {MAX_LOGPROBS}, got {top}.", "top_logprobs")
