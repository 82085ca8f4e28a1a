"""The router configurations compared, and how each one is started in front of the simulated pods.

* Envoy alone with a ROUND_ROBIN or RANDOM cluster over the pods: what a plain Kubernetes Service
  or a cache-blind gateway does.
* Envoy + the bundled EPP over ext_proc (``localrun``), the way kgateway wires an InferencePool,
  with three EndpointPickerConfigs: llm-d's default profile, prefix affinity only, load only.
* The peers as their PyPI wheels ship them: ``sglang-router launch --policy cache_aware`` and
  ``vllm-router --policy cache_aware``, each a proxy in its own right.

Every router listens on a fresh loopback port; :func:`start_router` returns once it answers.
"""

from __future__ import annotations

import json
import shutil
import string
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from benchmarks.pool import KvEventPorts
from localrun import (
    EnvoyGateway,
    EppEndpoint,
    ManagedProcess,
    envoy_binary,
    epp_command,
    free_port,
    grpc_ok,
    http_ok,
)
from localrun.stack import LocalEndpoint, write_endpoints_file

PREFIX_ONLY_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: max-score-picker
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 1}
  - {pluginRef: max-score-picker}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""

LOAD_ONLY_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1}
  - {pluginRef: max-score-picker}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""

# llm-d's default profile plus an in-flight-aware scorer: the EPP's own count of requests it has
# routed to each pod and not yet seen finish, exact at decision time, where the scraped queue
# metrics can be up to --refresh-metrics-interval old and let a burst herd onto one pod.
DEFAULT_PLUS_ACTIVE_REQUEST_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: inflight-load-producer
- type: active-request-scorer
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: active-request-scorer, weight: 2}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""


# llm-d's precise-prefix-cache-aware guide (llm-d/llm-d guides/precise-prefix-cache-aware/scheduler/
# precise-prefix-cache-aware.values.yaml and its README, "Scorer weights": the precise prefix score
# weighs 2.0, paired 1:1 with kv-cache-utilization-scorer and queue-scorer; speculativeIndexing on),
# in llm-d-router v0.10's names (precise-prefix-cache-producer feeding prefix-cache-scorer). Wired to
# the pods' KV events (every pod at 127.0.0.1, publishing on socketPort + its rank, see
# benchmarks.pool), the simulator's tokenizer (the pods are simulators), vLLM's block keys as the pods
# compute them. $-placeholders are filled from the pool's KvEventPorts.
PRECISE_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- {type: token-producer, parameters: {simulator: {}}}
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig:
      {blockSizeTokens: $block_size, hashSeed: "$hash_seed", hashAlgorithm: $hash_algorithm}
    kvEventsConfig:
      podDiscoveryConfig: {socketPort: $socket_port, replaySocketPort: $replay_port}
    speculativeIndexing: $speculative
- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}}
- type: endpoint-notification-source
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1}
  - {pluginRef: prefix-cache-scorer, weight: 2}
dataLayer:
  sources:
  - {pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}
  - {pluginRef: endpoint-notification-source, extractors: [{pluginRef: precise-prefix-cache-producer}]}
