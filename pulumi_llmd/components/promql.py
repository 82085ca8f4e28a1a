"""The PromQL every monitoring object of a stack shares: target labels, selectors, recording rules.

The PodMonitors (:mod:`.monitoring`) put five labels on every series they scrape, so alerts,
dashboards and autoscalers select a stack's series the same way whatever Prometheus they land in:

- ``namespace`` (the Prometheus Operator's own),
- ``llmd_stack``: the stack's instance name,
- ``llmd_component``: ``epp``, ``model-server``, ``sidecar``, ``gateway`` or ``body-router``,
- ``llmd_role``: ``prefill`` / ``decode`` (model servers and sidecars, from the ``llm-d.ai/role`` label),
- ``llmd_model``: the ``llm-d.ai/model`` label (model servers and sidecars).

The metric names are those the bundled EPP (``epp/metrics.py``), vLLM 0.32 (and the simulator, which
mirrors it) and the P/D sidecar (``sidecar/proxy.py``) export; tests read every name used here from
their live ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pulumi_llmd.components.naming import Role

STACK_LABEL = "llmd_stack"
COMPONENT_LABEL = "llmd_component"
ROLE_LABEL = "llmd_role"
MODEL_LABEL = "llmd_model"
# What the recording rules keep: one series per pool (a stack's role of one model).
POOL_LABELS = ("namespace", STACK_LABEL, MODEL_LABEL, ROLE_LABEL)


class Component:
    EPP = "epp"
    MODEL_SERVER = "model-server"
    SIDECAR = "sidecar"
    GATEWAY = "gateway"
    BODY_ROUTER = "body-router"


@dataclass(frozen=True)
class Scope:
    """Which stack's series a query reads."""

    namespace: str
    stack: str

    def select(self, component: str | None = None, **labels: str) -> str:
        """A label-matcher list (without braces' contents escaped beyond PromQL's needs)."""
        matchers = {"namespace": self.namespace, STACK_LABEL: self.stack}
        if component is not None:
            matchers[COMPONENT_LABEL] = component
        matchers.update(labels)
        return ",".join(f'{key}="{value}"' for key, value in matchers.items())

    def pool(self, role: Role) -> str:
        return self.select(Component.MODEL_SERVER, **{ROLE_LABEL: str(role)})


def by(*labels: str) -> str:
    return f"by ({', '.join(labels)})"


POOL_BY = by(*POOL_LABELS)


def le_matcher(threshold: float) -> str:
    """The bucket matcher for ``threshold``: prometheus_client writes ``le="1.0"``, Prometheus 3
    normalises to the same and older clients write ``le="1"``; match both spellings."""
    canonical = repr(float(threshold))  # "1.0", "0.0005", "2.5"
    short = f"{threshold:g}"
    spellings = sorted({canonical, short})
    return 'le=~"' + "|".join(s.replace(".", "\\\\.") for s in spellings) + '"'


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str


def recording_rules(scope: Scope, *, sidecar_metrics: bool, ttft_threshold: float) -> list[RecordingRule]:
    """Per-pool sums the alerts and dashboards read, the TTFT error ratios of the burn-rate alerts and,
    when P/D decode pods run this project's sidecar (``sidecar_metrics``), its fallback ratio."""
    servers = scope.select(Component.MODEL_SERVER)
    rules = [
        RecordingRule(
            "llmd:vllm_requests_waiting:sum", f"sum {POOL_BY} (vllm:num_requests_waiting{{{servers}}})"
        ),
        RecordingRule(
            "llmd:vllm_requests_running:sum", f"sum {POOL_BY} (vllm:num_requests_running{{{servers}}})"
        ),
        RecordingRule(
            "llmd:vllm_kv_cache_usage:avg", f"avg {POOL_BY} (vllm:kv_cache_usage_perc{{{servers}}})"
        ),
        # Pods whose metrics Prometheus reads right now: the denominator of per-replica values.
        RecordingRule("llmd:vllm_pods:count", f"count {POOL_BY} (vllm:num_requests_waiting{{{servers}}})"),
        RecordingRule(
            "llmd:vllm_prefix_cache_hit:ratio_rate5m",
            f"sum {POOL_BY} (rate(vllm:prefix_cache_hits_total{{{servers}}}[5m]))"
            f" / sum {POOL_BY} (rate(vllm:prefix_cache_queries_total{{{servers}}}[5m]))",
        ),
        RecordingRule(
            "llmd:epp_picks:rate1m",
            f"sum {by('namespace', STACK_LABEL, 'profile')} "
            f"(rate(epp_scheduler_picks_total{{{scope.select(Component.EPP)}}}[1m]))",
        ),
    ]
    epp = scope.select(Component.EPP)
    good = le_matcher(ttft_threshold)
    for window in BURN_WINDOWS:
        rules.append(
            RecordingRule(
                f"llmd:epp_ttft_slow:ratio_rate{window}",
                f"1 - (sum {by('namespace', STACK_LABEL)} "
                f"(rate(epp_time_to_first_token_seconds_bucket{{{epp},{good}}}[{window}]))"
                f" / sum {by('namespace', STACK_LABEL)} "
                f"(rate(epp_time_to_first_token_seconds_count{{{epp}}}[{window}])))",
            )
        )
    if sidecar_metrics:
        sidecars = scope.select(Component.SIDECAR)
        rules.append(
            RecordingRule(
                "llmd:sidecar_prefill_fallbacks:ratio_rate5m",
                f"sum {POOL_BY} (rate(llmd_sidecar_prefill_fallbacks_total{{{sidecars}}}[5m]))"
                f" / sum {POOL_BY} "
                f'(rate(llmd_sidecar_requests_total{{{sidecars},mode="disaggregated"}}[5m]))',
            )
        )
    return rules


# Multi-window, multi-burn-rate alerting (Google SRE workbook, "Alerting on SLOs", table 5-8): a fast
# burn pages when both the long and the short window burn the error budget 14.4x too fast (2 % of a
# 30-day budget in an hour); a slow burn (6x over 6 h, 30 min short window) opens a ticket.
BURN_WINDOWS = ("5m", "30m", "1h", "6h")
BURN_RATES = (("page", "1h", "5m", 14.4), ("ticket", "6h", "30m", 6.0))


def picks_selector(scope: Scope, role: Role, *, disaggregated: bool) -> str:
    """The EPP's picks that land on ``role``: the scheduling profile of that name with P/D (the
    generated config's ``prefill``/``decode`` profiles), every profile without."""
    if disaggregated:
        return scope.select(Component.EPP, profile=str(role))
    return scope.select(Component.EPP)
