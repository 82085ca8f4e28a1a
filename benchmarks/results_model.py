"""The record of one benchmark run (one workload, one router, one arrival rate) and its JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.stats import Balance, Distribution, RunStats


@dataclass(frozen=True, slots=True)
class RunRecord:
    workload: str
    router: str
    rate_rps: float  # offered arrival rate
    stats: RunStats
    prefix_hit_rate: float  # share of prompt tokens the pods served from their prefix cache
    balance: Balance
    # A few distinct error messages, so a failed run explains itself in the JSON.
    error_samples: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        data["error_samples"] = list(self.error_samples)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """The inverse of :meth:`to_json` (to re-publish a saved run)."""
        stats = dict(data["stats"])
        for key in ("ttft", "latency"):
            stats[key] = Distribution(**stats[key]) if stats[key] is not None else None
        return cls(
            workload=data["workload"],
            router=data["router"],
            rate_rps=float(data["rate_rps"]),
            stats=RunStats(**stats),
            prefix_hit_rate=float(data["prefix_hit_rate"]),
            balance=Balance(**data["balance"]),
            error_samples=tuple(data.get("error_samples", ())),
        )
