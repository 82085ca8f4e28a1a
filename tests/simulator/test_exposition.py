"""The simulator's own Prometheus text writer against prometheus_client's, byte for byte."""

from __future__ import annotations

import random
import time

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.exposition import Registry
from simulator.params import SimParams
from simulator.vllm_metrics import SimMetrics

LABELS = ("engine", "model_name")
BUCKETS = (0.001, 0.01, 0.1, 1.0, 2.5, 10.0)


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # ``_created`` samples carry the creation time; freeze it so the two writers agree exactly.
    monkeypatch.setattr(time, "time", lambda: 1_795_565_767.8946896)


def pair() -> tuple[Registry, prometheus_client.CollectorRegistry]:
    return Registry(), prometheus_client.CollectorRegistry(auto_describe=True)


def test_gauges_counters_and_histograms_render_as_prometheus_client_does():
    ours, theirs = pair()
    g = ours.gauge("vllm:num_requests_waiting", "Requests waiting.", LABELS)
    c = ours.counter("vllm:request_success", 'Count "ok" \\ done\nrequests.', (*LABELS, "finished_reason"))
    h = ours.histogram("vllm:ttft_seconds", "TTFT.", LABELS, BUCKETS)
    info = ours.gauge("vllm:cache_config_info", "Cache config.", ("engine", "block_size", "num_gpu_blocks"))
    pg = prometheus_client.Gauge("vllm:num_requests_waiting", "Requests waiting.", LABELS, registry=theirs)
    pc = prometheus_client.Counter(
        "vllm:request_success", 'Count "ok" \\ done\nrequests.', (*LABELS, "finished_reason"), registry=theirs
    )
    ph = prometheus_client.Histogram("vllm:ttft_seconds", "TTFT.", LABELS, buckets=BUCKETS, registry=theirs)
    pinfo = prometheus_client.Gauge(
        "vllm:cache_config_info", "Cache config.", ("engine", "block_size", "num_gpu_blocks"), registry=theirs
    )
    labels = {"engine": "0", "model_name": 'odd "name"\\'}
    info.labels(engine="0", block_size="16", num_gpu_blocks="32768").set(1)
    pinfo.labels(engine="0", block_size="16", num_gpu_blocks="32768").set(1)
    rng = random.Random(7)
    for step in range(400):
        value = rng.choice([0.0, 0.001, 0.01, 10.0, 11.0, rng.random() * 3, rng.random() * 1e7])
        reason = rng.choice(["stop", "length", "abort"])
        g.labels(**labels).set(step % 9)
        pg.labels(**labels).set(step % 9)
        c.labels(**labels, finished_reason=reason).inc(value)
        pc.labels(**labels, finished_reason=reason).inc(value)
        h.labels(**labels).observe(value)
        ph.labels(**labels).observe(value)
        if step % 37 == 0:
            assert ours.render() == prometheus_client.generate_latest(theirs)
    assert ours.render() == prometheus_client.generate_latest(theirs)


def test_a_scrape_reflects_each_change_and_only_rebuilds_what_changed():
    ours = Registry()
    h = ours.histogram("vllm:itl_seconds", "ITL.", LABELS, BUCKETS).labels(engine="0", model_name="m")
    counter_family = ours.counter("vllm:prompt_tokens", "Prompt tokens.", LABELS)
    counter = counter_family.labels(engine="0", model_name="m")
    ours.render()
    counter_text = counter_family.render()
    h.observe(0.05)
    samples = {
        s.name: s.value for f in text_string_to_metric_families(ours.render().decode()) for s in f.samples
    }
    assert samples["vllm:itl_seconds_count"] == 1
    assert samples["vllm:itl_seconds_sum"] == 0.05
    assert counter_family.render() is counter_text  # untouched family: the cached string itself
    counter.inc(3)
    assert counter_family.render() is not counter_text
    assert b'vllm:prompt_tokens_total{engine="0",model_name="m"} 3.0\n' in ours.render()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: r.counter("vllm:x", "x", LABELS).labels(engine="0"), "takes labels"),
        (lambda r: r.counter("vllm:x", "x", LABELS).labels(engine="0", model_name="m").inc(-1), "only go up"),
        (lambda r: r.histogram("vllm:x", "x", LABELS, (1.0, 0.5)), "strictly increasing"),
        (lambda r: r.histogram("vllm:x", "x", (), (1.0,)).labels().observe(float("nan")), "NaN"),
        (lambda r: r.histogram("vllm:x", "x", ("le",), (1.0,)), "reserved"),
        (lambda r: (r.gauge("vllm:x", "x", LABELS), r.gauge("vllm:x", "x", LABELS)), "registered twice"),
        (lambda r: r.gauge("1vllm:x", "x", LABELS), "invalid metric name"),
        (lambda r: r.gauge("vllm:x", "x", ("model-name",)), "invalid label name"),
    ],
)
def test_misuse_is_refused_with_a_specific_error(build, message):
    with pytest.raises(ValueError, match=message):
        build(Registry())


def test_simulator_metrics_keep_vllm_names_types_and_labels():
    text = SimMetrics(SimParams(model="m")).render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["vllm:prefix_cache_hits"].type == "counter"
    assert families["vllm:num_requests_waiting"].type == "gauge"
    assert families["vllm:time_to_first_token_seconds"].type == "histogram"
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
    assert reasons == {"stop", "length", "abort", "error", "repetition"}
    config = families["vllm:cache_config_info"].samples[0].labels
    assert config["block_size"] == "16" and config["enable_prefix_caching"] == "True"
