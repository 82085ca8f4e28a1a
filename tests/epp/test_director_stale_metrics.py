"""Stale metrics must not turn into an outage of one role of a P/D pool.

The director prefers endpoints with fresh metrics and fails open when none are fresh. When only
the decode pods are stale (their scrapes time out under load, say) while the prefill pods are
fine, "some endpoints are fresh" is true, yet none of them can decode: the decision must fall
back to the stale decode pods rather than refuse every request."""

from __future__ import annotations

import time

from epp.config.loader import load_config
from epp.config.samples import pd_config
from epp.datastore import Datastore, EndpointMetrics
from epp.director import SchedulingDirector
from tests.support.epp import inference_request, spec

ROLE = "llm-d.ai/role"


def test_stale_decode_pods_still_serve_when_only_prefill_metrics_are_fresh() -> None:
    datastore = Datastore()
    datastore.replace_endpoints(
        [spec("prefill-0", 1, labels={ROLE: "prefill"}), spec("decode-0", 2, labels={ROLE: "decode"})]
    )
    prefill, decode = datastore.endpoints()
    prefill.metrics = EndpointMetrics(updated_at=time.monotonic())
    decode.metrics = EndpointMetrics(updated_at=time.monotonic() - 60)  # stale
    director = SchedulingDirector(datastore, load_config(pd_config()), metrics_staleness=2.0)

    decision = director.decide(inference_request("x" * 4000))

    assert decision.endpoints == (decode.hostport,)
