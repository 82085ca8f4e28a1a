"""Client header values the EPP reads (objective, fairness id, SLO, model rewrite, debug, request id)
through the whole stream with a real Director whose config reads each of them: whatever a client
sends there, the answer is a routing decision or a 4xx, never a 500. The body fuzz beside this
(test_hostile_bodies.py) runs with plain headers and the default config, which reads none of them."""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics, RewriteTarget
from epp.director import SchedulingDirector
from epp.metrics import ServerMetrics
from epp.server.stream import ExtProcStream, StreamSettings
from tests.support.epp import spec
from tests.support.extproc import Collector, body_msg, feed, request_headers

# Flow control ordered by the SLO header, and the scorers that read the (rewritten) model name.
FLOW_CONTROL_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {type: queue-scorer}
- {type: lora-affinity-scorer}
- {type: slo-deadline-ordering-policy}
flowControl: {defaultPriorityBand: {orderingPolicyRef: slo-deadline-ordering-policy}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: lora-affinity-scorer}]
"""

HEADERS = (
    "x-llm-d-inference-objective",
    "x-gateway-inference-objective",
    "x-llm-d-inference-fairness-id",
    "x-gateway-inference-fairness-id",
    "x-llm-d-slo-ttft-ms",
    "x-slo-ttft-ms",
    "x-llm-d-model-name-rewrite",
    "x-gateway-model-name-rewrite",
    "x-llm-d-debug-endpoint",
    "x-request-id",
)
# Numbers in every spelling a permissive parser takes and a strict one refuses, and text.
_numberish = st.sampled_from(
    [
        "0",
        "-1",
        "250",
        "9" * 400,
        str(2**63),
        str(-(2**63) - 1),
        "1_000",
        "\u0661",
        " 7 ",
        "1e9",
        "nan",
        "inf",
    ]
)
_value = _numberish | st.sampled_from(["premium", "sheddable", "m", "true", "TRUE"]) | st.text(max_size=12)


async def _answer(director: SchedulingDirector, headers: dict[str, str]) -> tuple[int, str]:
    out = Collector()
    stream = ExtProcStream(director, StreamSettings(), ServerMetrics(CollectorRegistry()))
    raw = json.dumps({"model": "m", "prompt": "hello"}).encode()
    await stream.run(feed([request_headers("/v1/completions", headers), body_msg(raw)]), out)
    first = out.sent[0]
    if first.HasField("immediate_response"):
        answer = first.immediate_response
        return answer.status.code, json.loads(answer.body)["error"]["message"]
    return 200, ""


def _director() -> SchedulingDirector:
    datastore = Datastore()
    director = SchedulingDirector(datastore, load_config(FLOW_CONTROL_CONFIG))
    datastore.replace_endpoints(spec(f"pod-{i}", i + 1) for i in range(2))
    for endpoint in datastore.endpoints():
        endpoint.metrics = EndpointMetrics(updated_at=time.monotonic())
    datastore.set_objectives({"premium": 10, "sheddable": -1})
    datastore.set_model_rewrites({"m": [RewriteTarget("m-v2")]})
    return director


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(HEADERS), _value, max_size=4))
async def test_any_header_values_get_a_routing_answer_or_a_4xx(headers: dict[str, str]) -> None:
    director = _director()
    try:
        status, message = await _answer(director, headers)
    finally:
        await director.close()
    assert status == 200 or 400 <= status < 500, (status, message, headers)
