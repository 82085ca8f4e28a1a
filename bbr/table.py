"""The routing table: which base model serves each name a request body may carry.

The stack renders it (``pulumi_llmd.components.bodyrouter.routing_table``) into the router's
ConfigMap::

    header: X-Gateway-Base-Model-Name     # what the HTTPRoute rules match
    modelHeader: X-Gateway-Model-Name     # the body's model as sent, for whoever wants it
    models:
    - model: llama                        # the base model: the header value of its route rule
      names: [llama, sql-v1, sql-v2, sql] # the model, its adapters, its rewrite names

It is read once at start (a changed table rolls the pods) and checked strictly: unknown keys,
duplicate names across models or malformed entries stop the router with a message naming the entry,
rather than routing some names wrongly. llm-d-inference-payload-processor keeps the same mapping
(adapter -> base model, pkg/plugins/basemodelextractor) in ConfigMaps it watches; here the stack
owns the whole table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_HEADER = "X-Gateway-Base-Model-Name"
DEFAULT_MODEL_HEADER = "X-Gateway-Model-Name"
# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# A header value must not carry control characters (the base model is sent as one).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TableError(ValueError):
    """The routing table cannot be used; the message names the entry."""


@dataclass(frozen=True, slots=True)
class RoutedModel:
    model: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class RoutingTable:
    models: tuple[RoutedModel, ...]
    header: str = DEFAULT_HEADER
    model_header: str = DEFAULT_MODEL_HEADER
    _base: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise TableError("models: the table routes no model")
        for key, value in (("header", self.header), ("modelHeader", self.model_header)):
            if not _HEADER_NAME.match(value):
                raise TableError(f"{key}: {value!r} is not an HTTP header name")
        owners: dict[str, str] = {}
        for index, routed in enumerate(self.models):
            where = f"models[{index}]"
            _check_name(routed.model, f"{where}.model")
            if not routed.names:
                raise TableError(f"{where}.names: lists no name")
            if routed.model not in routed.names:
                raise TableError(f"{where}.names: must include the model itself ({routed.model!r})")
            for position, name in enumerate(routed.names):
                _check_name(name, f"{where}.names[{position}]")
                if name in owners:
                    raise TableError(
                        f"{where}.names[{position}]: {name!r} is already routed by {owners[name]}: a name "
                        "reaches one model"
                    )
                owners[name] = where
                self._base[name] = routed.model

    @classmethod
    def from_document(cls, document: Any) -> RoutingTable:
        if not isinstance(document, Mapping):
            raise TableError("the table must be a mapping with 'models'")
        unknown = sorted(set(document) - {"header", "modelHeader", "models"})
        if unknown:
            raise TableError(f"unknown keys {unknown} (allowed: header, modelHeader, models)")
        entries = document.get("models")
        if not isinstance(entries, list):
            raise TableError("models: must be a list of {model, names}")
        models = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or set(entry) != {"model", "names"}:
                raise TableError(f"models[{index}]: must be a mapping with exactly 'model' and 'names'")
            names = entry["names"]
            if not isinstance(names, list):
                raise TableError(f"models[{index}].names: must be a list of model names")
            models.append(RoutedModel(model=entry["model"], names=tuple(names)))
        return cls(
            models=tuple(models),
            header=document.get("header", DEFAULT_HEADER),
            model_header=document.get("modelHeader", DEFAULT_MODEL_HEADER),
        )

    @classmethod
    def load(cls, path: Path) -> RoutingTable:
        """Read a YAML (or JSON) table file; raises TableError naming the file and the problem."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TableError(f"{path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise TableError(f"{path}: not UTF-8 text ({exc.reason})") from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TableError(f"{path}: not valid YAML ({exc})") from None
        try:
            return cls.from_document(document)
        except TableError as exc:
            raise TableError(f"{path}: {exc}") from None

    def base_of(self, name: str) -> str | None:
        """The base model that serves ``name`` (exact match, as the pickers and vLLM compare names)."""
        return self._base.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._base)

    def model_card(self, name: str, created: int) -> dict[str, Any] | None:
        """OpenAI's model object for a name the gateway serves; adapters and rewrite names carry their
        base model as ``parent``, as vLLM lists adapters (vllm/entrypoints/openai/models/serving.py)."""
        base = self._base.get(name)
        if base is None:
            return None
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "pulumi-llmd",
            "root": base,
            "parent": None if name == base else base,
        }

    def listing(self, created: int) -> bytes:
        """``GET /v1/models`` for the whole gateway: every name of every model, in table order."""
        data = [self.model_card(name, created) for name in self._base]
        return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()


def _check_name(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise TableError(f"{where}: must be a non-empty string (got {value!r})")
    if value != value.strip() or _CONTROL.search(value):
        raise TableError(f"{where}: {value!r} has surrounding spaces or control characters")