"""


# Controls for the precise comparison, so that a difference is not just the two llm-d profiles'
# weights: approximate prefix with the precise guide's weights, and precise with the default's.
APPROX_GUIDE_WEIGHTS_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1}
  - {pluginRef: prefix-cache-scorer, weight: 2}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""
PRECISE_DEFAULT_WEIGHTS_CONFIG = (
    PRECISE_CONFIG.replace("{pluginRef: queue-scorer, weight: 1}", "{pluginRef: queue-scorer, weight: 2}")
    .replace(
        "{pluginRef: kv-cache-utilization-scorer, weight: 1}",
        "{pluginRef: kv-cache-utilization-scorer, weight: 2}",
    )
    .replace("{pluginRef: prefix-cache-scorer, weight: 2}", "{pluginRef: prefix-cache-scorer, weight: 3}")
)


class Kind(Enum):
    ENVOY_LB = "envoy-lb"
    EPP = "epp"
    SGLANG = "sglang-router"
    VLLM_ROUTER = "vllm-router"


@dataclass(frozen=True, slots=True)
class RouterSpec:
    name: str
    kind: Kind
    description: str
    envoy_lb_policy: str | None = None  # ENVOY_LB: ROUND_ROBIN | RANDOM
    epp_config: str | None = None  # EPP: EndpointPickerConfig text; None = the EPP's built-in default
    epp_flags: tuple[str, ...] = ()  # EPP: extra `python -m epp` flags
    # EPP: active-active replicas behind one Envoy (the ext_proc cluster balances over them).
    epp_replicas: int = 1
    # EPP: epp_config has $-placeholders for the pool's KV-event ports (the pods must publish).
    kv_events: bool = False
    speculative: bool = False  # kv_events configs: speculativeIndexing
    # EPP: InferenceObjective priorities by name (written into the static endpoints file).
    epp_objectives: tuple[tuple[str, int], ...] = ()


ROUTERS: tuple[RouterSpec, ...] = (
    RouterSpec(
        "round-robin",
        Kind.ENVOY_LB,
        "Envoy, STATIC cluster of the pods, lb_policy ROUND_ROBIN",
        envoy_lb_policy="ROUND_ROBIN",
    ),
    RouterSpec(
        "random",
        Kind.ENVOY_LB,
        "Envoy, STATIC cluster of the pods, lb_policy RANDOM",
        envoy_lb_policy="RANDOM",
    ),
    RouterSpec(
        "epp-default",
        Kind.EPP,
        "Envoy + this project's EPP, built-in default config (llm-d's: "
        "queue-scorer 2, kv-cache-utilization-scorer 2, prefix-cache-scorer 3)",
    ),
    RouterSpec(
        "epp-prefix-only",
        Kind.EPP,
        "Envoy + EPP, prefix-cache-scorer + max-score-picker only",
        epp_config=PREFIX_ONLY_CONFIG,
    ),
    RouterSpec(
        "epp-load-only",
        Kind.EPP,
        "Envoy + EPP, queue-scorer + kv-cache-utilization-scorer only",
        epp_config=LOAD_ONLY_CONFIG,
    ),
    RouterSpec(
        "epp-default+active-request",
        Kind.EPP,
        "Envoy + EPP, llm-d's default profile plus active-request-scorer (weight 2) on the EPP's "
        "own in-flight counts (not the default: what llm-d users add against bursts)",
        epp_config=DEFAULT_PLUS_ACTIVE_REQUEST_CONFIG,
    ),
    RouterSpec(
        "sglang-cache-aware",
        Kind.SGLANG,
        "`sglang-router launch --policy cache_aware` (sglang-router 0.3.2, defaults otherwise)",
    ),
    RouterSpec(
        "vllm-router-cache-aware",
        Kind.VLLM_ROUTER,
        "`vllm-router --policy cache_aware` (vllm-router 0.1.17, defaults otherwise)",
    ),
)


# The precise-prefix comparison (python -m benchmarks.precise): they need pods that publish KV events.
PRECISE_ROUTERS: tuple[RouterSpec, ...] = (
    RouterSpec(
        "epp-precise",
        Kind.EPP,
        "Envoy + EPP, llm-d's precise-prefix-cache-aware guide profile: precise-prefix-cache-producer "
        "(the pods' KV events; token-producer with the simulator's tokenizer) feeding "
        "prefix-cache-scorer 2, queue-scorer 1, kv-cache-utilization-scorer 1, speculativeIndexing on",
        epp_config=PRECISE_CONFIG,
        kv_events=True,
        speculative=True,
    ),
    RouterSpec(
        "epp-precise-no-speculative",
        Kind.EPP,
        "epp-precise with speculativeIndexing off (llm-d's parameter default): a routed prompt is "
        "known on its pod only once the pod's events say so",
        epp_config=PRECISE_CONFIG,
        kv_events=True,
    ),
    RouterSpec(
        "epp-default-guide-weights",
        Kind.EPP,
        "control: approximate prefix with the precise guide's weights (prefix 2, queue 1, KV 1)",
        epp_config=APPROX_GUIDE_WEIGHTS_CONFIG,
    ),
    RouterSpec(
        "epp-precise-default-weights",
        Kind.EPP,
        "control: epp-precise with llm-d's default profile weights (prefix 3, queue 2, KV 2)",
        epp_config=PRECISE_DEFAULT_WEIGHTS_CONFIG,
        kv_events=True,
        speculative=True,
    ),
    RouterSpec(
        "epp-default-2x",
        Kind.EPP,
        "epp-default (approximate prefix) as two active-active EPP replicas behind one Envoy",
        epp_replicas=2,
    ),
    RouterSpec(
        "epp-precise-2x",
        Kind.EPP,
        "epp-precise as two active-active EPP replicas behind one Envoy (each subscribes to every pod)",
        epp_config=PRECISE_CONFIG,
        kv_events=True,
        speculative=True,
        epp_replicas=2,
    ),
)


def router_by_name(name: str) -> RouterSpec:
    for spec in (*ROUTERS, *PRECISE_ROUTERS):
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in (*ROUTERS, *PRECISE_ROUTERS))
    raise ValueError(f"unknown router {name!r}; choose from {known}")


class RunningRouter(Protocol):
    url: str

    def stop(self) -> None: ...

    def pids(self) -> dict[str, int]: ...


@dataclass
class _Processes:
    """A started router: the URL clients use and the processes behind it (stopped in reverse order)."""

    url: str
    processes: list[ManagedProcess | EnvoyGateway]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def pids(self) -> dict[str, int]:
        """Each process's pid by name (Envoy as ``envoy``); each leads its own session."""
        return {
            "envoy" if isinstance(p, EnvoyGateway) else p.name: (
                p.process.pid if isinstance(p, EnvoyGateway) else p.pid
            )
            for p in self.processes
        }


