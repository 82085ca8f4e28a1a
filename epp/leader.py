"""Active-passive high availability (``--ha-enable-leader-election``): one EPP replica per pool is
the leader, chosen through a ``coordination.k8s.io/v1`` Lease; only the leader reports ready, so the
EPP Service sends Envoy's ext_proc streams to it alone while the standbys keep warm datastores.

The rules are client-go's leader election (what the upstream EPP's controller-runtime manager uses):

* The Lease is ``epp-<namespace>-<pool>.llm-d.ai`` in the pool's namespace, as llm-d's EPP names it
  (llm-d-router v0.10.0 ``pkg/epp/server/controller_manager.go``, since v0.9.0), so a mixed rollout of
  either EPP elects one leader and one Role rule grants both.
* A candidate takes the Lease when it does not exist, names no holder, or its record has not changed
  for ``leaseDurationSeconds``. That age is measured from when *this* replica first saw the record,
  on its own monotonic clock, so clock skew between nodes cannot cause an early takeover.
* Every write carries the resourceVersion that was read; the API server rejects a stale one (409),
  so two candidates racing for an expired Lease cannot both win.
* The leader renews every ``retry_period`` and counts itself leader only while its last successful
  renewal is younger than ``renew_deadline`` (shorter than the lease duration), so it steps down
  before any standby may take over, even when the API server is unreachable.
* On shutdown the leader releases the Lease (empty holder) so a standby takes over on its next try
  instead of waiting out the lease.

Unlike upstream, which exits the process when it loses the Lease, a replica that loses it here goes
NOT_SERVING and stands again as a candidate: the Service sees the same change without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from epp.scheduling.errors import ConfigError

log = logging.getLogger(__name__)

# Kubernetes object names are DNS subdomains.
MAX_LEASE_NAME = 253
# Candidates retry a little later than every retry_period so they do not hit the API in lockstep.
CANDIDATE_JITTER = 1.2


def lease_name(pool_namespace: str, pool_name: str) -> str:
    """The Lease one pool's EPP replicas compete for (llm-d's naming)."""
    return f"epp-{pool_namespace}-{pool_name}.llm-d.ai"


@dataclass(frozen=True)
class LeaseTiming:
    """controller-runtime's defaults: 15 s lease, 10 s renew deadline, 2 s retry period."""

    lease_duration: int = 15  # seconds; the Lease field is whole seconds
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if self.lease_duration < 1:
            raise ConfigError(f"lease duration must be at least 1 s, got {self.lease_duration}")
        if not 0 < self.retry_period * CANDIDATE_JITTER < self.renew_deadline < self.lease_duration:
            raise ConfigError(
                "leader election needs lease duration > renew deadline > retry period x "
                f"{CANDIDATE_JITTER} > 0, got {self.lease_duration} s / {self.renew_deadline} s / "
                f"{self.retry_period} s"
            )


@dataclass(frozen=True)
class _Observed:
    """The holder fields of the Lease as last read, and when (monotonic) they were first seen."""

    holder: str
    renew_time: datetime | None
    duration: int
    seen_at: float


