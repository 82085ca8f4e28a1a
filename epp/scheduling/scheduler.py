"""The per-request profile loop: the handler picks profiles, each runs filters → scorers → picker,
until the handler picks none; then the handler names the primary result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epp.datastore import Endpoint
from epp.scheduling.framework import (
    ProfileHandler,
    ProfileResult,
    SchedulerProfile,
    SchedulingRequest,
    SchedulingResult,
)


class Scheduler:
    def __init__(self, profiles: Mapping[str, SchedulerProfile], handler: ProfileHandler) -> None:
        self.profiles = dict(profiles)
        self.handler = handler
        # A handler that keeps asking for profiles would spin forever; each profile can run once
        # per request in every handler we know, so this bound is generous.
        self._max_rounds = len(self.profiles) + 1

    def schedule(self, request: SchedulingRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        results: dict[str, ProfileResult | None] = {}
        for _ in range(self._max_rounds):
            chosen = self.handler.pick_profiles(request, self.profiles, results)
            if not chosen:
                break
            for profile in chosen:
                results[profile.name] = profile.run(request, candidates)
        return self.handler.process_results(request, results)
