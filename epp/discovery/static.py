"""Static discovery from an endpoints file (YAML or JSON), re-read when its mtime changes.

Format (the cross-team contract)::

    endpoints:
    - name: decode-0          # pod name
      address: 127.0.0.1
      port: 8200              # traffic port: x-gateway-destination-endpoint = address:port
      metricsPort: 8200       # optional, defaults to port
      labels: {llm-d.ai/role: decode}
    objectives:               # optional: InferenceObjective priorities by name
    - {name: batch, priority: -1}
    modelRewrites:            # optional: InferenceModelRewrite rules (exact model match)
    - model: llama
      targets: [{modelRewrite: llama-v2, weight: 90}, {modelRewrite: llama-v3, weight: 10}]
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from epp.datastore import Datastore, EndpointSpec, RewriteTarget
from epp.scheduling.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndpointsFile:
    endpoints: list[EndpointSpec]
    objectives: dict[str, int]
    model_rewrites: dict[str, list[RewriteTarget]]


def parse_endpoints_file(text: str, source: str) -> EndpointsFile:
    try:
        document = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: must be a mapping with an 'endpoints' list")
    unknown = sorted(set(document) - {"endpoints", "objectives", "modelRewrites"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level field(s) {', '.join(unknown)}")
    raw_endpoints = document.get("endpoints")
    if not isinstance(raw_endpoints, list):
        raise ConfigError(f"{source}: 'endpoints' must be a list")
    specs = [_endpoint(entry, f"{source}: endpoints[{i}]") for i, entry in enumerate(raw_endpoints)]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.hostport in seen:
            raise ConfigError(
                f"{source}: endpoints {seen[spec.hostport]!r} and {spec.name!r} share {spec.hostport}"
            )
        seen[spec.hostport] = spec.name
    return EndpointsFile(specs, _objectives(document, source), _rewrites(document, source))


def _objectives(document: Mapping[str, Any], source: str) -> dict[str, int]:
    objectives: dict[str, int] = {}
    raw_objectives = document.get("objectives") or []
    if not isinstance(raw_objectives, list):
        raise ConfigError(f"{source}: 'objectives' must be a list")
    for index, entry in enumerate(raw_objectives):
        where = f"{source}: objectives[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where} needs a 'name'")
        priority = entry.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError(f"{where}: 'priority' must be an integer, got {priority!r}")
        objectives[entry["name"]] = priority
    return objectives


def _rewrites(document: Mapping[str, Any], source: str) -> dict[str, list[RewriteTarget]]:
    rules: dict[str, list[RewriteTarget]] = {}
    raw_rules = document.get("modelRewrites") or []
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: 'modelRewrites' must be a list")
    for index, entry in enumerate(raw_rules):
        where = f"{source}: modelRewrites[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str) or not entry["model"]:
            raise ConfigError(f"{where} needs a 'model' (the incoming model name)")
        targets = entry.get("targets")
        if not isinstance(targets, list) or not targets:
            raise ConfigError(f"{where}: 'targets' must be a non-empty list")
        parsed = []
        for target_index, target in enumerate(targets):
            target_where = f"{where}.targets[{target_index}]"
            if not isinstance(target, Mapping) or not isinstance(target.get("modelRewrite"), str):
                raise ConfigError(f"{target_where} needs a 'modelRewrite' (the model to send)")
            weight = target.get("weight")
            if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int) or weight < 1):
                raise ConfigError(f"{target_where}: 'weight' must be a positive integer, got {weight!r}")
            parsed.append(RewriteTarget(target["modelRewrite"], weight))
        rules[entry["model"]] = parsed
    return rules


def _endpoint(entry: Any, where: str) -> EndpointSpec:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(entry) - {"name", "address", "port", "metricsPort", "labels"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    name, address = entry.get("name"), entry.get("address")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' is required")
    if not isinstance(address, str):
        raise ConfigError(f"{where} ({name}): 'address' is required")
    try:
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise ConfigError(f"{where} ({name}): 'address' must be an IP address, got {address!r}") from exc
    port = _port(entry.get("port"), f"{where} ({name}): 'port'")
    metrics_port = (
        port
        if entry.get("metricsPort") is None
        else _port(entry.get("metricsPort"), f"{where} ({name}): 'metricsPort'")
    )
    labels = entry.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ConfigError(f"{where} ({name}): 'labels' must map strings to strings")
    return EndpointSpec(name=name, address=address, port=port, metrics_port=metrics_port, labels=dict(labels))


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{what} must be an integer 1..65535, got {value!r}")
    return value


class StaticDiscovery:
    """Loads the file at start (errors are fatal there) and reloads it on mtime change (errors
    are logged and the previous endpoint set is kept, so a half-written file cannot empty the pool)."""

    def __init__(self, path: Path, datastore: Datastore, poll_interval: float = 0.5) -> None:
        self.path = path
        self.datastore = datastore
        self.poll_interval = poll_interval
        self._mtime: int | None = None
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        try:
            stat = self.path.stat()
            text = self.path.read_text()
        except OSError as exc:
            raise ConfigError(f"endpoints file {self.path}: {exc.strerror or exc}") from exc
        parsed = parse_endpoints_file(text, f"endpoints file {self.path}")
        self._mtime = stat.st_mtime_ns
        self.datastore.replace_endpoints(parsed.endpoints)
        self.datastore.set_objectives(parsed.objectives)
        self.datastore.set_model_rewrites(parsed.model_rewrites)

    async def start(self) -> None:
        if self._mtime is None:  # not loaded yet (build_runtime normally loads it to fail fast)
            self.load()
        self._task = asyncio.create_task(self._watch(), name="endpoints-file watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            log.error("endpoints file %s unreadable (%s); keeping the current endpoints", self.path, exc)
            return False
        if mtime == self._mtime:
            return False
        try:
            self.load()
        except ConfigError as exc:
            self._mtime = mtime  # do not retry the same broken content every poll
            log.error("%s; keeping the current endpoints", exc)
            return False
        log.info("reloaded endpoints file %s", self.path)
        return True
