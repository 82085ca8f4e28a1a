"""What the model servers themselves say happened: prefix-cache hits and requests per pod.

Reading the pods' vLLM counters (before and after a run) measures every router the same way, including
the peers whose own metrics name things differently. The counters are vLLM's: prefix-cache queries and
hits are counted in prompt tokens, so the hit rate is "share of prompt tokens served from cache".
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
REQUEST_SUCCESS = "vllm:request_success_total"
WATCHED = (PREFIX_QUERIES, PREFIX_HITS, REQUEST_SUCCESS)


@dataclass(frozen=True, slots=True)
class PodCounters:
    prefix_queries: float
    prefix_hits: float
    requests: float

    def __sub__(self, earlier: PodCounters) -> PodCounters:
        return PodCounters(
            self.prefix_queries - earlier.prefix_queries,
            self.prefix_hits - earlier.prefix_hits,
            self.requests - earlier.requests,
        )


def parse_counters(text: str) -> PodCounters:
    """Sum the watched counters over all their label sets in one Prometheus text exposition."""
    totals = dict.fromkeys(WATCHED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return PodCounters(totals[PREFIX_QUERIES], totals[PREFIX_HITS], totals[REQUEST_SUCCESS])


async def scrape(session: aiohttp.ClientSession, metrics_urls: Mapping[str, str]) -> dict[str, PodCounters]:
    """Counters of every pod, keyed like ``metrics_urls`` (pod name -> http://host:port/metrics)."""

    async def one(url: str) -> PodCounters:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            response.raise_for_status()
            return parse_counters(await response.text())

    values = await asyncio.gather(*(one(url) for url in metrics_urls.values()))
    return dict(zip(metrics_urls, values, strict=True))


@dataclass(frozen=True, slots=True)
class PoolDelta:
    per_pod: Mapping[str, PodCounters]

    @property
    def prefix_hit_rate(self) -> float:
        queries = sum(c.prefix_queries for c in self.per_pod.values())
        hits = sum(c.prefix_hits for c in self.per_pod.values())
        return hits / queries if queries > 0 else 0.0

    @property
    def requests_per_pod(self) -> dict[str, int]:
        return {pod: round(c.requests) for pod, c in self.per_pod.items()}


def delta(before: Mapping[str, PodCounters], after: Mapping[str, PodCounters]) -> PoolDelta:
    if before.keys() != after.keys():
        raise ValueError(f"pod sets differ between scrapes: {sorted(before)} vs {sorted(after)}")
    return PoolDelta({pod: after[pod] - before[pod] for pod in after})
