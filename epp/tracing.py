"""Optional OTLP tracing of the scheduling decision (``--tracing``; off by default).

Off, nothing here is imported by the request path and the director's ``decide`` is its plain method
(no branch, no extra call: ``python -m benchmarks.epp_decision`` measures the same code). On, the
director's ``decide`` is wrapped by :class:`DecisionTracer`: one span per decision, a child of the
gateway's trace when the request carries W3C ``traceparent``, with the model, the chosen endpoints,
the P/D prefill pick and the rejection status; and the decision's request headers carry the span's
``traceparent`` on to the model server (the P/D sidecar's legs become its children).

The SDK is configured from the standard environment: ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (the stack sets them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from epp.types import Decision, EppError, InferenceRequest

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

Decide = Callable[..., Decision]

SPAN_NAME = "llm_d.epp.schedule"
PREFILLER_HEADER = "x-prefiller-host-port"


class DecisionTracer:
    """Wraps a director's ``decide`` in a span (see the module docstring)."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import propagate, trace

        self._tracer = tracer
        self._propagate = propagate
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR

    def wrap(self, decide: Decide) -> Decide:
        # The director's decide() signature: ``prepared`` carries what a config's preparers (the
        # token-producer) put in the request state, ``admitted`` flow control's (target model,
        # priority) worked out before admission; both must reach the scheduling unchanged.
        def traced(
            request: InferenceRequest, defer: Any = None, prepared: Any = None, admitted: Any = None
        ) -> Decision:
            parent = self._propagate.extract(request.headers)
            with self._tracer.start_as_current_span(SPAN_NAME, context=parent) as span:
                # An unsampled span records nothing: skip building its attributes.
                recording = span.is_recording()
                if recording:
                    span.set_attribute("llm_d.request_id", request.request_id)
                    span.set_attribute("gen_ai.request.model", request.parsed.model)
                try:
                    decision = decide(request, defer, prepared, admitted)
                except EppError as error:
                    if recording:
                        span.set_attribute("http.response.status_code", error.status)
                        if error.reason:
                            span.set_attribute("llm_d.rejection_reason", error.reason)
                        span.set_status(self._status(self._error, str(error)))
                    raise
                if recording:
                    span.set_attribute("llm_d.endpoints", list(decision.endpoints))
                    if (prefiller := decision.headers.get(PREFILLER_HEADER)) is not None:
                        span.set_attribute("llm_d.prefill_endpoint", prefiller)
                headers = dict(decision.headers)
                self._propagate.inject(headers)  # traceparent (and tracestate) for the model server
                return dataclasses.replace(decision, headers=headers)

        return traced


def tracer_provider(service_name: str = "epp") -> Any:
    """An SDK TracerProvider exporting over OTLP/gRPC in batches (export never blocks a decision)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def decision_tracer(provider: Any) -> DecisionTracer:
    return DecisionTracer(provider.get_tracer("llm-d.epp"))
