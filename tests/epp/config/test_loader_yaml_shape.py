"""The YAML layer refuses what llm-d's (sigs.k8s.io/yaml, strict) decoding refuses, by path.

An alias bomb ("billion laughs") used to hang the EPP: PyYAML shares aliased nodes, but the
first error message that printed the value (``weight: *bomb``) expanded all of it. Non-string
keys (``1: x``) crashed the unknown-field checks with a TypeError (sorting ints among strings).
An unknown field in a scheduling profile (``plugin:`` for ``plugins:``) was silently ignored."""

from __future__ import annotations

import time

import pytest

from epp.config.loader import load_config
from epp.scheduling.errors import ConfigError

HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
SCORER = "plugins: [{type: queue-scorer}]\n"


def bomb(levels: int) -> str:
    lines = ["metadata:", "  l0: &l0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly() -> None:
    text = (
        HEADER
        + bomb(8)
        + SCORER
        + "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer, weight: *l8}]}]\n"
    )
    started = time.monotonic()
    with pytest.raises(ConfigError, match="aliases expand"):
        load_config(text)
    assert time.monotonic() - started < 2.0


def test_modest_anchor_reuse_is_accepted() -> None:
    text = (
        HEADER
        + "plugins:\n- {type: utilization-detector, parameters: &p {queueDepthThreshold: 7}}\n"
        + "- {type: utilization-detector, name: twin, parameters: *p}\n- type: queue-scorer\n"
        + "flowControl: {saturationDetector: {pluginRef: twin}}\n"
    )
    assert load_config(text).saturation_detector.name == "twin"


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(HEADER + "plugins: [{type: queue-scorer, parameters: &a {x: *a}}]\n")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("1: x\n", "top level"),
        ("plugins: [{type: queue-scorer, 3: x}]\n", r"plugins\[0\]"),
        ("plugins: [{type: queue-scorer, parameters: {3: x, a: 1}}]\n", r"plugins\[0\]\.parameters"),
        ("featureGates: [flowControl]\nflowControl: {1: 2, a: 3}\n", "flowControl"),
        ("dataLayer: {~: 2}\n", "dataLayer"),
    ],
)
def test_a_non_string_key_is_refused_by_path(body: str, where: str) -> None:
    with pytest.raises(ConfigError, match=f"{where}: key .* is not a string"):
        load_config(HEADER + body)


def test_an_unknown_field_in_a_scheduling_profile_is_refused() -> None:
    text = HEADER + SCORER + "schedulingProfiles: [{name: d, plugin: [{pluginRef: queue-scorer}]}]\n"
    with pytest.raises(ConfigError, match=r"schedulingProfiles\[0\]: unknown field\(s\) plugin"):
        load_config(text)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        # Both kept the last value silently: the first plugin list, or the first type, was lost.
        ("plugins: []\nplugins: [{type: queue-scorer}]\n", "top level: key 'plugins'"),
        ("plugins: [{type: queue-scorer, type: kv-cache-utilization-scorer}]\n", r"plugins\[0\]: key 'type'"),
        (
            SCORER
            + "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, weight: 1, weight: 2}]}]\n",
            r"schedulingProfiles\[0\]\.plugins\[0\]: key 'weight'",
        ),
    ],
)
def test_a_repeated_key_is_refused_by_path(body: str, where: str) -> None:
    """llm-d's strict decoding refuses a key set twice in one mapping ("already set in map")."""
    with pytest.raises(ConfigError, match=f"{where} appears twice"):
        load_config(HEADER + body)


def test_a_merge_key_still_overrides_without_counting_as_a_repeat() -> None:
    config = load_config(HEADER + "plugins:\n- <<: {type: queue-scorer, name: x}\n  name: q\n")
    assert "q" in config.plugins and "x" not in config.plugins


@pytest.mark.parametrize("levels", [150, 2000])
def test_deep_nesting_is_refused_not_a_recursion_error(levels: int) -> None:
    """A few hundred ``[`` raised RecursionError from PyYAML's recursive composer: a traceback."""
    text = HEADER + "plugins:\n- type: queue-scorer\n  parameters: " + "[" * levels + "]" * levels + "\n"
    with pytest.raises(ConfigError, match=r"nests deeper than 100 levels \(line 5"):
        load_config(text)


def test_empty_documents_around_the_config_are_skipped() -> None:
    """A leading or trailing ``---`` (as manifests often end) is an empty document, not a second
    config: it used to be refused ("expected a single document in the stream")."""
    body = HEADER + SCORER
    for text in ("---\n" + body, body + "---\n", "---\n" + body + "---\n...\n"):
        assert "queue-scorer" in load_config(text).plugins


def test_a_second_document_with_content_is_refused_by_line() -> None:
    with pytest.raises(ConfigError, match=r"holds 2 YAML documents \(the second at line 5\)"):
        load_config(HEADER + SCORER + "---\n" + HEADER)
