"""What the EPP and the P/D sidecar containers get when ``llmd:tracing`` is on: ``--tracing`` and the
OpenTelemetry SDK's standard environment (exporter endpoint, service name, parent-based ratio
sampler), as upstream's EPP reads it (llm-d-router: ``--tracing`` with ``OTEL_*`` variables)."""

from __future__ import annotations

from typing import Any

from pulumi_llmd.config.observability import TracingConfig


def tracing_args(tracing: TracingConfig) -> list[str]:
    return ["--tracing=true"] if tracing.enabled else []


def tracing_env(tracing: TracingConfig, service: str) -> list[dict[str, Any]]:
    if not tracing.enabled:
        return []
    return [
        {"name": "OTEL_SERVICE_NAME", "value": service},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": tracing.endpoint},
        {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
        {"name": "OTEL_TRACES_SAMPLER_ARG", "value": f"{tracing.sample_ratio:g}"},
    ]
