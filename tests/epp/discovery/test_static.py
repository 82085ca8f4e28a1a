"""The --endpoints-file contract: parsing, validation errors, and reload on mtime change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from epp.datastore import Datastore, RewriteTarget
from epp.discovery.static import StaticDiscovery, parse_endpoints_file
from epp.scheduling.errors import ConfigError

CONTRACT_EXAMPLE = """
endpoints:
- name: decode-0            # pod name
  address: 127.0.0.1
  port: 8200
  metricsPort: 8201
  labels: {llm-d.ai/role: decode}
- name: prefill-0
  address: 127.0.0.2
  port: 8000
objectives:
- {name: batch, priority: -1}
modelRewrites:
- model: llama
  targets: [{modelRewrite: llama-v2, weight: 90}, {modelRewrite: llama-v3}]
"""


def test_contract_example_parses() -> None:
    parsed = parse_endpoints_file(CONTRACT_EXAMPLE, "f")
    specs, objectives = parsed.endpoints, parsed.objectives
    assert parsed.model_rewrites == {
        "llama": [RewriteTarget("llama-v2", 90), RewriteTarget("llama-v3", None)]
    }
    assert [(s.name, s.hostport, s.metrics_port, dict(s.labels)) for s in specs] == [
        ("decode-0", "127.0.0.1:8200", 8201, {"llm-d.ai/role": "decode"}),
        ("prefill-0", "127.0.0.2:8000", 8000, {}),
    ]
    assert objectives == {"batch": -1}


def test_json_is_accepted() -> None:
    text = json.dumps({"endpoints": [{"name": "a", "address": "::1", "port": 1}]})
    (only,) = parse_endpoints_file(text, "f").endpoints
    assert (only.address, only.hostport) == ("::1", "[::1]:1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("endpoints: {}", "'endpoints' must be a list"),
        ("endpoints: [{name: a, address: localhost, port: 1}]", "'address' must be an IP address"),
        ("endpoints: [{name: a, address: 10.0.0.1, port: 0}]", "'port' must be an integer 1..65535"),
        ("endpoints: [{name: a, address: 10.0.0.1, port: 1, metricsPort: x}]", "'metricsPort'"),
        ("endpoints: [{address: 10.0.0.1, port: 1}]", "'name' is required"),
        ("endpoints: [{name: a, address: 10.0.0.1, port: 1, weight: 3}]", "unknown field(s) weight"),
        ("endpoints: [{name: a, address: 10.0.0.1, port: 1, labels: {a: 1}}]", "'labels' must map strings"),
        (
            "endpoints: [{name: a, address: 10.0.0.1, port: 1}, {name: b, address: 10.0.0.1, port: 1}]",
            "share 10.0.0.1:1",
        ),
        ("endpoints: []\nobjectives: [{name: x, priority: high}]", "'priority' must be an integer"),
        ("pods: []", "unknown top-level field(s) pods"),
        ("endpoints: []\nmodelRewrites: [{model: a, targets: []}]", "'targets' must be a non-empty list"),
        ("endpoints: []\nmodelRewrites: [{model: a, targets: [{modelRewrite: b, weight: 0}]}]", "'weight'"),
        ("endpoints: []\nmodelRewrites: [{targets: [{modelRewrite: b}]}]", "needs a 'model'"),
        ("endpoints: [", "not valid YAML/JSON"),
    ],
)
def test_bad_files_are_rejected_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoints_file(text, "endpoints file x.yaml")
    assert message in str(caught.value) and "x.yaml" in str(caught.value)


def _write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


async def test_reload_on_mtime_change_keeps_state_and_survives_bad_edits(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    _write(path, CONTRACT_EXAMPLE, 1_000_000_000)
    datastore = Datastore()
    discovery = StaticDiscovery(path, datastore)
    discovery.load()
    assert datastore.synced and len(datastore.endpoints()) == 2
    decode = datastore.get("127.0.0.1:8200")
    assert decode is not None
    decode.in_flight = 3

    assert not discovery.reload_if_changed()  # same mtime: nothing re-read

    _write(
        path,
        CONTRACT_EXAMPLE.replace("- name: prefill-0\n  address: 127.0.0.2\n  port: 8000\n", ""),
        2_000_000_000,
    )
    assert discovery.reload_if_changed()
    assert [e.name for e in datastore.endpoints()] == ["decode-0"]
    assert datastore.get("127.0.0.1:8200") is decode and decode.in_flight == 3  # survivors keep state

    _write(path, "endpoints: [{name: broken", 3_000_000_000)
    assert not discovery.reload_if_changed()
    assert [e.name for e in datastore.endpoints()] == ["decode-0"]  # the bad edit changed nothing

    path.unlink()
    assert not discovery.reload_if_changed()
    assert len(datastore.endpoints()) == 1


def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="endpoints file"):
        StaticDiscovery(tmp_path / "nope.yaml", Datastore()).load()