def envoy_lb_bootstrap(
    listen_port: int, admin_port: int, endpoints: list[str], lb_policy: str
) -> dict[str, Any]:
    """An Envoy bootstrap that spreads requests over ``endpoints`` with a built-in LB policy."""
    if lb_policy not in ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"):
        raise ValueError(f"unsupported Envoy lb_policy {lb_policy!r}")

    def address(host: str, port: int) -> dict[str, Any]:
        return {"socket_address": {"address": host, "port_value": port}}

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "baseline",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "pool",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "pods", "timeout": "300s"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    lb_endpoints = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        lb_endpoints.append({"endpoint": {"address": address(host, int(port))}})
    return {
        "admin": {"address": address("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "baseline",
                    "address": address("127.0.0.1", listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "pods",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": lb_policy,
                    "load_assignment": {
                        "cluster_name": "pods",
                        "endpoints": [{"lb_endpoints": lb_endpoints}],
                    },
                }
            ],
        },
    }


def _start_envoy_lb(spec: RouterSpec, endpoints: list[str], log_dir: Path) -> _Processes:
    assert spec.envoy_lb_policy is not None
    listen_port, admin_port = free_port(), free_port()
    bootstrap = log_dir / f"envoy-{spec.name}.json"
    bootstrap.write_text(
        json.dumps(envoy_lb_bootstrap(listen_port, admin_port, endpoints, spec.envoy_lb_policy))
    )
    envoy = ManagedProcess(
        [
            str(envoy_binary()),
            "-c",
            str(bootstrap),
            "--concurrency",
            "1",
            "--log-level",
            "warning",
            "--disable-hot-restart",
        ],
        ready=http_ok(f"http://127.0.0.1:{admin_port}/ready"),
        name=f"envoy-{spec.name}",
        log_dir=log_dir,
    ).start()
    return _Processes(f"http://127.0.0.1:{listen_port}", [envoy])


