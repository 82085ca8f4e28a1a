"""A targeted parser for a vLLM ``/metrics`` page.

prometheus_client's text parser builds every family and sample of the page (hundreds of histogram
buckets on vLLM) to hand us five numbers. This parser instead ``str.find``s each wanted metric name
at line starts (C-speed substring search) and parses only those lines; see
``benchmarks/epp_scrape.py`` for the measured difference.
"""

from __future__ import annotations

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


VLLM = MetricNames()


class MetricsParseError(ValueError):
    pass


_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_LABEL_BLOCK = re.compile(r'\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\}')


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
            block = _LABEL_BLOCK.match(text, after)
            if block is None:
                raise MetricsParseError(f"unterminated label set on {name}")
            labels, value_start = block.group(1), block.end()
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
        if value < newest:  # the value is the update timestamp; the newest sample wins
            continue
        newest = value
        labels = labels_of(raw)
        running_loras = _adapters(labels.get("running_lora_adapters"))
        waiting_loras = _adapters(labels.get("waiting_lora_adapters"))
        max_loras = _int(labels.get("max_lora"), 0) or 0

    block_size = num_gpu_blocks = None
    for raw, _ in samples(text, names.cache_info):
        labels = labels_of(raw)
        block_size = _int(labels.get("block_size"), None)
        num_gpu_blocks = _int(labels.get("num_gpu_blocks"), None)
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
