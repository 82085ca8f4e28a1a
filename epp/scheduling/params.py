"""Typed, strict reading of one plugin's ``parameters`` mapping.

Each plugin factory pulls the keys it understands through :class:`Params`, which rejects a wrong
type or value with the plugin and key named. :meth:`Params.finish` then rejects keys nobody read,
as llm-d-router decodes every plugin's parameters strictly (``fwkplugin.StrictDecoder``, JSON's
``DisallowUnknownFields``, since llm-d-router#1134, before v0.10.0): a misspelt key fails start-up
with its name instead of leaving the default silently in place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from epp.scheduling.errors import ConfigError

log = logging.getLogger(__name__)

# The ranges of the Go types llm-d decodes parameters into. YAML integers are unbounded in Python,
# so without these bounds a 400-digit integer made ``float()`` raise OverflowError (a traceback and
# a crash loop instead of an error naming the key), and an infinite or 10^11-hour duration was
# accepted where Go's JSON decoding and ``time.ParseDuration`` ("invalid duration") refuse it.
INT64_MAX = 2**63 - 1
MAX_DURATION_SECONDS = INT64_MAX / 1e9  # time.Duration is int64 nanoseconds: about 292 years


def finite_float(value: int | float) -> float | None:
    """``value`` as a finite float64, or None if no float64 holds it (NaN, inf, or an int past 1.8e308)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def duration_error(seconds: float) -> str | None:
    """Why ``seconds`` is no valid Go duration (llm-d's type for every duration), or None."""
    if math.isnan(seconds) or seconds < 0:
        return "must not be negative or NaN"
    if seconds > MAX_DURATION_SECONDS:
        return f"is longer than a Go duration holds ({MAX_DURATION_SECONDS:.0f}s, about 292 years)"
    return None


class Params:
    def __init__(self, plugin_name: str, plugin_type: str, raw: Any, *, prefix: str = "") -> None:
        self.plugin = f"plugin {plugin_name!r} (type {plugin_type})"
        self._names = (plugin_name, plugin_type)
        self.prefix = prefix  # "section." for a nested mapping's keys, so errors name the full path
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            where = f"parameter {prefix[:-1]!r}" if prefix else "'parameters'"
            raise ConfigError(f"{self.plugin}: {where} must be a mapping, got {type(raw).__name__}")
        self._raw: dict[str, Any] = dict(raw)
        self._used: set[str] = set()

    def section(self, key: str) -> Params:
        """The nested mapping under ``key`` (empty when absent), read with the same strictness;
        its errors name ``key.inner``. Call :meth:`finish` on it to reject unknown inner keys."""
        return Params(*self._names, self._take(key), prefix=f"{self.prefix}{key}.")

    def keys(self) -> frozenset[str]:
        """The keys given (read or not)."""
        return frozenset(self._raw)

    def _take(self, key: str) -> Any:
        self._used.add(key)
        return self._raw.get(key)

    def raw(self, key: str) -> Any:
        """The value as written (marked as understood); for parameters passed on to another plugin."""
        return self._take(key)

    def has(self, key: str) -> bool:
        return self._raw.get(key) is not None

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.plugin}: parameter {self.prefix + key!r} {problem}")

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise self.error(key, f"must be an integer, got {value!r}")
        self._check_range(key, value, -INT64_MAX - 1, INT64_MAX)
        self._check_range(key, value, minimum, maximum)
        return value

    def number(
        self, key: str, default: float, *, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        number = finite_float(value)
        if number is None:
            # NaN passes every range check (all its comparisons are false): refuse it by name.
            raise self.error(key, f"must be a finite number, got {short_repr(value)}")
        self._check_range(key, number, minimum, maximum)
        return number

    def duration(self, key: str, default: float, *, nanoseconds: bool = False) -> float:
        """Seconds; accepts a number of seconds or a Go duration string ("200ms", "2s", "1m").
        ``nanoseconds``: the upstream field is a Go ``time.Duration`` decoded from JSON, where a
        number counts nanoseconds (llm-d's samples write ``metricsLoggingInterval: 60000000000``
        for a minute), so a number must be a whole count of nanoseconds."""
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool):
            raise self.error(key, f"must be a duration like '200ms', got {value!r}")
        if nanoseconds and isinstance(value, float):
            raise self.error(key, f"must be whole nanoseconds (a Go time.Duration), got {value!r}")
        if isinstance(value, int | float):
            number = finite_float(value)
            seconds = math.inf if number is None else number / 1e9 if nanoseconds else number
        elif isinstance(value, str):
            seconds = parse_duration(value, lambda problem: self.error(key, problem))
        else:
            raise self.error(key, f"must be a duration like '200ms', got {value!r}")
        problem = duration_error(seconds)
        if problem is not None:
            raise self.error(key, f"{problem}, got {short_repr(value)}")
        return seconds

    def boolean(self, key: str, default: bool) -> bool:
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def string(self, key: str, default: str, *, choices: tuple[str, ...] | None = None) -> str:
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._take(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping, got {value!r}")
        return dict(value)

    def sequence(self, key: str) -> list[Any]:
        value = self._take(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, got {value!r}")
        return value

    def ignore_all(self) -> None:
        """For a type whose llm-d factory never decodes its parameters (``_ *json.Decoder``): any
        keys load there, so they load here too, named in a warning instead of failing start-up."""
        ignored = sorted(set(self._raw) - self._used)
        self._used.update(self._raw)
        if ignored:
            names = ", ".join(repr(self.prefix + key) for key in ignored)
            log.warning("%s takes no parameters; ignoring %s", self.plugin, names)

    def finish(self) -> None:
        """Reject parameters the plugin does not understand."""
        unknown = sorted(set(self._raw) - self._used)
        if not unknown:
            return
        names = ", ".join(repr(self.prefix + key) for key in unknown)
        raise ConfigError(f"{self.plugin}: unknown parameter(s) {names}")

    def _check_range(self, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {short_repr(value)}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum}, got {short_repr(value)}")


def short_repr(value: Any) -> str:
    """``repr`` cut to 40 characters: a 400-digit integer should not fill the error line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, error: Any) -> float:
    """Go-style duration ("1m30s", "200ms") → seconds."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise error(f"is not a duration like '200ms' or '2s': {text!r}")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds > MAX_DURATION_SECONDS:  # also inf, from a 400-digit number
        raise error(f"is longer than a Go duration holds (about 292 years): {text[:40]!r}")
    return seconds
