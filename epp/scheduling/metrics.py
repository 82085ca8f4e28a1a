"""The EPP's own Prometheus metrics for scheduling and scraping (prometheus_client default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISION_SECONDS = Histogram(
    "epp_scheduler_decision_duration_seconds",
    "Time from a parsed request to a scheduling decision (admission, scheduling, pre-request hooks).",
    buckets=(25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.1),
)
PICKS = Counter(
    "epp_scheduler_picks_total",
    "Requests scheduled to an endpoint, by profile (e.g. decode / prefill).",
    ["endpoint", "profile"],
)
REJECTIONS = Counter(
    "epp_scheduler_rejections_total",
    "Requests the director refused, by HTTP status and drop reason.",
    ["status", "reason"],
)
IN_FLIGHT = Gauge("epp_scheduler_in_flight_requests", "Requests scheduled and not yet completed.")
POOL_SATURATION = Gauge(
    "epp_pool_saturation", "Pool saturation from the saturation detector (>= 1 saturated)."
)
SCRAPE_SECONDS = Histogram(
    "epp_metrics_scrape_duration_seconds",
    "Wall time of one model-server /metrics scrape (fetch and parse).",
    buckets=(1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0),
)
SCRAPE_ERRORS = Counter(
    "epp_metrics_scrape_errors_total", "Failed model-server /metrics scrapes.", ["endpoint"]
)
ENDPOINTS = Gauge("epp_pool_endpoints", "Endpoints currently in the pool.")
