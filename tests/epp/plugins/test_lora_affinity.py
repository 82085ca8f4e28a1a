"""LoRA affinity on real traffic: the protocol layer hands the director a parsed body whose only
adapter information is the model name, as in llm-d (the scorer matches the request's target
model against each server's running / waiting adapters)."""

from __future__ import annotations

import time

from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointMetrics
from epp.director import SchedulingDirector
from epp.types import InferenceRequest, ParsedBody
from tests.support.epp import spec

LORA_ONLY = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: lora-affinity-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: lora-affinity-scorer}]
"""


def request_for(model: str, index: int) -> InferenceRequest:
    # What epp.server's body parser produces: it does not fill ParsedBody.lora_adapter.
    return InferenceRequest(
        request_id=f"lora-{index}",
        path="/v1/completions",
        headers={},
        body={"model": model, "prompt": "hi"},
        parsed=ParsedBody(model=model, prompt_text="hi", stream=False, api="completions"),
    )


def test_requests_for_an_adapter_go_where_it_is_loaded() -> None:
    datastore = Datastore()
    datastore.replace_endpoints([spec("has-adapter", 1), spec("full", 2)])
    loaded = {"has-adapter": frozenset({"sql-lora"}), "full": frozenset({"other-lora"})}
    for endpoint in datastore.endpoints():
        endpoint.metrics = EndpointMetrics(
            running_loras=loaded[endpoint.name], max_loras=1, updated_at=time.monotonic()
        )
    director = SchedulingDirector(datastore, load_config(LORA_ONLY))
    wanted = datastore.endpoints()[0].hostport
    picks = set()
    for index in range(40):
        request = request_for("sql-lora", index)
        picks.add(director.decide(request).endpoints[0])
        director.handle_response_complete(request, None, False)
    assert picks == {wanted}
