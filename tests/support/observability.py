"""A P/D stack config with every monitoring object on (all four scaling signals on both pools), shared
by the real-Prometheus end-to-end test and the real-vLLM metric-name check."""

from __future__ import annotations

import functools
from typing import Any

from render.engine import RenderResult
from tests.support.promql_names import expressions, metric_names
from tests.support.stacks import kind_config, render_config

MODEL = "obs-tiny"
ALL_SIGNALS = [
    {"signal": "queue", "target": 2},
    {"signal": "running", "target": 8},
    {"signal": "kvCache", "target": 0.8},
    {"signal": "requestRate", "target": 5},
]


def monitored_config(model: str = MODEL) -> dict[str, Any]:
    return kind_config(
        name="t",
        model={"name": model, "uri": "hf://org/obs-tiny", "engine": "simulator"},
        # The local gateway is a real Envoy, so the stack under test uses the one data plane whose
        # proxies are Envoy (kgateway 2.1's, deprecated): its PodMonitor and dashboard panels then
        # name series the live Envoy serves. agentgateway's and Istio's are checked by render tests.
        gateway={"provider": "kgateway", "kgatewayDataPlane": "envoy"},
        monitoring={
            "scrapeInterval": "1s",
            # Low enough that a third of the scrapes failing crosses it within seconds even after
            # minutes of clean scrapes in the 5m window (the e2e test forces it that way).
            "alerts": {"forDuration": "2s", "queuePerReplica": 4, "scrapeErrorRatio": 0.02},
            "ttftSlo": {"thresholdSeconds": 0.25},
        },
        autoscaling={
            "enabled": True,
            "prefill": {"triggers": ALL_SIGNALS},
            "decode": {"triggers": ALL_SIGNALS},
        },
    )


@functools.cache
def rendered(model: str = MODEL) -> RenderResult:
    return render_config(monitored_config(model))


def vllm_names_used() -> set[str]:
    """Every ``vllm:`` series a dashboard, rule or scaler of the stack reads."""
    names = {name for e in expressions(rendered().manifests()) for name in metric_names(e.expr)}
    return {name for name in names if name.startswith("vllm:")}
