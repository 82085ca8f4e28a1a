"""Pickers: choose the target endpoints (primary first, then fallbacks) from scored candidates."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Self

from epp.datastore import Endpoint
from epp.scheduling.framework import Picker, ProfileResult, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.registry import register

_MAX_ENDPOINTS_CAP = 64


class _CountedPicker(Picker):
    def __init__(self, name: str, max_endpoints: int, rng: random.Random | None = None) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints
        # One generator per picker, seeded once (GIE fixed a bug where it was re-seeded per pick).
        self.rng = rng or random.Random()

    @classmethod
    def from_parameters(cls, name: str, params: Params) -> Self:
        return cls(name, params.integer("maxNumOfEndpoints", 1, minimum=1, maximum=_MAX_ENDPOINTS_CAP))


@register("max-score-picker")
class MaxScorePicker(_CountedPicker):
    """Highest total score wins; ties are broken at random; the next best are the fallbacks."""

    def pick(
        self, request: SchedulingRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> ProfileResult:
        if not endpoints:
            return ProfileResult((), ())
        if self.max_endpoints == 1:
            # Hot path: one pass for the maximum, then a random choice among the tied.
            best = max(scores)
            tied = [index for index, score in enumerate(scores) if score == best]
            chosen = tied[0] if len(tied) == 1 else self.rng.choice(tied)
            return ProfileResult((endpoints[chosen],), (best,))
        random_key = self.rng.random
        order = sorted(range(len(endpoints)), key=lambda i: (-scores[i], random_key()))
        top = order[: self.max_endpoints]
        return ProfileResult(tuple(endpoints[i] for i in top), tuple(scores[i] for i in top))


@register("random-picker")
class RandomPicker(_CountedPicker):
    """Uniformly random among the candidates, whatever their scores (``maxNumOfEndpoints`` of them)."""

    def pick(
        self, request: SchedulingRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> ProfileResult:
        chosen = self.rng.sample(range(len(endpoints)), min(self.max_endpoints, len(endpoints)))
        return ProfileResult(tuple(endpoints[i] for i in chosen), tuple(scores[i] for i in chosen))


@register("weighted-random-picker")
class WeightedRandomPicker(_CountedPicker):
    """A-Res weighted sampling without replacement: key = U^(1/score), take the largest keys.
    Endpoints scoring <= 0 come after every positive one (key 0), in random order: never the
    primary while any score is positive, but still fallbacks when ``maxNumOfEndpoints`` asks for
    more than score above 0. Every score <= 0: uniform."""

    def pick(
        self, request: SchedulingRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> ProfileResult:
        positive = [i for i, score in enumerate(scores) if score > 0]
        count = min(self.max_endpoints, len(endpoints))
        if not positive:
            chosen = self.rng.sample(range(len(endpoints)), count)
        else:
            uniform = self.rng.random
            keyed = sorted(positive, key=lambda i: uniform() ** (1.0 / scores[i]), reverse=True)
            chosen = keyed[:count]
            if len(chosen) < count:
                # llm-d-router picker/weightedrandom/picker.go Pick: a score <= 0 gets key 0 and
                # stays in the list sorted by key, so it fills the slots after the positive ones
                # (in no particular order: sort.Slice is not stable).
                rest = [i for i, score in enumerate(scores) if not score > 0]
                chosen += self.rng.sample(rest, count - len(chosen))
        return ProfileResult(tuple(endpoints[i] for i in chosen), tuple(scores[i] for i in chosen))
