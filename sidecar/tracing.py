"""Optional OTLP tracing of the P/D sidecar's two legs (``--tracing``; off by default).

On, every disaggregated request gets a span (a child of the EPP's decision span when the request
carries its ``traceparent``) with one child per leg: the remote prefill and the local decode (the
decode span covers the whole streamed answer; a fallback to local prefill is recorded on it). Each leg
forwards ``traceparent`` so a traced vLLM continues the trace. Off, the SDK is never imported.

The SDK is configured from the standard environment (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``).
"""

from __future__ import annotations

from typing import Any


def tracer_provider(service_name: str = "pd-sidecar") -> Any:
    """An SDK TracerProvider exporting over OTLP/gRPC in batches (never on the request path)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
