"""The scheduling core's implementation of :class:`epp.types.Director`.

Per request: model check → objective priority → admission → candidates (subset hint) →
healthy-metrics candidates → data producers → scheduler → pre-request hooks → in-flight bookkeeping.
Admission is llm-d's legacy check (a sheddable request gets 429 while the pool is saturated) or,
with the flowControl feature gate on, :mod:`epp.flowcontrol`: the request waits in its band's queue
(without blocking the loop) until dispatched, or gets 429/503 when shed. Everything else is
synchronous CPU work of tens of microseconds on the event loop; no I/O happens in the request path.
A config with preparers (a token-producer) has them awaited after admission
(:meth:`SchedulingDirector.prepare`): tokenization runs in a thread or a render service, never
inside the synchronous decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from epp import metrics as epp_metrics
from epp.config.scheduler_config import SchedulerConfig
from epp.datastore import Datastore, Endpoint, RewriteTarget
from epp.flowcontrol import FlowController, FlowControlRejected, FlowRequest, Outcome
from epp.scheduling.framework import SchedulingRequest, SchedulingResult, uncached_prompt_tokens
from epp.types import Decision, EppError, InferenceRequest, Usage

log = logging.getLogger(__name__)

Deferrer = Callable[..., Any]  # e.g. loop.call_soon(callback, *args)

REJECTED_NO_ENDPOINTS = "rejected-no-endpoints"
REJECTED_SATURATED = "rejected-saturated"
REJECTED_TTL_EXPIRED = "rejected-ttl-expired"
REJECTED_CONTEXT_CANCELLED = "rejected-context-cancelled"
REJECTED_SHUTTING_DOWN = "rejected-shutting-down"
MODEL_REWRITE_HEADERS = ("x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite")  # current, legacy


@dataclass(slots=True)
class _Flight:
    endpoint: Endpoint  # whose in_flight count this request holds (the primary, or what served it)
    started: float
    # Other profiles' picks (the prefill endpoint under P/D) hold a count too, until the first
    # response byte (the prefill is done by then), as llm-d-router's inflight-load-producer
    # releases the prefill profile's target at StartOfStream (inflightload/producer.go
    # ResponseBody); or until completion if no byte ever comes.
    others: tuple[Endpoint, ...] = ()
    # Until the first response byte: ``endpoint.pending`` holds one and ``charged`` (the prefill
    # pick under P/D, else the endpoint) holds ``tokens``, the uncached prompt tokens.
    charged: Endpoint | None = None
    tokens: int = 0


class SchedulingDirector:
    def __init__(
        self,
        datastore: Datastore,
        config: SchedulerConfig,
        *,
        served_models: frozenset[str] | None = None,
        metrics_staleness: float = 2.0,
        leadership: Callable[[], bool] | None = None,
        pool_name: str = "",
        wrap_decide: Callable[[Callable[..., Decision]], Callable[..., Decision]] | None = None,
    ) -> None:
        self.datastore = datastore
        # With leader election only the leader reports ready (the Service then sends traffic to it).
        self.leadership = leadership
        self.config = config
        self.served_models = served_models
        self.metrics_staleness = metrics_staleness
        self._flights: dict[str, _Flight] = {}
        self._pick_counters: dict[tuple[str, str], Any] = {}
        self._rng = random.Random()
        self.flow_control: FlowController | None = None
        if config.flow_control is not None:
            self.flow_control = FlowController(config.flow_control, datastore.endpoints, pool_name=pool_name)
            # The names the operator serves keep their own model label however many made-up names
            # clients send first (llm-d pins its configured names: metrics/cardinality.go).
            self.flow_control.labels.pin_models(served_models or ())
        datastore.add_listener(self._endpoints_changed)
        if wrap_decide is not None:
            # Tracing (epp.tracing): only then is decide() wrapped; without it decide() stays the plain
            # method below, so the decision path carries no tracing branch at all.
            self.decide = wrap_decide(self.decide)  # type: ignore[method-assign]

    def ready(self) -> bool:
        return self.datastore.synced and (self.leadership is None or self.leadership())

    @property
    def decides_nowait(self) -> bool:
        """handle_request never suspends: no flow control queue and no preparer to await. The
        protocol layer then routes from the transport's read path (ExtProcStream.dispatch_nowait)."""
        return self.flow_control is None and not self.config.preparers

    async def handle_request(self, request: InferenceRequest) -> Decision:
        # Deferrable pre-request hooks (the prefix-index update) run on the next loop iteration,
        # after the protocol layer has the decision, like llm-d's asynchronous PreRequest.
        defer = asyncio.get_running_loop().call_soon
        admitted: tuple[str, int] | None = None
        if self.flow_control is not None:
            try:
                admitted = self._model_and_priority(request)
                await self._admit(request, *admitted)
            except EppError as error:
                epp_metrics.REJECTIONS.labels(str(error.status), error.reason or "").inc()
                raise
        if not self.config.preparers:  # the common case pays for nothing but this check
            return self.decide(request, defer=defer, admitted=admitted)
        # After admission, as llm-d prepares request data only for dispatched requests: a queued
        # request costs no tokenization until it may run.
        prepared = await self.prepare(request)
        return self.decide(request, defer=defer, prepared=prepared, admitted=admitted)

    async def prepare(self, request: InferenceRequest) -> dict[str, Any]:
        """Await the config's preparers (producers before consumers); returns what they put in
        the request state, for :meth:`decide`. A preparer that raises is logged and counted; the
        request is still scheduled, without that preparer's data (as llm-d's director continues
        past a failed data producer)."""
        started = time.perf_counter()
        parsed = request.parsed
        scratch = SchedulingRequest(
            request_id=request.request_id,
            target_model=parsed.model,
            prompt_text=parsed.prompt_text,
            headers=request.headers,
            body=request.body,
        )
        for preparer in self.config.preparers:
            try:
                await preparer.prepare(scratch)
            except Exception:
                epp_metrics.PREPARE_FAILURES.labels(preparer.name).inc()
                log.exception("preparer %s failed for request %s", preparer.name, request.request_id)
        epp_metrics.PREPARE_SECONDS.observe(time.perf_counter() - started)
        return scratch.state

    def decide(
        self,
        request: InferenceRequest,
        defer: Deferrer | None = None,
        prepared: dict[str, Any] | None = None,
        admitted: tuple[str, int] | None = None,
    ) -> Decision:
        """The synchronous body of :meth:`handle_request` (what the decision benchmark times).
        ``defer`` receives the deferrable pre-request work; without it, that work runs inline.
        ``prepared`` is what :meth:`prepare` returned, if the config has preparers; ``admitted``
        is (target model, priority) when flow control already worked them out."""
        started = time.perf_counter()
        try:
            decision = self._decide(request, defer, prepared, admitted)
        except EppError as error:
            epp_metrics.REJECTIONS.labels(str(error.status), error.reason or "").inc()
            raise
        epp_metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        return decision

    def _model_and_priority(self, request: InferenceRequest) -> tuple[str, int]:
        """The target model (404 if not served) and the priority of the request's objective."""
        target_model = self._target_model(request)
        # A headers-only request (api "none", e.g. GET /v1/models) names no model to check, nor does
        # an empty name (the model server's default, see epp.server.body).
        if self.served_models is not None and target_model and target_model not in self.served_models:
            raise EppError(404, f"model {target_model!r} is not served by this pool")
        return target_model, self.datastore.priority(request.objective)

    async def _admit(self, request: InferenceRequest, target_model: str, priority: int) -> None:
        """Wait for flow control to dispatch the request; its refusals become 429/503 as in llm-d
        (requestcontrol/admission.go translateFlowControlOutcome)."""
        assert self.flow_control is not None
        flow = FlowRequest(
            request_id=request.request_id,
            fairness_id=request.fairness_id,
            priority=priority,
            byte_size=request.body_bytes,
            received_at=request.received_at or None,
            headers=request.headers,
            model_name=request.parsed.model,
            target_model_name=target_model,
        )
        try:
            await self.flow_control.admit(flow)
        except FlowControlRejected as rejected:
            raise _flow_control_error(rejected, pool_empty=not self.datastore.endpoints()) from None

    def _decide(
        self,
        request: InferenceRequest,
        defer: Deferrer | None,
        prepared: dict[str, Any] | None,
        admitted: tuple[str, int] | None,
    ) -> Decision:
        parsed = request.parsed
        target_model, priority = admitted if admitted is not None else self._model_and_priority(request)
        candidates = self._candidates(request.subset)
        now = time.monotonic()
        detector = self.config.saturation_detector
        if self.flow_control is None and priority < 0 and detector.is_saturated(candidates, now):
            raise EppError(429, "system saturated, sheddable request dropped", REJECTED_SATURATED)

        scheduling_request = SchedulingRequest(
            request_id=request.request_id,
            target_model=target_model,
            prompt_text=parsed.prompt_text,
            headers=request.headers,
            # As in llm-d, an adapter is requested by its served name, the (target) model: the
            # protocol layer has no other adapter field to fill.
            lora_adapter=parsed.lora_adapter or target_model or None,
            priority=priority,
            now=now,
            body=request.body,
        )
        if prepared:
            scheduling_request.state.update(prepared)
        salt = request.body.get("cache_salt")
        if isinstance(salt, str):
            scheduling_request.state["cache_salt"] = salt
        healthy = self._with_usable_metrics(candidates, now)
        for producer in self.config.producers:
            producer.produce(scheduling_request, healthy)
        result = self.config.scheduler.schedule(scheduling_request, healthy)
        if (result.primary is None or not result.primary.targets) and len(healthy) != len(candidates):
            # Fail open per decision, not only when no endpoint at all is fresh: fresh prefill
            # pods must not hide stale but working decode pods (and leave the request nowhere).
            result = self.config.scheduler.schedule(scheduling_request, candidates)
        primary = result.primary
        if primary is None or not primary.targets:
            # llm-d: the scheduler finding nothing is ResourceExhausted → 429.
            raise EppError(429, "no endpoint passed the scheduling filters")
        for hook in self.config.pre_request:
            if defer is not None and hook.deferrable:
                defer(hook.pre_request, scheduling_request, result)
            else:
                hook.pre_request(scheduling_request, result)
        self._record(request, result, scheduling_request.state)
        body = None
        if target_model != parsed.model:
            request.body["model"] = target_model
            body = json.dumps(request.body, ensure_ascii=False, separators=(",", ":")).encode()
        endpoints = result.destinations or tuple(target.hostport for target in primary.targets)
        return Decision(
            endpoints=endpoints,
            headers=dict(result.headers),
            body=body,
            target_model=target_model if body is not None else None,
            scores=dict(zip(endpoints, primary.scores, strict=True)),
        )

    def _target_model(self, request: InferenceRequest) -> str:
        """llm-d's precedence: the rewrite header names a target; an InferenceModelRewrite rule for
        the incoming model overrides it, choosing among its targets by weight."""
        incoming = request.parsed.model
        if request.parsed.api == "none" or not incoming:
            return incoming
        target = next((request.headers[h] for h in MODEL_REWRITE_HEADERS if request.headers.get(h)), incoming)
        targets = self.datastore.rewrite_targets(incoming)
        return choose_rewrite(targets, self._rng) if targets else target

    def _candidates(self, subset: list[str] | None) -> Sequence[Endpoint]:
        endpoints = self.datastore.endpoints()
        if subset is not None:
            # The proxy's subset hint names ip:port, but upstream matches on the IP only.
            allowed = {_ip_of(item) for item in subset}
            endpoints = tuple(e for e in endpoints if e.address in allowed)
        if not endpoints:
            raise EppError(503, "no endpoint available for this request", REJECTED_NO_ENDPOINTS)
        return endpoints

    def _with_usable_metrics(self, candidates: Sequence[Endpoint], now: float) -> Sequence[Endpoint]:
        """Drop endpoints whose scrape fails or whose metrics are stale. If that drops every
        endpoint, keep them all (fail open, as llm-d does): a metrics outage must not become a
        traffic outage while the pods themselves may be fine."""
        # Inlined Endpoint.metrics_fresh: this runs over the whole pool on every request.
        cutoff = now - self.metrics_staleness
        usable = [e for e in candidates if e.scrape_failures == 0 and e.metrics.updated_at >= cutoff]
        return usable or candidates

    def _record(self, request: InferenceRequest, result: SchedulingResult, state: dict[str, Any]) -> None:
        for profile_name, profile_result in result.results.items():
            if profile_result is not None:
                key = (profile_result.targets[0].hostport, profile_name)
                counter = self._pick_counters.get(key)
                if counter is None:  # labels() validates and locks; do that once per series
                    counter = self._pick_counters[key] = epp_metrics.PICKS.labels(*key)
                counter.inc()
        primary = result.primary
        assert primary is not None
        endpoint = primary.targets[0]
        previous = self._flights.pop(request.request_id, None)
        if previous is not None:  # a retried decision for the same request: release the old hold
            self._release(previous)
        others = tuple(
            profile_result.targets[0]
            for name, profile_result in result.results.items()
            if profile_result is not None and name != result.primary_profile
        )
        endpoint.in_flight += 1
        endpoint.routed += 1
        for other in others:
            other.in_flight += 1
            other.routed += 1
        # The prompt is processed where the prefill runs: the prefill pick under P/D. (llm-d's
        # inflight-load-producer also charges the decode pick until its first byte; here the
        # decode pod's prefill-free wait shows in its pending count, not as prompt tokens.)
        charged = others[0] if others else endpoint
        (tokens,) = uncached_prompt_tokens(request.parsed.prompt_text, state, (charged.hostport,))
        endpoint.pending += 1
        charged.pending_tokens += tokens
        epp_metrics.IN_FLIGHT.inc()
        self._flights[request.request_id] = _Flight(endpoint, time.monotonic(), others, charged, tokens)

    def handle_response_headers(self, request: InferenceRequest, served: str | None, status: int) -> None:
        """If Envoy used a fallback endpoint, move the in-flight hold to the one really serving."""
        flight = self._flights.get(request.request_id)
        if flight is None or served is None or served == flight.endpoint.hostport:
            return
        actual = self.datastore.get(served)
        if actual is None:
            return
        flight.endpoint.in_flight = max(0, flight.endpoint.in_flight - 1)
        actual.in_flight += 1
        actual.routed += 1
        if flight.charged is not None:  # still waiting for its first byte: move that hold too
            flight.endpoint.pending = max(0, flight.endpoint.pending - 1)
            actual.pending += 1
            if flight.charged is flight.endpoint:
                flight.charged.pending_tokens = max(0, flight.charged.pending_tokens - flight.tokens)
                actual.pending_tokens += flight.tokens
                flight.charged = actual
        flight.endpoint = actual

    def handle_response_started(self, request: InferenceRequest) -> None:
        """The first response byte arrived: the request has left the server's queue and its
        prefill is done, so it no longer counts as pending (llm-d's StartOfStream release)."""
        flight = self._flights.get(request.request_id)
        if flight is not None and flight.charged is not None:
            self._release_pending(flight)
            if self.flow_control is not None:
                self.flow_control.notify()  # a token-counting gate may open now

    def handle_response_complete(self, request: InferenceRequest, usage: Usage | None, failed: bool) -> None:
        flight = self._flights.pop(request.request_id, None)
        if flight is None:
            log.debug("response completion for unknown or finished request %s", request.request_id)
            return
        self._release(flight)
        if self.flow_control is not None:
            self.flow_control.notify()  # capacity freed: a queued request may go

    def in_flight(self) -> int:
        return len(self._flights)

    def _release(self, flight: _Flight) -> None:
        self._release_pending(flight)
        for endpoint in (flight.endpoint, *flight.others):
            endpoint.in_flight = max(0, endpoint.in_flight - 1)
        epp_metrics.IN_FLIGHT.dec()

    @staticmethod
    def _release_pending(flight: _Flight) -> None:
        charged = flight.charged
        if charged is None:
            return
        flight.charged = None
        flight.endpoint.pending = max(0, flight.endpoint.pending - 1)
        charged.pending_tokens = max(0, charged.pending_tokens - flight.tokens)
        for other in flight.others:  # the prefill pick's work ends with the first byte
            other.in_flight = max(0, other.in_flight - 1)
        flight.others = ()

    def _endpoints_changed(self) -> None:
        live = frozenset(e.hostport for e in self.datastore.endpoints())
        epp_metrics.ENDPOINTS.set(len(live))
        for key in [key for key in self._pick_counters if key[0] not in live]:
            del self._pick_counters[key]
            with contextlib.suppress(KeyError):  # drop the departed endpoint's series
                epp_metrics.PICKS.remove(*key)
        for observer in self.config.observers:
            observer.endpoints_changed(live)
        if self.flow_control is not None:
            self.flow_control.notify()

    async def close(self) -> None:
        """Answer every queued request (503, shutting down) and stop the dispatcher."""
        if self.flow_control is not None:
            await self.flow_control.close()


