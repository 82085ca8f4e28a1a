"""The runtime factory the protocol layer uses: option validation, start, schedule, stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from epp.config.loader import DEFAULT_CONFIG
from epp.runtime import RuntimeOptions, build_runtime
from epp.scheduling.errors import ConfigError
from epp.types import EppError
from tests.support.epp import inference_request
from tests.support.fake_metrics import FakeMetricsServer, vllm_metrics_page


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RuntimeOptions(DEFAULT_CONFIG), "exactly one of --pool-name and --endpoints-file"),
        (RuntimeOptions(DEFAULT_CONFIG, pool_name="p", endpoints_file=Path("x")), "exactly one of"),
        (
            RuntimeOptions(DEFAULT_CONFIG, pool_name="p", refresh_metrics_interval=0),
            "--refresh-metrics-interval",
        ),
        (
            RuntimeOptions(DEFAULT_CONFIG, pool_name="p", metrics_staleness_threshold=0),
            "--metrics-staleness-threshold",
        ),
        (RuntimeOptions(DEFAULT_CONFIG, pool_name="p", served_models=frozenset()), "--served-models"),
        (RuntimeOptions(DEFAULT_CONFIG, pool_name="p", pool_group="example.com"), "--pool-group"),
        (
            RuntimeOptions(
                "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: nope}]\n",
                pool_name="p",
            ),
            "unknown type 'nope'",
        ),
    ],
)
def test_bad_options_fail_at_build_time(options: RuntimeOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_runtime(options)


def test_bad_endpoints_file_fails_at_build_time(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text("endpoints: [{name: a, address: not-an-ip, port: 80}]\n")
    with pytest.raises(ConfigError, match="'address' must be an IP address"):
        build_runtime(RuntimeOptions(DEFAULT_CONFIG, endpoints_file=endpoints))
    with pytest.raises(ConfigError, match="No such file"):
        build_runtime(RuntimeOptions(DEFAULT_CONFIG, endpoints_file=tmp_path / "missing.yaml"))


def test_kubernetes_mode_without_cluster_access_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="--pool-name needs Kubernetes access"):
        build_runtime(RuntimeOptions(DEFAULT_CONFIG, pool_name="pool"))


async def test_static_runtime_end_to_end(tmp_path: Path) -> None:
    busy, idle = (
        FakeMetricsServer(vllm_metrics_page(waiting=20, kv=0.9)),
        FakeMetricsServer(vllm_metrics_page()),
    )
    await busy.start()
    await idle.start()
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        "endpoints:\n"
        f"- {{name: busy, address: 127.0.0.1, port: 18000, metricsPort: {busy.port}}}\n"
        f"- {{name: idle, address: 127.0.0.1, port: 18001, metricsPort: {idle.port}}}\n"
    )
    runtime = build_runtime(
        RuntimeOptions(
            DEFAULT_CONFIG,
            endpoints_file=endpoints,
            refresh_metrics_interval=0.02,
            served_models=frozenset({"m"}),
        )
    )
    assert runtime.director.ready()  # the file was read (and validated) by build_runtime
    await runtime.start()
    try:
        assert runtime.director.ready()
        deadline = time.monotonic() + 5
        while not all(e.metrics.updated_at for e in runtime.datastore.endpoints()):
            assert time.monotonic() < deadline, "metrics never scraped"
            await asyncio.sleep(0.01)
        request = inference_request()
        decision = await runtime.director.handle_request(request)
        assert decision.endpoints == ("127.0.0.1:18001",)  # queue and KV scorers prefer the idle pod
        runtime.director.handle_response_complete(request, None, failed=False)
        with pytest.raises(EppError) as caught:
            await runtime.director.handle_request(inference_request(model="other"))
        assert caught.value.status == 404
    finally:
        await runtime.stop()
        await busy.stop()
        await idle.stop()


PRECISE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: token-producer, parameters: {simulator: {}}}
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig: {blockSizeTokens: 4}
    kvEventsConfig: {podDiscoveryConfig: {socketPort: 15557}}
- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}}
"""


async def test_plugins_with_a_lifecycle_start_with_the_runtime_and_stop_with_it(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        "endpoints:\n"
        "- {name: a, address: 127.0.0.1, port: 18000}\n"
        "- {name: b, address: 127.0.0.2, port: 18000}\n"
    )
    runtime = build_runtime(RuntimeOptions(PRECISE, endpoints_file=endpoints))
    producer = runtime.config.plugins["precise-prefix-cache-producer"]
    assert producer.subscriptions is None  # type: ignore[attr-defined]
    await runtime.start()
    try:
        # The static pool was known before start; the subscriptions follow it from the start.
        assert producer.subscriptions.endpoints() == {"127.0.0.1:18000", "127.0.0.2:18000"}  # type: ignore[attr-defined]
        subscriber = producer.subscriptions.subscriber("127.0.0.2:18000")  # type: ignore[attr-defined]
        assert subscriber.source.events_address == "tcp://127.0.0.2:15557"
    finally:
        await runtime.stop()
    assert producer.subscriptions is None  # type: ignore[attr-defined]
