"""Kubernetes discovery: the named InferencePool, the Ready pods its selector matches in its
namespace (x each target port), and InferenceObjective priorities.

Client choice: lightkube, because it is small, typed, natively async (httpx2), and its generic
resources handle CRDs like InferencePool/InferenceObjective without code generation.

Each resource runs a list-then-watch loop: list (a full snapshot, which also marks the pool
synced), then watch from the list's resourceVersion; any error (410 Gone, a dropped connection,
RBAC) logs, backs off (bounded), and lists again, so state converges after every outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.exceptions import ConfigError as LightkubeConfigError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Pod

from epp import metrics
from epp.datastore import Datastore, EndpointSpec, RewriteTarget
from epp.scheduling.errors import ConfigError

log = logging.getLogger(__name__)

POOL_GROUP_V1 = "inference.networking.k8s.io"
LEGACY_GROUP = "inference.networking.x-k8s.io"
OBJECTIVE_GROUPS = ("llm-d.ai", LEGACY_GROUP)  # current, then GIE <= v1.5
# Each watch lives this long, times a random 1-2 (client-go's reflector: 5-10 min), then relists.
WATCH_TIMEOUT_S = 300.0

ObjectiveResources = {
    group: create_namespaced_resource(group, "v1alpha2", "InferenceObjective", "inferenceobjectives")
    for group in OBJECTIVE_GROUPS
}
RewriteResources = {
    group: create_namespaced_resource(group, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites")
    for group in OBJECTIVE_GROUPS
}


def pool_resource(group: str) -> Any:
    if group == POOL_GROUP_V1:
        return create_namespaced_resource(group, "v1", "InferencePool", "inferencepools")
    if group == LEGACY_GROUP:
        return create_namespaced_resource(group, "v1alpha2", "InferencePool", "inferencepools")
    raise ConfigError(f"--pool-group must be {POOL_GROUP_V1} or {LEGACY_GROUP}, got {group!r}")


def kubernetes_client() -> AsyncClient:
    """In-cluster service account, else ~/.kube/config (or $KUBECONFIG)."""
    try:
        return AsyncClient()
    except LightkubeConfigError as exc:
        raise ConfigError(
            f"--pool-name needs Kubernetes access, but no in-cluster service account or kubeconfig was found "
            f"({exc}); use --endpoints-file for a static endpoint list"
        ) from exc


@dataclass(frozen=True, slots=True)
class PoolSpec:
    selector: dict[str, str]
    target_ports: tuple[int, ...]


class InvalidSpec(Exception):
    """A watched object's spec that the EPP cannot apply; the message names the field.

    Not a ValueError on purpose: the list/watch loop takes ValueError for a broken connection
    (relist, back off), so a bad object raised from a callback used to stall its whole watch."""


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# llm-d-router apix/v1alpha2/inferencemodelrewrite_types.go: Weight *int32, Minimum=1, Maximum=1000000.
REWRITE_WEIGHT_MAX = 1_000_000


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port(value: Any, where: str) -> int:
    if not _is_int(value) or not 0 < value < 65536:
        raise InvalidSpec(f"{where} must be a port number 1-65535, got {value!r}")
    return int(value)


def _labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str | int | float) for v in value.values()):
        raise InvalidSpec(f"{where} must be a map of label names to values, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def parse_pool(spec: Mapping[str, Any] | None, group: str) -> PoolSpec:
    """v1: ``selector.matchLabels`` + ``targetPorts[].number``; v1alpha2: plain ``selector`` map +
    ``targetPortNumber``. Raises :class:`InvalidSpec` naming the field (llm-d's CRD schema has
    1-65535 ports and 1-8 targetPorts; without the schema they reached the endpoints as given)."""
    spec = spec or {}
    selector = spec.get("selector") or {}
    if not isinstance(selector, Mapping):
        raise InvalidSpec(f"selector must be a mapping, got {selector!r}")
    if group == POOL_GROUP_V1:
        labels = _labels(selector.get("matchLabels") or {}, "selector.matchLabels")
        raw_ports = spec.get("targetPorts")
        if not isinstance(raw_ports, list) or not raw_ports:
            raise InvalidSpec(f"targetPorts must be a non-empty list of {{number: port}}, got {raw_ports!r}")
        ports = []
        for index, entry in enumerate(raw_ports):
            if not isinstance(entry, Mapping):
                raise InvalidSpec(f"targetPorts[{index}] must be a mapping {{number: port}}, got {entry!r}")
            ports.append(_port(entry.get("number"), f"targetPorts[{index}].number"))
        return PoolSpec(labels, tuple(ports))
    labels = _labels(selector, "selector")
    return PoolSpec(labels, (_port(spec.get("targetPortNumber"), "targetPortNumber"),))


def parse_priority(spec: Mapping[str, Any]) -> int:
    """An InferenceObjective's priority (unset = 0); an int32, as llm-d's API type has it."""
    priority = spec.get("priority")
    if priority is None:
        return 0
    if not _is_int(priority) or not INT32_MIN <= priority <= INT32_MAX:
        raise InvalidSpec(f"priority must be an int32, got {priority!r}")
    return int(priority)


def parse_rewrite_rules(spec: Mapping[str, Any] | None) -> list[tuple[str, list[RewriteTarget]]]:
    """(incoming model, targets) per Exact model match of an InferenceModelRewrite's rules.
    Raises :class:`InvalidSpec` naming the field; a weight is 1-1,000,000 (llm-d's CRD schema)."""
    parsed: list[tuple[str, list[RewriteTarget]]] = []
    rules = (spec or {}).get("rules") or []
    if not isinstance(rules, list):
        raise InvalidSpec(f"rules must be a list, got {rules!r}")
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, Mapping):
            raise InvalidSpec(f"{where} must be a mapping, got {rule!r}")
        raw_targets, matches = rule.get("targets") or [], rule.get("matches") or []
        if not isinstance(raw_targets, list) or not isinstance(matches, list):
            raise InvalidSpec(f"{where}: targets and matches must be lists")
        targets = []
        for t_index, target in enumerate(raw_targets):
            if not isinstance(target, Mapping):
                raise InvalidSpec(f"{where}.targets[{t_index}] must be a mapping, got {target!r}")
            if not target.get("modelRewrite"):
                continue
            weight = target.get("weight")
            if weight is not None and (not _is_int(weight) or not 1 <= weight <= REWRITE_WEIGHT_MAX):
                raise InvalidSpec(
                    f"{where}.targets[{t_index}].weight must be an integer 1-{REWRITE_WEIGHT_MAX}, "
                    f"got {weight!r}"
                )
            targets.append(RewriteTarget(str(target["modelRewrite"]), weight))
        if not targets:
            continue
        for match in matches:
            model = (match.get("model") if isinstance(match, Mapping) else None) or {}
            if not isinstance(model, Mapping):
                raise InvalidSpec(f"{where}.matches[].model must be a mapping, got {model!r}")
            if model.get("value") and model.get("type", "Exact") == "Exact":
                parsed.append((str(model["value"]), targets))
    return parsed