def _flow_control_error(rejected: FlowControlRejected, *, pool_empty: bool) -> EppError:
    """429 = capacity exists but is contended (backpressure); 503 = no capacity at all."""
    outcome = rejected.outcome
    if rejected.shutting_down:
        return EppError(503, f"flow controller shutting down: {rejected.message}", REJECTED_SHUTTING_DOWN)
    if outcome is Outcome.REJECTED_CAPACITY:
        return EppError(429, rejected.message, REJECTED_SATURATED)
    if outcome in (Outcome.REJECTED_NO_ENDPOINTS, Outcome.EVICTED_NO_ENDPOINTS) or (
        outcome is Outcome.EVICTED_TTL and pool_empty
    ):
        return EppError(503, f"no endpoints available: {rejected.message}", REJECTED_NO_ENDPOINTS)
    if outcome is Outcome.EVICTED_TTL:
        return EppError(429, rejected.message, REJECTED_TTL_EXPIRED)
    if outcome is Outcome.EVICTED_CONTEXT_CANCELLED:
        return EppError(503, rejected.message, REJECTED_CONTEXT_CANCELLED)
    return EppError(500, f"internal flow control error: {rejected.message}")


def _ip_of(hostport: str) -> str:
    """ "10.0.0.1:8000" → "10.0.0.1"; "[fd00::1]:8000" → "fd00::1"; a bare IP stays as it is."""
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")]
    if hostport.count(":") == 1:
        return hostport.rsplit(":", 1)[0]
    return hostport


def choose_rewrite(targets: Sequence[RewriteTarget], rng: random.Random) -> str:
    """Weighted choice as llm-d makes it: no weights anywhere → uniform; otherwise by weight, so
    unweighted targets in a weighted rule are never chosen."""
    weights = [target.weight or 0 for target in targets]
    if not any(weights):
        return rng.choice(targets).model
    return rng.choices(targets, weights=weights)[0].model
