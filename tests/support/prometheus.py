"""A real Prometheus (Debian's ``prometheus`` package) for tests, fed the way the Prometheus Operator
would feed it from our PodMonitors and PrometheusRule.

The operator turns a PodMonitor into a scrape job with Kubernetes pod discovery and a fixed list of
relabelings (prometheus-operator v0.93.0, ``pkg/prometheus/promcfg.go``,
``generatePodMonitorConfig``): drop finished pods, keep pods matching the selector, keep the named
container port, set ``namespace``/``container``/``pod``, ``job`` = ``<namespace>/<monitor>``,
``endpoint`` = the port name, then the monitor's own relabelings. :func:`scrape_job` builds that job
with the same relabelings, over static targets that carry the ``__meta_kubernetes_*`` labels pod
discovery would give the local processes standing in for pods. So a rule or query that depends on a
label only the monitors add is tested against exactly what they add.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localrun import ManagedProcess, free_port, http_ok


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@dataclass
class LocalPod:
    """A local process standing in for a pod: its rendered labels, and each container's named ports
    mapped to the local port that really serves them."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    # container -> port name -> local TCP port
    containers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def _sanitize(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _pod_targets(pod: LocalPod, host: str) -> list[dict[str, Any]]:
    """What Kubernetes pod discovery yields: one target per declared container port."""
    base = {
        "__meta_kubernetes_namespace": pod.namespace,
        "__meta_kubernetes_pod_name": pod.name,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
    }
    for key, value in pod.labels.items():
        base[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = value
        base[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
    targets = []
    for container, ports in pod.containers.items():
        for port_name, port in ports.items():
            labels = {
                **base,
                "__meta_kubernetes_pod_container_name": container,
                "__meta_kubernetes_pod_container_port_name": port_name,
                "__meta_kubernetes_pod_container_port_number": str(port),
            }
            targets.append({"targets": [f"{host}:{port}"], "labels": labels})
    return targets


_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "replacement": "replacement",
    "regex": "regex",
    "separator": "separator",
    "modulus": "modulus",
    "action": "action",
}


def _relabel(rule: Mapping[str, Any]) -> dict[str, Any]:
    out = {_RELABEL_KEYS[key]: value for key, value in rule.items()}
    if "action" in out:
        out["action"] = str(out["action"]).lower()
    return out


def scrape_job(
    monitor: Mapping[str, Any],
    pods: list[LocalPod],
    *,
    host: str = "127.0.0.1",
    metrics_path: str | None = None,
) -> dict[str, Any]:
    """The scrape job the operator generates for a one-endpoint PodMonitor, over ``pods``.
    ``metrics_path`` overrides the monitor's path where a local stand-in serves it elsewhere."""
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    spec = monitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(spec["namespaceSelector"]["matchNames"]) == {namespace}, "the emulation covers one namespace"
    relabelings: list[dict[str, Any]] = [
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
    ]
    for key, value in sorted(spec["selector"].get("matchLabels", {}).items()):
        relabelings.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_pod_label_{_sanitize(key)}",
                    f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}",
                ],
                "regex": f"({value});true",
            }
        )
    assert not spec["selector"].get("matchExpressions"), "the emulation covers matchLabels"
    relabelings += [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": endpoint["port"],
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{namespace}/{name}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    relabelings += [_relabel(rule) for rule in endpoint.get("relabelings", [])]
    static = [target for pod in pods if pod.namespace == namespace for target in _pod_targets(pod, host)]
    return {
        "job_name": f"podMonitor/{namespace}/{name}/0",
        "scrape_interval": endpoint.get("interval", "1s"),
        "scrape_timeout": "900ms",
        "metrics_path": metrics_path or endpoint.get("path", "/metrics"),
        "static_configs": static,
        "relabel_configs": relabelings,
    }


class Prometheus:
    """``prometheus`` on a free loopback port with the given scrape jobs and rule groups."""

    def __init__(self, workdir: Path, jobs: list[dict[str, Any]], rule_groups: list[dict[str, Any]]) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian/Ubuntu: apt-get install prometheus)")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": jobs,
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = ManagedProcess(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            ready=http_ok(f"http://127.0.0.1:{self.port}/-/ready"),
            name="prometheus",
            log_dir=workdir,
            ready_timeout=60,
        )

    def __enter__(self) -> Prometheus:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api("query", query=expr)
        return data

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.api("alerts")["alerts"] if a["state"] == "firing"}

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")

    def wait_firing(self, alert: str, timeout: float = 45.0) -> None:
        self.wait_until(
            f"{alert} fires (firing now: {sorted(self.firing())})", lambda: alert in self.firing(), timeout
        )
