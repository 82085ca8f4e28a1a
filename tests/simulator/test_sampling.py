"""Issue 12 static finding: the simulator accepted nonsense sampling parameters (``temperature:
"hot"`` or ``-5``) with a 200 where vLLM answers 400. It now gives vLLM 0.32's verdict for every
recorded case (tests/support/vllm_verdicts.py), with vLLM's error shape."""

from __future__ import annotations

import re
from typing import Any

import pytest

from simulator.requests import ApiError, parse_generation
from simulator.sampling import SamplingError, as_bool, as_float, as_int, validate_sampling
from tests.support.vllm_verdicts import BASE, VERDICTS


@pytest.mark.parametrize(("api", "field", "value", "status"), VERDICTS)
def test_each_field_gets_vllms_verdict(api: str, field: str, value: Any, status: int) -> None:
    _, base = BASE[api]
    body = {**base, field: value}
    try:
        parse_generation(api, body, "tiny", 2048, 16)  # type: ignore[arg-type]
    except ApiError as error:
        assert status == 400, (field, value, error.message)
        # vLLM reports max_completion_tokens under the name it copies it into.
        named = {field, "max_tokens"} if field == "max_completion_tokens" else {field}
        assert error.status == 400 and any(name in f"{error.param} {error.message}" for name in named)
        return
    assert status == 200, (field, value)


def test_type_errors_look_like_vllms_pydantic_errors() -> None:
    with pytest.raises(ApiError) as caught:
        parse_generation("completions", {**BASE["completions"][1], "temperature": "hot"}, "tiny", 2048, 16)
    error = caught.value.body()["error"]
    assert error["type"] == "Bad Request" and error["param"] == "body.temperature"
    assert error["message"].startswith("1 validation error:") and "float_parsing" in error["message"]


def test_range_errors_name_the_parameter() -> None:
    with pytest.raises(ApiError) as caught:
        parse_generation("chat", {**BASE["chat"][1], "temperature": -5}, "tiny", 2048, 16)
    error = caught.value.body()["error"]
    assert error["type"] == "BadRequestError" and error["param"] == "temperature"
    assert "-5" in error["message"]


def test_lax_conversions_feed_the_engine() -> None:
    request = parse_generation(
        "completions", {"model": "tiny", "prompt": "p", "max_tokens": "3", "stream": 1}, "tiny", 2048, 16
    )
    assert (request.max_tokens, request.stream) == (3, True)
    request = parse_generation(
        "completions", {"model": "tiny", "prompt": "p", "max_tokens": None}, "tiny", 2048, 16
    )
    assert request.max_tokens == 16 and not request.explicit_max_tokens


@pytest.mark.parametrize(
    ("convert", "value", "expected"),
    [
        (as_int, 2.0, 2),
        (as_int, " -7 ", -7),
        (as_int, True, 1),
        (as_float, "1e3", 1000.0),
        (as_float, False, 0.0),
        (as_bool, "Off", False),
        (as_bool, 1.0, True),
        (as_bool, "y", True),
    ],
)
def test_lax_conversion(convert: Any, value: Any, expected: Any) -> None:
    assert convert("f", value) == expected


@pytest.mark.parametrize(
    ("convert", "value"),
    [
        (as_int, 2.5),
        (as_int, "٣"),
        (as_int, "1_0"),
        (as_int, [1]),
        (as_float, "1_0"),
        (as_float, {}),
        (as_bool, 2),
        (as_bool, "maybe"),
    ],
)
def test_lax_conversion_refuses(convert: Any, value: Any) -> None:
    with pytest.raises(SamplingError):
        convert("f", value)


def test_min_tokens_is_checked_against_the_chat_limit_it_would_use() -> None:
    with pytest.raises(SamplingError, match="min_tokens"):
        validate_sampling("chat", {"max_completion_tokens": 3, "max_tokens": 50, "min_tokens": 4})
    assert validate_sampling("chat", {"max_completion_tokens": 5, "min_tokens": 4})["min_tokens"] == 4


@pytest.mark.parametrize(
    "key", ["-1", "536870912", "99999999999999999999", "9" * 5000, " +7" + "0" * 30, "-" + "0" * 5000 + "5"]
)
def test_logit_bias_ids_outside_the_vocabulary_are_refused_as_vllm_refuses_them(key: str) -> None:
    """vLLM's input processor refuses logit_bias ids outside [0, vocab size); these were a 200."""
    with pytest.raises(SamplingError, match=r"in logit_bias contain out-of-vocab token ids"):
        validate_sampling("completions", {"logit_bias": {key: 1}})


@pytest.mark.parametrize("key", ["0", "536870911", " 42 ", "-0", "0007", "0" * 5000 + "1"])
def test_logit_bias_ids_inside_the_vocabulary_are_taken(key: str) -> None:
    validate_sampling("completions", {"logit_bias": {key: 1}})


@pytest.mark.parametrize(
    "field", ["max_tokens", "n", "logprobs", "seed", "min_tokens", "truncate_prompt_tokens"]
)
def test_an_integer_string_past_pythons_digit_limit_is_a_400_not_a_500(field: str) -> None:
    """int() of a string of over 4,300 digits raises ValueError, which escaped as a 500."""
    body = {"model": "tiny", "prompt": "hi", field: "9" * 5000}
    with pytest.raises(ApiError) as caught:
        parse_generation("completions", body, "tiny", 4096, 16)
    assert caught.value.status == 400 and f"body.{field}" in caught.value.message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (10**12, "truncate_prompt_tokens=1000000000000 cannot be greater than max_model_len = 4096"),
        (-2, "greater than or equal to -1"),
        ("x", "int_parsing"),
    ],
)
def test_truncate_prompt_tokens_is_checked_as_vllm_checks_it(value: object, message: str) -> None:
    """It was ignored: any value was a 200."""
    body = {"model": "tiny", "prompt": "hi", "truncate_prompt_tokens": value}
    with pytest.raises(ApiError, match=re.escape(message)):
        parse_generation("completions", body, "tiny", 4096, 16)
    for fine in (-1, None, 4096):
        parse_generation("completions", {**body, "truncate_prompt_tokens": fine}, "tiny", 4096, 16)
