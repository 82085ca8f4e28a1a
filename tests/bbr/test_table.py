"""The routing table: strict loading (each bad entry named), exact lookups, the /v1/models answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bbr.table import RoutingTable, TableError

TABLE = {
    "header": "X-Gateway-Base-Model-Name",
    "modelHeader": "X-Gateway-Model-Name",
    "models": [
        {"model": "llama", "names": ["llama", "sql-v1", "sql-v2", "sql"]},
        {"model": "org/qwen", "names": ["org/qwen"]},
    ],
}


def test_every_name_maps_to_its_base_model_and_nothing_else_does() -> None:
    table = RoutingTable.from_document(TABLE)
    assert [table.base_of(n) for n in ("llama", "sql-v2", "sql", "org/qwen")] == ["llama"] * 3 + ["org/qwen"]
    # Exact match only, as the pickers and vLLM compare model names.
    assert table.base_of("LLAMA") is None and table.base_of("sql ") is None and table.base_of("") is None


def test_the_listing_names_every_model_with_adapters_under_their_base() -> None:
    listing = json.loads(RoutingTable.from_document(TABLE).listing(created=1700000000))
    assert listing["object"] == "list"
    cards = {card["id"]: card for card in listing["data"]}
    assert list(cards) == ["llama", "sql-v1", "sql-v2", "sql", "org/qwen"]
    assert cards["llama"]["parent"] is None and cards["sql-v1"]["parent"] == "llama"
    assert {c["object"] for c in cards.values()} == {"model"} and cards["sql"]["created"] == 1700000000


def test_the_file_the_stack_renders_loads(tmp_path: Path) -> None:
    from pulumi_llmd.components.bodyrouter import routing_table
    from pulumi_llmd.components.inputs import BodyRouterArgs, RoutedModel

    args = BodyRouterArgs(
        instance="mm",
        namespace="llm-d",
        provider="istio",
        models=[
            RoutedModel(model="llama", names=["llama", "sql"], pool_name="mm-llama"),
            RoutedModel(model="qwen", names=["qwen"], pool_name="mm-qwen"),
        ],
    )
    path = tmp_path / "routes.yaml"
    path.write_text(routing_table(args))
    table = RoutingTable.load(path)
    assert table.base_of("sql") == "llama" and table.header == "X-Gateway-Base-Model-Name"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"models": []}, "models: the table routes no model"),
        ({"models": {}}, "models: must be a list"),
        ({"models": [{"model": "a"}]}, "models[0]: must be a mapping with exactly 'model' and 'names'"),
        ({"models": [{"model": "a", "names": "a"}]}, "models[0].names: must be a list"),
        ({"models": [{"model": "a", "names": ["b"]}]}, "models[0].names: must include the model itself"),
        ({"models": [{"model": "a", "names": ["a", 3]}]}, "models[0].names[1]: must be a non-empty string"),
        ({"models": [{"model": "a", "names": ["a", " b"]}]}, "has surrounding spaces or control characters"),
        (
            {"models": [{"model": "a", "names": ["a", "x"]}, {"model": "b", "names": ["b", "x"]}]},
            "models[1].names[1]: 'x' is already routed by models[0]",
        ),
        ({"models": [{"model": "a", "names": ["a"]}], "extra": 1}, "unknown keys ['extra']"),
        ({"header": "bad header", "models": [{"model": "a", "names": ["a"]}]}, "is not an HTTP header name"),
        ([1, 2], "must be a mapping with 'models'"),
    ],
)
def test_a_bad_table_is_refused_naming_the_entry(document: Any, problem: str) -> None:
    with pytest.raises(TableError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        RoutingTable.from_document(document)


def test_load_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "routes.yaml"
    broken.write_text("models: [unclosed")
    with pytest.raises(TableError, match=f"{broken}: not valid YAML"):
        RoutingTable.load(broken)
    with pytest.raises(TableError, match="No such file"):
        RoutingTable.load(tmp_path / "missing.yaml")
