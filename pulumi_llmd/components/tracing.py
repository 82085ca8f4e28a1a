"""What the EPP and the P/D sidecar containers get when ``llmd:tracing`` is on: ``--tracing`` and the
OpenTelemetry SDK's standard environment (exporter endpoint, service name, parent-based ratio
sampler), as upstream's EPP reads it (llm-d-router: ``--tracing`` with ``OTEL_*`` variables)."""

from __future__ import annotations

from typing import Any

from pulumi_llmd.config.observability import TracingConfig


def tracing_args(tracing: TracingConfig, *, explicit_off: bool = False) -> list[str]:
    """``--tracing=true`` when on. ``explicit_off`` also says ``--tracing=false`` when off: upstream's
    EPP traces by default (llm-d-router ``--tracing`` defaults to true, GIE's chart passes false), so
    an upstream image in the EPP's place stays quiet unless tracing is asked for."""
    if tracing.enabled:
        return ["--tracing=true"]
    return ["--tracing=false"] if explicit_off else []


def tracing_env(tracing: TracingConfig, service: str) -> list[dict[str, Any]]:
    if not tracing.enabled:
        return []
    return [
        {"name": "OTEL_SERVICE_NAME", "value": service},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": tracing.endpoint},
        {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
        {"name": "OTEL_TRACES_SAMPLER_ARG", "value": f"{tracing.sample_ratio:g}"},
    ]