def report_invalid(kind: str, name: str, problem: str) -> None:
    """The one place a skipped object is reported: a warning naming it, and a metric to alert on."""
    log.warning("%s %s ignored: %s", kind, name, problem)
    metrics.DISCOVERY_INVALID_OBJECTS.labels(kind).inc()


def pod_is_ready(pod: Pod) -> bool:
    if pod.metadata is None or pod.metadata.deletionTimestamp is not None:
        return False
    if pod.status is None or not pod.status.podIP:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def pod_endpoints(pod: Pod, pool: PoolSpec) -> list[EndpointSpec]:
    if not pod_is_ready(pod):
        return []
    assert pod.metadata is not None and pod.status is not None and pod.status.podIP
    labels = dict(pod.metadata.labels or {})
    if any(labels.get(key) != value for key, value in pool.selector.items()):
        return []
    return [
        EndpointSpec(pod.metadata.name or "", pod.status.podIP, port, port, labels)
        for port in pool.target_ports
    ]


class KubernetesDiscovery:
    def __init__(
        self,
        datastore: Datastore,
        *,
        pool_name: str,
        namespace: str = "default",
        pool_group: str = POOL_GROUP_V1,
        client: AsyncClient | None = None,
        max_backoff: float = 10.0,
        watch_timeout: float = WATCH_TIMEOUT_S,
    ) -> None:
        self.datastore = datastore
        self.pool_name = pool_name
        self.namespace = namespace or "default"
        self.pool_group = pool_group
        self._pool_resource = pool_resource(pool_group)
        self._client = client if client is not None else kubernetes_client()
        self.max_backoff = max_backoff
        self.watch_timeout = watch_timeout
        self.pool: PoolSpec | None = None
        self._pods: dict[str, Pod] = {}
        self._objectives: dict[str, dict[str, int]] = {group: {} for group in OBJECTIVE_GROUPS}
        # name -> (object, its parsed rules): parsed once, when it arrives, so a bad one is refused alone
        self._rewrites: dict[str, dict[str, tuple[Any, list[tuple[str, list[RewriteTarget]]]]]] = {
            group: {} for group in OBJECTIVE_GROUPS
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._pod_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._tasks.append(
            asyncio.create_task(
                self._list_watch(
                    "InferencePool",
                    self._pool_resource,
                    fields={"metadata.name": self.pool_name},
                    on_snapshot=self._pool_snapshot,
                    on_event=self._pool_event,
                ),
                name="watch InferencePool",
            )
        )
        for group, resource in ObjectiveResources.items():
            self._tasks.append(
                asyncio.create_task(
                    self._list_watch(
                        f"InferenceObjective ({group})",
                        resource,
                        on_snapshot=functools.partial(self._objective_snapshot, group),
                        on_event=functools.partial(self._objective_event, group),
                    ),
                    name=f"watch InferenceObjective {group}",
                )
            )
        for group, resource in RewriteResources.items():
            self._tasks.append(
                asyncio.create_task(
                    self._list_watch(
                        f"InferenceModelRewrite ({group})",
                        resource,
                        on_snapshot=functools.partial(self._rewrite_snapshot, group),
                        on_event=functools.partial(self._rewrite_event, group),
                    ),
                    name=f"watch InferenceModelRewrite {group}",
                )
            )

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._pod_task] if self._pod_task else [])]
        self._tasks, self._pod_task = [], None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.close()

    # ---- the generic loop --------------------------------------------------------------------
    async def _list_watch(
        self,
        what: str,
        resource: Any,
        *,
        on_snapshot: Callable[[list[Any]], None],
        on_event: Callable[[str, Any], None],
        labels: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        assert self._client is not None
        backoff = 0.2
        last_problem = ""  # the same failure repeating (a CRD not installed, RBAC) is logged once
        while True:
            try:
                listing = self._client.list(resource, namespace=self.namespace, labels=labels, fields=fields)
                items = [item async for item in listing]
                on_snapshot(items)
                backoff, last_problem = 0.2, ""
                # lightkube's watch has no read timeout and reopens itself whenever the server ends
                # it, so one whose connection died silently (no FIN, no RST: a NAT or load balancer
                # dropping the flow) was waited on for ever and the endpoint set froze. Give each
                # watch a bounded life (jittered, as client-go's reflector does), then relist.
                life = asyncio.timeout(self.watch_timeout * random.uniform(1.0, 2.0))
                try:
                    async with life:
                        async for kind, obj in self._client.watch(
                            resource,
                            namespace=self.namespace,
                            labels=labels,
                            fields=fields,
                            resource_version=listing.resourceVersion,
                        ):
                            on_event(kind, obj)
                except TimeoutError:
                    if not life.expired():
                        raise
                    continue  # the watch's life is over: relist at once
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                code = exc.status.code if exc.status is not None else None
                if code == 410:  # watch history expired: relist at once
                    continue
                problem = f"listing/watching {what} in {self.namespace} failed ({code}): {exc}"
                # Optional CRDs (objectives, rewrites) may not be installed (404) or readable (403).
                optional = code in (403, 404) and what != "InferencePool" and what != "Pods"
                self._log_problem(
                    problem, last_problem, logging.INFO if optional else logging.WARNING, backoff
                )
                last_problem = problem
            except (httpx2.HTTPError, OSError, ValueError) as exc:
                problem = f"watching {what} in {self.namespace} failed: {exc}"
                self._log_problem(problem, last_problem, logging.WARNING, backoff)
                last_problem = problem
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff, backoff * 2)

    @staticmethod
    def _log_problem(problem: str, last_problem: str, level: int, backoff: float) -> None:
        if problem == last_problem:
            level = logging.DEBUG
        log.log(level, "%s; retrying in %.1fs", problem, backoff)

    # ---- InferencePool -----------------------------------------------------------------------
    def _pool_snapshot(self, items: list[Any]) -> None:
        if not items:
            log.warning(
                "InferencePool %s/%s not found (group %s); waiting for it",
                self.namespace,
                self.pool_name,
                self.pool_group,
            )
            self._set_pool(None)
            return
        self._set_pool(items[0])

    def _pool_event(self, kind: str, obj: Any) -> None:
        self._set_pool(None if kind == "DELETED" else obj)

    def _set_pool(self, obj: Any) -> None:
        try:
            pool = parse_pool(obj.spec, self.pool_group) if obj is not None else None
        except InvalidSpec as exc:
            # Keep serving the last good pool (llm-d's reconciler likewise leaves its datastore as
            # it was when a pool fails to convert) rather than dropping every endpoint.
            report_invalid("InferencePool", self.pool_name, str(exc))
            return
        if pool == self.pool:
            return
        self.pool = pool
        if self._pod_task is not None:
            self._pod_task.cancel()
            self._pod_task = None
        self._pods = {}
        if pool is None:
            if self.datastore.synced:
                self.datastore.replace_endpoints(())
            return
        if not pool.selector:
            log.error("InferencePool %s has an empty selector; not selecting every pod", self.pool_name)
            return
        log.info(
            "InferencePool %s: selector %s, target ports %s", self.pool_name, pool.selector, pool.target_ports
        )
        self._pod_task = asyncio.create_task(
            self._list_watch(
                "Pods",
                Pod,
                labels=dict(pool.selector),
                on_snapshot=self._pod_snapshot,
                on_event=self._pod_event,
            ),
            name="watch Pods",
        )

    # ---- Pods --------------------------------------------------------------------------------
    def _pod_snapshot(self, pods: list[Pod]) -> None:
        self._pods = {pod.metadata.name: pod for pod in pods if pod.metadata and pod.metadata.name}
        self._publish()

    def _pod_event(self, kind: str, pod: Pod) -> None:
        if pod.metadata is None or not pod.metadata.name:
            return
        if kind == "DELETED":
            self._pods.pop(pod.metadata.name, None)
        else:
            self._pods[pod.metadata.name] = pod
        self._publish()

    def _publish(self) -> None:
        if self.pool is None:
            return
        pool = self.pool
        self.datastore.replace_endpoints(
            spec for pod in self._pods.values() for spec in pod_endpoints(pod, pool)
        )

    # ---- InferenceObjectives -----------------------------------------------------------------
    def _objective_snapshot(self, group: str, items: list[Any]) -> None:
        self._objectives[group] = {}
        for obj in items:
            self._objective_event(group, "ADDED", obj, publish=False)
        self._publish_objectives()

    def _objective_event(self, group: str, kind: str, obj: Any, publish: bool = True) -> None:
        name = obj.metadata.name if obj.metadata else None
        if not name:
            return
        spec = obj.spec or {}
        pool_ref = spec.get("poolRef") or {}
        if kind == "DELETED" or pool_ref.get("name") != self.pool_name:
            self._objectives[group].pop(name, None)
        else:
            try:
                self._objectives[group][name] = parse_priority(spec)
            except InvalidSpec as exc:  # a bool or "high" used to become 1 or 0 silently
                report_invalid("InferenceObjective", name, str(exc))
                self._objectives[group].pop(name, None)
        if publish:
            self._publish_objectives()

    def _publish_objectives(self) -> None:
        merged: dict[str, int] = {}
        for group in reversed(OBJECTIVE_GROUPS):  # the current group wins a name clash
            merged.update(self._objectives[group])
        self.datastore.set_objectives(merged)

    # ---- InferenceModelRewrites --------------------------------------------------------------
    def _rewrite_snapshot(self, group: str, items: list[Any]) -> None:
        self._rewrites[group] = {}
        for obj in items:
            self._rewrite_event(group, "ADDED", obj, publish=False)
        self._publish_rewrites()

    def _rewrite_event(self, group: str, kind: str, obj: Any, publish: bool = True) -> None:
        name = obj.metadata.name if obj.metadata else None
        if not name:
            return
        pool_ref = (obj.spec or {}).get("poolRef") or {}
        if kind == "DELETED" or pool_ref.get("name") != self.pool_name:
            self._rewrites[group].pop(name, None)
            if publish:
                self._publish_rewrites()
            return
        # Parsed (and so checked) here, per object: a bad one raised out of _publish_rewrites and
        # stopped every rewrite from applying, and stalled (ValueError) or ended the watch.
        try:
            rules = parse_rewrite_rules(obj.spec)
        except InvalidSpec as exc:
            report_invalid("InferenceModelRewrite", name, str(exc))
            self._rewrites[group].pop(name, None)
        else:
            self._rewrites[group][name] = (obj, rules)
        if publish:
            self._publish_rewrites()

    def _publish_rewrites(self) -> None:
        """Conflicts: the oldest resource's rule for a model wins (then name order), current
        group before the legacy one, the first matching rule within a resource."""
        ordered = sorted(
            (
                (group_rank, obj, parsed)
                for group_rank, group in enumerate(OBJECTIVE_GROUPS)
                for obj, parsed in self._rewrites[group].values()
            ),
            key=lambda item: (str(item[1].metadata.creationTimestamp or ""), item[0], item[1].metadata.name),
        )
        rules: dict[str, list[RewriteTarget]] = {}
        for _, _, parsed in ordered:
            for model, targets in parsed:
                rules.setdefault(model, targets)
        self.datastore.set_model_rewrites(rules)