def epp_config_text(spec: RouterSpec, kv_events: KvEventPorts | None, block_size: int) -> str | None:
    """The spec's EndpointPickerConfig, with the pool's KV-event ports filled in if it needs them."""
    if not spec.kv_events:
        return spec.epp_config
    if kv_events is None:
        raise ValueError(f"router {spec.name!r} needs pods that publish KV events (SimPool kv_events=True)")
    assert spec.epp_config is not None
    return string.Template(spec.epp_config).substitute(
        block_size=block_size,
        hash_seed=kv_events.hash_seed,
        hash_algorithm=kv_events.hash_algorithm,
        socket_port=kv_events.socket_port,
        replay_port=kv_events.replay_port,
        speculative="true" if spec.speculative else "false",
    )


def _start_epp(
    spec: RouterSpec,
    pod_names: list[str],
    endpoints: list[str],
    log_dir: Path,
    config_text: str | None,
) -> _Processes:
    endpoints_file = write_endpoints_file(
        log_dir / f"endpoints-{spec.name}.json",
        [
            LocalEndpoint(
                name=name,
                port=int(endpoint.rpartition(":")[2]),
                labels={"llm-d.ai/inference-serving": "true"},
            )
            for name, endpoint in zip(pod_names, endpoints, strict=True)
        ],
        objectives=dict(spec.epp_objectives),
    )
    extra = ["--log-level", "warning"]
    if config_text is not None:
        extra += ["--config-text", config_text]
    extra += spec.epp_flags
    epps: list[ManagedProcess] = []
    replicas: list[EppEndpoint] = []
    try:
        for replica in range(spec.epp_replicas):
            grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
            epps.append(
                ManagedProcess(
                    epp_command(endpoints_file, grpc_port, health_port, metrics_port, *extra),
                    ready=grpc_ok(health_port),
                    name=f"epp-{spec.name}" + (f"-{replica}" if spec.epp_replicas > 1 else ""),
                    log_dir=log_dir,
                ).start()
            )
            replicas.append(EppEndpoint(grpc_port, health_port))
        # Several replicas: the gateway balances over them, health-checking each (llm-d's HA).
        gateway = EnvoyGateway(
            free_port(),
            replicas[0].port,
            endpoints,
            log_dir=log_dir / f"envoy-{spec.name}",
            epps=tuple(replicas) if spec.epp_replicas > 1 else (),
        ).start()
    except BaseException:
        for epp in epps:
            epp.stop()
        raise
    return _Processes(gateway.url, [*epps, gateway])


def _peer_binary(name: str) -> str:
    # The console scripts live next to this interpreter in the project's virtualenv.
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; `./dev setup` installs the bench extras")
    return found


def _start_peer(spec: RouterSpec, urls: list[str], log_dir: Path) -> _Processes:
    port, prometheus_port = free_port(), free_port()
    if spec.kind is Kind.SGLANG:
        command = [
            _peer_binary("sglang-router"),
            "launch",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--policy",
            "cache_aware",
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(prometheus_port),
            "--log-level",
            "warn",
            "--worker-urls",
            *urls,
        ]
    else:
        command = [
            _peer_binary("vllm-router"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--policy",
            "cache_aware",
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(prometheus_port),
            "--log-level",
            "warning",
            "--worker-urls",
            *urls,
        ]
    peer = ManagedProcess(
        command,
        ready=http_ok(f"http://127.0.0.1:{port}/health"),
        name=spec.name,
        log_dir=log_dir,
        ready_timeout=60.0,
    ).start()
    return _Processes(f"http://127.0.0.1:{port}", [peer])


def start_router(
    spec: RouterSpec,
    pod_names: list[str],
    endpoints: list[str],
    log_dir: Path,
    *,
    kv_events: KvEventPorts | None = None,
    block_size: int = 16,
) -> RunningRouter:
    """Start ``spec`` in front of the pods at ``endpoints`` ("ip:port"); returns once it is ready.
    ``kv_events``/``block_size``: where and how the pods publish KV events (precise routers)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if spec.kind is Kind.ENVOY_LB:
        return _start_envoy_lb(spec, endpoints, log_dir)
    if spec.kind is Kind.EPP:
        config_text = epp_config_text(spec, kv_events, block_size)
        return _start_epp(spec, pod_names, endpoints, log_dir, config_text)
    return _start_peer(spec, [f"http://{endpoint}" for endpoint in endpoints], log_dir)
