"""One watched object with a bad spec is skipped and reported (a warning naming it and
``epp_discovery_invalid_objects_total``); the good ones still apply.

Before: a non-numeric rewrite weight raised ValueError out of the watch callback, which the
list/watch loop took for a connection failure ("watching ... failed", relist, back off) on every
attempt, so no rewrite at all applied; a non-mapping rule raised AttributeError, which ended the
watch task silently. Out-of-range values (a priority past int32, a weight of 0 or 10^12, a target
port of 0 or 70000) were applied as given, where llm-d's CRD schema and int32 decoding refuse them."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from epp.datastore import Datastore, RewriteTarget
from epp.discovery.kubernetes import LEGACY_GROUP, POOL_GROUP_V1, InvalidSpec, KubernetesDiscovery, parse_pool

GROUP = "llm-d.ai"


def invalid_count(kind: str) -> float:
    return REGISTRY.get_sample_value("epp_discovery_invalid_objects_total", {"kind": kind}) or 0.0


def obj(name: str, spec: Any, created: str = "2026-01-01T00:00:00Z") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(name=name, creationTimestamp=created), spec=spec)


def discovery(datastore: Datastore) -> KubernetesDiscovery:
    return KubernetesDiscovery(datastore, pool_name="p", client=object())  # type: ignore[arg-type]


def rewrite_spec(targets: Any, model: str = "m") -> dict[str, Any]:
    return {
        "poolRef": {"name": "p"},
        "rules": [{"matches": [{"model": {"value": model}}], "targets": targets}],
    }


@pytest.mark.parametrize(
    "targets",
    [
        [{"modelRewrite": "x", "weight": "heavy"}],
        [{"modelRewrite": "x", "weight": 0}],
        [{"modelRewrite": "x", "weight": -5}],
        [{"modelRewrite": "x", "weight": 10**12}],
        [{"modelRewrite": "x", "weight": True}],
        ["x"],
        "x",
    ],
)
def test_a_bad_rewrite_is_reported_and_the_good_ones_apply(
    targets: Any, caplog: pytest.LogCaptureFixture
) -> None:
    datastore = Datastore()
    watcher = discovery(datastore)
    before = invalid_count("InferenceModelRewrite")
    watcher._rewrite_snapshot(
        GROUP,
        [
            obj("bad", rewrite_spec(targets, model="m")),
            obj("good", rewrite_spec([{"modelRewrite": "y"}], "n")),
        ],
    )
    assert datastore.model_rewrites() == {"n": (RewriteTarget("y", None),)}
    assert invalid_count("InferenceModelRewrite") == before + 1
    assert "InferenceModelRewrite bad" in caplog.text


def test_a_rewrite_rule_that_is_not_a_mapping_is_reported() -> None:
    datastore = Datastore()
    watcher = discovery(datastore)
    before = invalid_count("InferenceModelRewrite")
    watcher._rewrite_event(GROUP, "ADDED", obj("bad", {"poolRef": {"name": "p"}, "rules": ["oops"]}))
    watcher._rewrite_event(GROUP, "ADDED", obj("good", rewrite_spec([{"modelRewrite": "y", "weight": 3}])))
    assert datastore.model_rewrites() == {"m": (RewriteTarget("y", 3),)}
    assert invalid_count("InferenceModelRewrite") == before + 1


@pytest.mark.parametrize("priority", [2**31, -(2**31) - 1, "high", True, 1.5])
def test_a_bad_objective_priority_is_reported_and_the_good_ones_apply(
    priority: Any, caplog: pytest.LogCaptureFixture
) -> None:
    datastore = Datastore()
    watcher = discovery(datastore)
    before = invalid_count("InferenceObjective")
    with caplog.at_level(logging.WARNING):
        watcher._objective_snapshot(
            LEGACY_GROUP,
            [
                obj("bad", {"poolRef": {"name": "p"}, "priority": priority}),
                obj("good", {"poolRef": {"name": "p"}, "priority": 2**31 - 1}),
            ],
        )
    assert datastore.objectives() == {"good": 2**31 - 1}
    assert invalid_count("InferenceObjective") == before + 1
    assert "InferenceObjective bad" in caplog.text and "priority" in caplog.text


@pytest.mark.parametrize(
    "spec",
    [
        {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 0}]},
        {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 70000}]},
        {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": "http"}]},
        {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": []},
        {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": ["8000"]},
        {"selector": {"matchLabels": ["a"]}, "targetPorts": [{"number": 8000}]},
        {"selector": "a=b", "targetPorts": [{"number": 8000}]},
    ],
)
def test_parse_pool_refuses_bad_ports_and_selectors_by_field(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec, match=r"selector|targetPorts"):
        parse_pool(spec, POOL_GROUP_V1)


async def test_a_bad_pool_update_is_reported_and_the_last_good_pool_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    datastore = Datastore()
    watcher = discovery(datastore)
    good = {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 8000}]}
    watcher._pod_task = asyncio.create_task(asyncio.sleep(3600))  # stands in for the pod watch
    watcher.pool = parse_pool(good, POOL_GROUP_V1)
    before = invalid_count("InferencePool")
    watcher._pool_event("MODIFIED", obj("p", {**good, "targetPorts": [{"number": 70000}]}))
    assert watcher.pool == parse_pool(good, POOL_GROUP_V1)
    assert watcher._pod_task is not None and not watcher._pod_task.cancelled()
    assert invalid_count("InferencePool") == before + 1
    assert "InferencePool p" in caplog.text and "targetPorts[0].number" in caplog.text
    watcher._pod_task.cancel()
