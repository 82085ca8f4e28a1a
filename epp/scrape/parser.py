"""A targeted parser for a vLLM ``/metrics`` page.

prometheus_client's text parser builds every family and sample of the page (hundreds of histogram
buckets on vLLM) to hand us five numbers. This parser instead ``str.find``s each wanted metric name
at line starts (C-speed substring search) and parses only those lines; see
``benchmarks/epp_scrape.py`` for the measured difference.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from epp.datastore import EndpointMetrics


@dataclass(frozen=True, slots=True)
class MetricNames:
    waiting: str = "vllm:num_requests_waiting"
    running: str = "vllm:num_requests_running"
    kv_usage: tuple[str, ...] = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new, pre-rename
    lora_info: str = "vllm:lora_requests_info"
    cache_info: str = "vllm:cache_config_info"

    @property
    def every(self) -> tuple[str, ...]:
        """Every metric name read, in one list (what a filtered scrape asks for)."""
        return (self.waiting, self.running, *self.kv_usage, self.lora_info, self.cache_info)


VLLM = MetricNames()


class MetricsParseError(ValueError):
    pass


_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_LABEL_BLOCK = re.compile(r'\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\}')


def _label_block_end(text: str, start: int) -> int:
    """The index just past the label block that opens at ``text[start]`` (a ``{``); -1 when it is
    not terminated.

    ``_LABEL_BLOCK`` walks the block a character at a time, which is most of a scrape's parsing on
    vLLM: ``vllm:cache_config_info`` carries ~37 labels (70 µs a page here). The first ``}`` ends
    the block exactly when no quoted value is open at it; with no backslash in between (no escaped
    quote), the quotes before it pair up when their count is even. Anything else goes to the regex."""
    close = text.find("}", start)
    if close != -1:
        block = text[start:close]
        if "\\" not in block and block.count('"') % 2 == 0:
            return close + 1
    match = _LABEL_BLOCK.match(text, start)
    return -1 if match is None else match.end()


def samples(text: str, name: str) -> Iterator[tuple[str, float]]:
    """(raw label text, value) of every sample line of metric ``name``.

    The exposition format keeps all samples of one metric in a single group of lines, so after
    the first sample we read on only while the next line is the same metric, instead of searching
    the rest of the page again for every metric."""
    needle = "\n" + name
    # ``position`` is the index of the newline before the sample (-1 for the very first line).
    position = -1 if text.startswith(name) else text.find(needle)
    if position == -1 and not text.startswith(name):
        return
    found = False
    while True:
        start = position + 1
        after = start + len(name)
        follower = text[after : after + 1]
        labels = ""
        if follower == "{":
            value_start = _label_block_end(text, after)
            if value_start == -1:
                raise MetricsParseError(f"unterminated label set on {name}")
            labels = text[after + 1 : value_start - 1]
        elif follower in (" ", "\t"):
            value_start = after
        else:  # a longer metric name that merely starts with ``name``
            if found:
                return  # the group of ``name`` has ended
            position = text.find(needle, after)
            if position == -1:
                return
            continue
        end = text.find("\n", value_start)
        fields = text[value_start : end if end != -1 else len(text)].split()
        if not fields:
            raise MetricsParseError(f"sample of {name} has no value")
        try:
            yield labels, float(fields[0])
        except ValueError as exc:
            raise MetricsParseError(f"sample of {name} has a bad value {fields[0]!r}") from exc
        found = True
        if end == -1 or not text.startswith(name, end + 1):
            return
        position = end


def labels_of(raw: str) -> dict[str, str]:
    return {key: value.replace('\\"', '"').replace("\\\\", "\\") for key, value in _LABEL.findall(raw)}


def _adapters(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def parse_metrics(text: str, now: float, names: MetricNames = VLLM) -> EndpointMetrics:
    """The metrics the scheduler uses. Several series of one metric (data-parallel engines) add
    up for queue sizes; KV usage takes the fullest engine. Raises MetricsParseError when a core
    metric is absent: a page without them is not a model server we can schedule on."""
    waiting = running = None
    for _, value in samples(text, names.waiting):
        waiting = (waiting or 0.0) + value
    for _, value in samples(text, names.running):
        running = (running or 0.0) + value
    kv_usage = None
    for kv_name in names.kv_usage:
        for _, value in samples(text, kv_name):
            kv_usage = value if kv_usage is None else max(kv_usage, value)
        if kv_usage is not None:
            break
    core = ((names.waiting, waiting), (names.running, running), ("/".join(names.kv_usage), kv_usage))
    missing = [n for n, v in core if v is None]
    if missing:
        raise MetricsParseError(f"metrics page lacks {', '.join(missing)}")
    # +Inf/NaN are legal in the exposition format but mean nothing as a queue length or a usage
    # fraction: the page is unusable, like one without the metric (a counted scrape failure).
    broken = [f"{n}={v}" for n, v in core if v is not None and not math.isfinite(v)]
    if broken:
        raise MetricsParseError(f"metrics page reports non-finite {', '.join(broken)}")
    assert waiting is not None and running is not None and kv_usage is not None

    running_loras: frozenset[str] = frozenset()
    waiting_loras: frozenset[str] = frozenset()
    max_loras = 0
    newest = -math.inf
    for raw, value in samples(text, names.lora_info):
        # The value is the series' update timestamp; the newest sample wins. A non-finite one is
        # no time at all: NaN compares false both ways, so it once won and then let every later
        # (older) series win after it, and +Inf would stay "newest" for good, freezing the pod's
        # adapter set. Such a series is skipped (llm-d-router's LoRASpec.getLatestMetric keeps
        # the strictly greatest value, which skips NaN too).
        if not math.isfinite(value) or value < newest:
            continue
        newest = value
        running_loras, waiting_loras, max_loras = _lora_info(raw)

    block_size = num_gpu_blocks = None
    for raw, _ in samples(text, names.cache_info):
        block_size, num_gpu_blocks = _cache_info(raw)
        break

    return EndpointMetrics(
        waiting=_count(waiting),
        running=_count(running),
        kv_usage=min(1.0, max(0.0, kv_usage)),
        running_loras=running_loras,
        waiting_loras=waiting_loras,
        max_loras=max_loras,
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
        updated_at=now,
    )


# A pod's info labels repeat page after page (the cache configuration never changes, the LoRA set
# rarely): what they say is computed once per distinct label text. Bounded: a pod cycling through
# adapter sets evicts the oldest.
@functools.lru_cache(maxsize=512)
def _lora_info(raw: str) -> tuple[frozenset[str], frozenset[str], int]:
    labels = labels_of(raw)
    return (
        _adapters(labels.get("running_lora_adapters")),
        _adapters(labels.get("waiting_lora_adapters")),
        _int(labels.get("max_lora"), 0) or 0,
    )


@functools.lru_cache(maxsize=512)
def _cache_info(raw: str) -> tuple[int | None, int | None]:
    labels = labels_of(raw)
    return _int(labels.get("block_size"), None), _int(labels.get("num_gpu_blocks"), None)


def _count(value: float) -> int:
    return 0 if value < 0 else round(value)  # finite: parse_metrics refused the rest


# Label values are free text: a count in one must be a plain, sane integer to be used at all.
_MAX_LABEL_INT = 2**53


def _int(value: str | None, default: int | None) -> int | None:
    """An integer label value ("16", "16.0"); ``default`` for anything else, "1e999" and "inf"
    included (int(inf) raises OverflowError, which once killed a pod's poll task for good)."""
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    if not math.isfinite(number) or not -_MAX_LABEL_INT <= number <= _MAX_LABEL_INT:
        return default
    return int(number)
