"""The stack's `llmd:epp.flowControl` section: shapes, llm-d's names, and the rule that ties its TTL
to the gateway's request timeout."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pulumi_llmd.config.models import EppConfig, SaturationDetectorConfig
from pulumi_llmd.config.rules import go_seconds


def test_defaults_are_llm_d_flow_control_with_round_robin_fairness() -> None:
    flow = EppConfig().flow_control
    assert not flow.enabled  # off by default, as in llm-d
    assert flow.default_request_TTL == "60s"
    assert flow.default_priority_band.fairness_policy == "round-robin-fairness-policy"
    assert flow.default_negative_priority_band is not None
    assert flow.default_negative_priority_band.max_requests == "64"
    assert flow.saturation_detector.type == "utilization-detector"


def test_keys_are_spelled_as_llm_d_spells_them() -> None:
    epp = EppConfig.model_validate(
        {
            "flowControl": {
                "defaultRequestTTL": "30s",
                "noEndpointRequestTTL": "10m",
                "priorityBands": [{"priority": -5, "maxRequests": "1k"}],
            }
        }
    )
    assert epp.flow_control.default_request_TTL == "30s"
    assert epp.flow_control.priority_bands[0].priority == -5


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ({"defaultRequestTTL": "60"}, "defaultRequestTTL"),
        ({"defaultRequestTtl": "60s"}, "defaultRequestTtl"),
        ({"maxRequests": "lots"}, "maxRequests"),
        ({"priorityBands": [{"maxRequests": "5"}]}, "priority"),
        ({"defaultPriorityBand": {"fairnessPolicy": "lottery"}}, "fairnessPolicy"),
        (
            {"saturationDetector": {"type": "concurrency-detector", "queueDepthThreshold": 3}},
            "queueDepthThreshold",
        ),
        ({"saturationDetector": {"maxConcurrency": 3}}, "maxConcurrency"),
        ({"saturationDetector": {"concurrencyMode": "tokens"}}, "concurrencyMode"),
        (
            {"saturationDetector": {"type": "concurrency-detector", "concurrencyMode": "bytes"}},
            "concurrencyMode",
        ),
        (
            {"saturationDetector": {"type": "concurrency-detector", "maxTokenConcurrency": 0}},
            "maxTokenConcurrency",
        ),
        ({"saturationDetector": {"type": "concurrency-detector", "maxConcurrency": 0}}, "maxConcurrency"),
        ({"usageLimit": {"type": "priority-holdback-policy"}}, "is required for priority-holdback-policy"),
        ({"usageLimit": {"minCeiling": 0.5}}, "does not apply to type static-usage-limit-policy"),
        (
            {"usageLimit": {"type": "priority-holdback-policy", "minCeiling": 0.5, "threshold": 0.9}},
            "threshold",
        ),
        (
            {"usageLimit": {"type": "priority-holdback-policy", "minCeiling": 0.9, "maxCeiling": 0.5}},
            "must not exceed maxCeiling",
        ),
        ({"usageLimit": {"threshold": 0}}, "threshold"),
        ({"usageLimit": {"type": "lottery"}}, "type"),
    ],
)
def test_bad_values_name_the_key(section: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EppConfig.model_validate({"flowControl": section})
    assert where in str(caught.value)


def test_detector_parameters_use_llm_d_names() -> None:
    detector = SaturationDetectorConfig(type="concurrency-detector", max_concurrency=8, headroom=0.25)
    assert detector.parameters() == {"maxConcurrency": 8, "headroom": 0.25}
    tokens = SaturationDetectorConfig(
        type="concurrency-detector", concurrency_mode="hybrid", max_token_concurrency=2400
    )
    assert tokens.parameters() == {"concurrencyMode": "hybrid", "maxTokenConcurrency": 2400}


@pytest.mark.parametrize(("text", "seconds"), [("300s", 300.0), ("1m30s", 90.0), ("500ms", 0.5), ("0", 0.0)])
def test_go_seconds(text: str, seconds: float) -> None:
    assert go_seconds(text) == seconds


def test_the_queue_ttl_must_fit_inside_the_gateway_timeout() -> None:
    from pulumi_llmd.config import parse_stack_config
    from tests.pulumi_llmd.config.test_stack_config import kind_config, problems_of

    fits = parse_stack_config(
        kind_config(epp={"flowControl": {"enabled": True, "defaultRequestTTL": "60s"}}), has_hf_token=False
    )
    assert fits.gateway.request_timeout == "300s"
    assert problems_of(
        kind_config(
            gateway={"requestTimeout": "30s"},
            epp={"flowControl": {"enabled": True, "noEndpointRequestTTL": "0s"}},
        )
    ) == [
        "llmd:epp.flowControl.defaultRequestTTL must be shorter than gateway.requestTimeout (30s), or "
        "queued requests are cut off by the gateway (got 60s)",
        "llmd:epp.flowControl.noEndpointRequestTTL must be shorter than gateway.requestTimeout (30s), or "
        "queued requests are cut off by the gateway (got 0s)",
    ]
    # With flow control off, or a hand-written EPP config, the stack does not second-guess it.
    off = kind_config(gateway={"requestTimeout": "30s"}, epp={"flowControl": {"defaultRequestTTL": "60s"}})
    assert not parse_stack_config(off, has_hf_token=False).epp.flow_control.enabled


@pytest.mark.parametrize(
    ("flow_control", "problem"),
    [
        (
            {"usageLimit": {"minCeiling": 0.5, "domain": "rank"}},
            "llmd:epp.flowControl.usageLimit.minCeiling does not apply to type static-usage-limit-policy "
            "(nor does domain)",
        ),
        (
            {"usageLimit": {"type": "priority-holdback-policy"}},
            "llmd:epp.flowControl.usageLimit.minCeiling is required for priority-holdback-policy",
        ),
        (
            {"usageLimit": {"type": "priority-holdback-policy", "minCeiling": 0.9, "maxCeiling": 0.5}},
            "llmd:epp.flowControl.usageLimit.minCeiling (0.9) must not exceed maxCeiling (0.5)",
        ),
        (
            {"saturationDetector": {"type": "concurrency-detector", "kvCacheUtilThreshold": 0.8}},
            "llmd:epp.flowControl.saturationDetector.kvCacheUtilThreshold does not apply to type "
            "concurrency-detector",
        ),
    ],
)
def test_cross_field_problems_name_the_exact_key(flow_control: dict[str, object], problem: str) -> None:
    """A rule between two keys of a section names the key to change, not only the section."""
    from tests.pulumi_llmd.config.test_stack_config import kind_config, problems_of

    assert problems_of(kind_config(epp={"flowControl": flow_control})) == [problem]


def test_two_bands_of_one_priority_are_refused_as_the_epp_would() -> None:
    """The EPP's loader refuses duplicate priorities at startup: the stack must refuse them first, naming
    the band, rather than render a config that crash-loops every EPP pod."""
    from epp.config.loader import load_config
    from epp.scheduling.errors import ConfigError as EppConfigError
    from tests.pulumi_llmd.config.test_stack_config import kind_config, problems_of
    from tests.support.stacks import render_config

    bands = [{"priority": 1}, {"priority": 5}, {"priority": 1}]
    assert problems_of(kind_config(epp={"flowControl": {"enabled": True, "priorityBands": bands}})) == [
        "llmd:epp.flowControl.priorityBands[2].priority 1 is also priorityBands[0].priority: one band per "
        "priority"
    ]
    distinct = [{"priority": 1}, {"priority": 5}]
    result = render_config(kind_config(epp={"flowControl": {"enabled": True, "priorityBands": distinct}}))
    (config_map,) = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    text = config_map["data"]["epp-config.yaml"]
    load_config(text)  # what the EPP reads at startup
    with pytest.raises(EppConfigError, match="duplicate priority 1"):
        load_config(text.replace("priority: 5", "priority: 1"))