class LeaderElector:
    def __init__(
        self,
        client: AsyncClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not identity:
            raise ConfigError("leader election needs a holder identity (POD_NAME)")
        if len(name) > MAX_LEASE_NAME:
            raise ConfigError(
                f"Lease name {name!r} is longer than {MAX_LEASE_NAME} characters; use a shorter pool "
                "name or namespace"
            )
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self._client = client
        self._clock = clock
        self._observed: _Observed | None = None
        # Monotonic start of the last write that made or kept this replica the holder.
        self._renewed_at: float | None = None
        self._held: Lease | None = None  # the Lease as this replica last wrote it
        self._task: asyncio.Task[None] | None = None
        self._last_problem = ""

    @property
    def is_leader(self) -> bool:
        renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self.timing.renew_deadline

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"leader election {self.name}")

    async def stop(self) -> None:
        """Stop competing and give the Lease up if this replica holds it. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._release()

    async def close(self) -> None:
        await self.stop()
        await self._client.close()

    # ---- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            was_leader = self.is_leader
            await self.try_acquire_or_renew()
            if self.is_leader and not was_leader:
                log.info("leader of Lease %s/%s as %s", self.namespace, self.name, self.identity)
            elif was_leader and not self.is_leader:
                log.warning(
                    "lost Lease %s/%s (another holder, or not renewed within %.1fs); standing by",
                    self.namespace,
                    self.name,
                    self.timing.renew_deadline,
                )
            if self.is_leader:
                await asyncio.sleep(self.timing.retry_period)
            else:
                period = self.timing.retry_period
                await asyncio.sleep(random.uniform(period, period * CANDIDATE_JITTER))

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards. API failures are logged
        (once per distinct problem) and count as a failed attempt."""
        started = self._clock()
        try:
            async with asyncio.timeout(self.timing.renew_deadline):
                held = await self._acquire_or_renew()
        except (ApiError, httpx2.HTTPError, OSError, TimeoutError, ValueError) as exc:  # ValueError: bad JSON
            self._log_problem(f"Lease {self.namespace}/{self.name}: {_describe(exc)}")
            return False
        self._last_problem = ""
        if held:
            self._renewed_at = started
        else:
            self._renewed_at = None
        return held

    async def _acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await self._client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if _code(exc) != 404:
                raise
            return await self._create(now)

        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity or ""
        self._observe(holder, spec)
        if holder and holder != self.identity and not self._expired():
            return False

        taking_over = holder != self.identity
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = self.timing.lease_duration
        spec.renewTime = now
        if taking_over:
            spec.acquireTime = now
            # An empty holder means the last leader released it; that is still a transition.
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        lease.spec = spec
        try:
            self._held = await self._client.replace(lease)
        except ApiError as exc:
            if _code(exc) == 409:  # another candidate wrote first; read again next time
                return False
            raise
        return True

    async def _create(self, now: datetime) -> bool:
        lease = Lease(
            metadata=ObjectMeta(name=self.name, namespace=self.namespace),
            spec=LeaseSpec(
                holderIdentity=self.identity,
                leaseDurationSeconds=self.timing.lease_duration,
                acquireTime=now,
                renewTime=now,
                leaseTransitions=0,
            ),
        )
        try:
            self._held = await self._client.create(lease)
        except ApiError as exc:
            if _code(exc) == 409:  # created by another candidate meanwhile
                return False
            raise
        return True

    def _observe(self, holder: str, spec: LeaseSpec) -> None:
        duration = spec.leaseDurationSeconds or self.timing.lease_duration
        last = self._observed
        record = (holder, spec.renewTime, duration)
        if last is None or (last.holder, last.renew_time, last.duration) != record:
            self._observed = _Observed(holder, spec.renewTime, duration, self._clock())

    def _expired(self) -> bool:
        observed = self._observed
        assert observed is not None
        return self._clock() - observed.seen_at >= observed.duration

    async def _release(self) -> None:
        held, self._held = self._held, None
        self._renewed_at = None
        if held is None:
            return  # this replica never held the Lease
        try:
            async with asyncio.timeout(self.timing.retry_period):
                released = await self._clear_holder(held)
        except (ApiError, httpx2.HTTPError, OSError, TimeoutError, ValueError) as exc:
            # The Lease then simply expires; standbys take over after its duration.
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, _describe(exc))
            return
        if released:
            log.info("released Lease %s/%s", self.namespace, self.name)

    async def _clear_holder(self, held: Lease) -> bool:
        """Empty the holder, guarded by resourceVersion: only a Lease this replica still holds is
        touched. The last write may have landed unseen (cancelled mid-request), so a conflict is
        settled by reading the Lease again."""
        for lease in (held, None):
            if lease is None:
                lease = await self._client.get(Lease, self.name, namespace=self.namespace)
                if lease.spec is None or lease.spec.holderIdentity != self.identity:
                    return False  # someone else holds it now
            transitions = lease.spec.leaseTransitions if lease.spec is not None else None
            # A 1 s duration lets a candidate that read the old record treat it as expired at once.
            lease.spec = LeaseSpec(
                leaseDurationSeconds=1, leaseTransitions=transitions, renewTime=datetime.now(UTC)
            )
            try:
                await self._client.replace(lease)
            except ApiError as exc:
                if _code(exc) != 409:
                    raise
                continue
            return True
        return False

    def _log_problem(self, problem: str) -> None:
        level = logging.DEBUG if problem == self._last_problem else logging.WARNING
        log.log(level, "%s; retrying", problem)
        self._last_problem = problem


def _code(exc: ApiError) -> int | None:
    return exc.status.code if exc.status is not None else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"API error {_code(exc)}: {exc}"
    if isinstance(exc, TimeoutError):
        return "API request timed out"
    return f"{type(exc).__name__}: {exc}"
