"""EPP tracing (``--tracing``): one span per decision, joined to the caller's trace, its context passed
on to the model server; off, ``decide`` is the director's plain method."""

from __future__ import annotations

import dataclasses
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from epp.cli import parse_args
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics
from epp.director import SchedulingDirector
from epp.tracing import SPAN_NAME, decision_tracer
from epp.types import EppError
from tests.support.epp import inference_request, spec
from tests.support.epp_configs import HEADER, PD_SAMPLE

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def director(
    exporter: InMemorySpanExporter | None, config_text: str = PD_SAMPLE
) -> tuple[SchedulingDirector, Datastore]:
    wrap = None
    if exporter is not None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        wrap = decision_tracer(provider).wrap
    datastore = Datastore()
    picker = SchedulingDirector(
        datastore, load_config(config_text), served_models=frozenset({"m"}), wrap_decide=wrap
    )
    roles = [{"llm-d.ai/role": "prefill"}, {"llm-d.ai/role": "decode"}]
    datastore.replace_endpoints(spec(f"pod-{i}", i + 1, labels=roles[i]) for i in range(2))
    for endpoint in datastore.endpoints():
        endpoint.metrics = EndpointMetrics(updated_at=time.monotonic())
    return picker, datastore


def test_a_decision_is_a_child_span_of_the_callers_trace(exporter: InMemorySpanExporter) -> None:
    picker, datastore = director(exporter)
    request = dataclasses.replace(
        inference_request("x" * 2048, request_id="r-1"), headers={"traceparent": CALLER}
    )
    decision = picker.decide(request)
    (span,) = exporter.get_finished_spans()
    assert span.name == SPAN_NAME
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    prefill = datastore.endpoints()[0].hostport
    assert span.attributes is not None
    assert span.attributes["llm_d.request_id"] == "r-1"
    assert span.attributes["gen_ai.request.model"] == "m"
    assert span.attributes["llm_d.prefill_endpoint"] == prefill
    assert list(span.attributes["llm_d.endpoints"]) == list(decision.endpoints)
    # The model server (the P/D sidecar) continues the trace under the decision's span.
    assert decision.headers["x-prefiller-host-port"] == prefill
    assert decision.headers["traceparent"] == f"00-{CALLER_TRACE}-{format(span.context.span_id, '016x')}-01"


def test_a_rejection_is_an_error_span(exporter: InMemorySpanExporter) -> None:
    picker, _ = director(exporter)
    with pytest.raises(EppError):
        picker.decide(inference_request(model="other"))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 404


PRECISE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: token-producer, parameters: {simulator: {}}}
- type: precise-prefix-cache-producer
  parameters: {tokenProcessorConfig: {blockSizeTokens: 4}}
- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}}
"""


async def test_a_traced_decision_still_gets_the_prepared_tokens(exporter: InMemorySpanExporter) -> None:
    # A config with preparers (the token-producer) has decide() called with what they prepared:
    # the tracing wrapper passes it through, so precise routing follows the cache with tracing on.
    picker, datastore = director(exporter, PRECISE)
    producer = picker.config.plugins["precise-prefix-cache-producer"]
    holder = datastore.endpoints()[1]
    request = inference_request("abcd" * 40)  # 40 simulator tokens, 10 blocks of 4
    tokens = (await picker.prepare(request))["token-producer"].token_ids
    producer.index.store(holder.hostport, producer.hasher.block_keys(tokens))  # type: ignore[attr-defined]
    decision = await picker.handle_request(request)
    assert decision.endpoints[0] == holder.hostport
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert list(span.attributes["llm_d.endpoints"]) == [holder.hostport]


def test_without_tracing_decide_is_the_plain_method() -> None:
    picker, _ = director(None)
    assert picker.decide.__func__ is SchedulingDirector.decide  # type: ignore[attr-defined]
    assert "traceparent" not in picker.decide(inference_request("x" * 2048)).headers


def test_tracing_flag_is_off_by_default() -> None:
    base = ["--endpoints-file", __file__, "--secure-serving=false"]
    assert parse_args(base)[0].tracing is False
    assert parse_args([*base, "--tracing"])[0].tracing is True


async def test_with_flow_control_an_admitted_request_is_traced(exporter: InMemorySpanExporter) -> None:
    # Flow control hands decide() the (model, priority) it worked out before admission; the tracing
    # wrapper must pass that on rather than fail every admitted request.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    datastore = Datastore()
    picker = SchedulingDirector(
        datastore,
        load_config(HEADER + "featureGates: [flowControl]\nplugins: [{type: queue-scorer}]\n"),
        wrap_decide=decision_tracer(provider).wrap,
    )
    datastore.replace_endpoints([spec("pod-0", 1)])
    for endpoint in datastore.endpoints():
        endpoint.metrics = EndpointMetrics(updated_at=time.monotonic())
    request = dataclasses.replace(inference_request(request_id="r-fc"), headers={"traceparent": CALLER})
    decision = await picker.handle_request(request)
    await picker.close()
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["llm_d.request_id"] == "r-fc"
    assert decision.headers["traceparent"].startswith(f"00-{CALLER_TRACE}-")
