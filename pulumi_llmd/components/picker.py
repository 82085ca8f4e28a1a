"""The endpoint picker: RBAC, config, Deployment, Service and the InferencePool that points at it.

Builders take the validated :class:`EndpointPickerInputs` (pool name, namespace, served models, the
pool's pod selector, P/D or not, and the ``epp`` settings), never the whole stack configuration.
"""

# No `from __future__ import annotations`: Pulumi's schema analyzer reads EndpointPicker's annotations.
import hashlib
from typing import Any

import pulumi

from pulumi_llmd.components import naming
from pulumi_llmd.components.args import EndpointPickerArgs
from pulumi_llmd.components.claims import Claim, claim
from pulumi_llmd.components.inputs import EndpointPickerInputs, package_component
from pulumi_llmd.components.k8sobjects import child_options, register
from pulumi_llmd.components.pickerconfig import PreciseSettings, render_epp_config
from pulumi_llmd.components.tracing import tracing_args, tracing_env
from pulumi_llmd.config.errors import ConfigError, Problem
from pulumi_llmd.config.inputs import validate_args
from pulumi_llmd.config.models import EppImplementation
from pulumi_llmd.config.precise import EppTokenizer, PrefixCacheMode, effective_tokenizer, precise_problems

CONFIG_DIR = "/config"
CONFIG_FILE = "epp-config.yaml"
TLS_DIR = "/etc/epp/tls"
CONFIG_CHECKSUM_ANNOTATION = "llm-d.ai/epp-config-sha256"
# The bundled EPP's drain is bounded by --drain-timeout (default 30 s, epp/cli.py) plus the short
# notice before it; this leaves room for both and for a slow exit.
TERMINATION_GRACE_SECONDS = 130

# Precise mode with tokenizer path: the model's PVC, mounted read-only (the token-producer's local.path).
MODEL_DIR = "/model"
# /tmp holds the Hub tokenizer download in precise mode (local.cacheDir /tmp/tokenizers): a
# tokenizer.json is up to ~20 MB.
TMP_SIZE = "64Mi"
TMP_SIZE_WITH_TOKENIZER = "256Mi"


Picker = EndpointPickerInputs


def epp_labels(picker: Picker) -> dict[str, str]:
    return {
        **naming.common_labels(picker.pool_name, "endpoint-picker"),
        "app.kubernetes.io/name": picker.epp_name,
    }


def epp_selector(pool_name: str) -> dict[str, str]:
    """The EPP pods' labels that its Service (and the NetworkPolicies) select."""
    return {"app.kubernetes.io/instance": pool_name, "app.kubernetes.io/name": naming.epp_name(pool_name)}


# InferenceObjective (request priorities) and InferenceModelRewrite (model-name rules) live in
# llm-d.ai now and in the x-k8s group up to GIE v1.5; the EPP watches both groups for both kinds.
OBJECTIVE_GROUPS = ["llm-d.ai", "inference.networking.x-k8s.io"]


def lease_name(pool_namespace: str, pool_name: str) -> str:
    """The Lease one pool's EPP replicas compete for: llm-d's EPP's LeaderElectionID (llm-d-router
    v0.10.0 pkg/epp/server/controller_manager.go; GIE's ``.gateway-api-inference-extension.sigs.k8s.io``
    name went in v0.9.0), which the bundled EPP uses too (epp/leader.py lease_name; a test holds the
    two equal). A Role naming another Lease forbids the election's get: no replica would ever lead."""
    return f"epp-{pool_namespace}-{pool_name}.llm-d.ai"


def role_rules(picker: Picker) -> list[dict[str, Any]]:
    """Exactly what the EPP reads, read-only: pods (endpoints), its InferencePool, the
    InferenceObjectives and the InferenceModelRewrites. With leader election, its own Lease only:
    get and update by name, and create, which RBAC cannot restrict to a name (the object's name is
    not known at authorization time: kubernetes.io RBAC docs, "Referring to resources"). The bundled
    EPP never lists, watches, patches or deletes Leases and records no Events (epp/leader.py);
    llm-d's EPP (controller-runtime leader election) records leadership changes as Events, so with
    ``implementation: upstream`` it also gets events create/patch, as its chart grants
    (llm-d-router config/charts/routerlib/templates/_leader-election-rbac.yaml)."""
    read = ["get", "list", "watch"]
    rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": read},
        {"apiGroups": [naming.INFERENCE_POOL_GROUP], "resources": ["inferencepools"], "verbs": read},
        {"apiGroups": OBJECTIVE_GROUPS, "resources": ["inferenceobjectives"], "verbs": read},
        {"apiGroups": OBJECTIVE_GROUPS, "resources": ["inferencemodelrewrites"], "verbs": read},
    ]
    if picker.settings.leader_election:
        rules += [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [lease_name(picker.namespace, picker.pool_name)],
                "verbs": ["get", "update"],
            },
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ]
        if picker.settings.implementation is EppImplementation.UPSTREAM:
            rules.append({"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]})
    return rules


def epp_arguments(picker: Picker) -> list[str]:
    """The EPP's flags. Both implementations take llm-d's names (``--pool-name``, ``--config-file``,
    ``--secure-serving`` ...; llm-d-router v0.10.0 pkg/epp/server/options.go), durations in Go form;
    each gets the few flags only it has (see the README's bundled/upstream table)."""
    epp = picker.settings
    args = [
        "--pool-name",
        picker.pool_name,
        "--pool-namespace",
        picker.namespace,
        "--pool-group",
        naming.INFERENCE_POOL_GROUP,
        "--config-file",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--grpc-port",
        str(naming.EPP_GRPC_PORT),
        "--grpc-health-port",
        str(naming.EPP_HEALTH_PORT),
        "--metrics-port",
        str(naming.EPP_METRICS_PORT),
        f"--secure-serving={'true' if epp.secure_serving else 'false'}",
        "--refresh-metrics-interval",
        go_duration(epp.refresh_metrics_interval),
        "--metrics-staleness-threshold",
        go_duration(epp.metrics_staleness_threshold),
    ]
    if epp.secure_serving and epp.tls_secret_name is not None:
        # A mounted Secret (cert-manager renews it in place): serve it, and the renewed pair to new
        # connections without a restart, as upstream's --enable-cert-reload does.
        args += ["--cert-path", TLS_DIR, "--enable-cert-reload"]
    if epp.leader_election:
        args.append("--ha-enable-leader-election")
    if epp.implementation is EppImplementation.UPSTREAM:
        args += [
            # Same RBAC as the bundled EPP: no TokenReview/SubjectAccessReview for /metrics (the chart's
            # default needs a ClusterRole; routerlib templates/_rbac.yaml), no pprof handlers on the
            # metrics port (both default on upstream). Tracing below: off unless llmd:tracing is on
            # (upstream traces to localhost:4317 by default).
            "--metrics-endpoint-auth=false",
            "--enable-pprof=false",
        ]
    else:
        # The bundled EPP's own: answer 404 for models the pool does not serve; scrape quiet pods
        # less often (upstream scrapes every pod every --refresh-metrics-interval), and ask for the
        # metrics it reads only (upstream GETs the whole page).
        args += [
            "--served-models",
            ",".join(picker.served_models),
            "--refresh-metrics-idle-interval",
            go_duration(epp.refresh_metrics_idle_interval),
            f"--metrics-name-filter={str(epp.metrics_name_filter).lower()}",
        ]
    return args + tracing_args(picker.tracing, explicit_off=True)


def picker_problems(picker: Picker) -> list[Problem]:
    """EndpointPicker args that cannot work together (the stack rules check the same on its keys)."""
    settings = picker.settings
    if picker.model is not None:
        return precise_problems(picker.model, settings, model_key="model", epp_key="settings")
    if settings.prefix_cache is PrefixCacheMode.PRECISE:
        return [Problem("model", "is required with settings.prefixCache precise (tokenizer and block keys)")]
    if settings.tokenizer is not None:
        return [Problem("settings.tokenizer", "applies to settings.prefixCache precise only")]
    return []


def precise(picker: Picker) -> bool:
    return picker.settings.prefix_cache is PrefixCacheMode.PRECISE and picker.model is not None


def tokenizer(picker: Picker) -> EppTokenizer | None:
    """The precise mode's tokenizer source (None in approximate mode)."""
    if not precise(picker):
        return None
    assert picker.model is not None
    return effective_tokenizer(picker.model, picker.settings)


def _pvc_location(uri: str) -> tuple[str, str]:
    """``pvc://claim/path/in/claim`` as (claim, path)."""
    claim, _, path = uri.split("://", 1)[1].partition("/")
    return claim, path


def token_producer_parameters(picker: Picker) -> dict[str, Any]:
    """The token-producer backend for the model (docs/precise-prefix.md, "token-producer")."""
    model = picker.model
    assert model is not None
    source = tokenizer(picker)
    if source is EppTokenizer.SIMULATOR:
        return {"simulator": {}}
    if source is EppTokenizer.PATH:
        _claim, path = _pvc_location(model.uri)
        return {"local": {"path": f"{MODEL_DIR}/{path}".rstrip("/")}}
    # hub: the repo vLLM loads; the Hub token (gated models) comes from HF_TOKEN, the default tokenEnv.
    return {"local": {"huggingFace": {"repo": model.uri.split("://", 1)[1], "revision": "main"}}}


def precise_settings(picker: Picker) -> PreciseSettings | None:
    model = picker.model
    if not precise(picker) or model is None or model.block_size is None:
        return None
    return PreciseSettings(
        token_producer=token_producer_parameters(picker),
        block_size=model.block_size,
        hash_algorithm=model.prefix_caching_hash_algo,
        hash_seed=model.hash_seed,
    )


def picker_config(picker: Picker) -> str:
    """The EndpointPickerConfig YAML the EPP loads."""
    return render_epp_config(
        picker.settings,
        disaggregated=picker.disaggregated,
        precise=precise_settings(picker),
        lora=picker.lora,
    )


def config_checksum(picker: Picker) -> str:
    return hashlib.sha256(picker_config(picker).encode()).hexdigest()


def config_map_manifest(picker: Picker) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(picker),
        "data": {CONFIG_FILE: picker_config(picker)},
    }


def deployment_manifest(picker: Picker) -> dict[str, Any]:
    name = picker.epp_name
    epp = picker.settings
    health = naming.EPP_HEALTH_PORT
    upstream = epp.implementation is EppImplementation.UPSTREAM
    container: dict[str, Any] = {
        "name": "epp",
        # llm-d's image runs its EPP as the entrypoint; ours is a Python image with three programs.
        "image": epp.upstream_image if upstream else epp.image,
        **({} if upstream else {"command": ["python", "-m", "epp"]}),
        "args": epp_arguments(picker),
        "env": [
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *tracing_env(picker.tracing, name),
            *_hub_token_env(picker),
        ],
        "ports": [
            {"name": "grpc", "containerPort": naming.EPP_GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": health, "protocol": "TCP"},
            {"name": "metrics", "containerPort": naming.EPP_METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "grpc": {"port": health, "service": "liveness"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        # One failed check takes a replica out of the Service: a draining EPP turns readiness off
        # first, and the gateway must stop sending it new streams at once.
        "readinessProbe": {
            "grpc": {"port": health, "service": "readiness"},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "resources": {
            "requests": {"cpu": epp.resources.cpu, "memory": epp.resources.memory},
            "limits": {"memory": epp.resources.memory},
        },
        "securityContext": naming.hardened_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            # The root filesystem is read-only; /tmp (HOME in the image) stays writable.
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    source = tokenizer(picker)
    tmp_size = TMP_SIZE_WITH_TOKENIZER if source is EppTokenizer.HUB else TMP_SIZE
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}},
    ]
    if source is EppTokenizer.PATH and picker.model is not None:
        # The model's own tokenizer files, read-only (the files must be readable by uid 65532).
        claim, _path = _pvc_location(picker.model.uri)
        container["volumeMounts"].append({"name": "model", "mountPath": MODEL_DIR, "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    if epp.secure_serving and epp.tls_secret_name is not None:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": epp.tls_secret_name}})
    metadata = _metadata(picker)
    if epp.leader_election:
        # Only the leader is ever ready, and Pulumi's wait for an updated Deployment needs every replica
        # available (Progressing: NewReplicaSetAvailable), so it would fail every update after its 10
        # minutes: Pulumi does not wait for this Deployment (gateways.md: pulumi.com/skipAwait).
        metadata["annotations"] = {"pulumi.com/skipAwait": "true"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": epp.replicas,
            "strategy": rollout_strategy(picker),
            "selector": {"matchLabels": epp_selector(picker.pool_name)},
            "template": {
                "metadata": {
                    "labels": {**epp_labels(picker), **epp_selector(picker.pool_name)},
                    # The EPP reads its config once: a changed ConfigMap must roll the pods.
                    "annotations": {CONFIG_CHECKSUM_ANNOTATION: config_checksum(picker)},
                },
                "spec": {
                    "serviceAccountName": name,
                    # Longer than the EPP's drain on SIGTERM (readiness off, new streams served for a
                    # few seconds while the gateway notices, then open streams finish within the
                    # 30 s --drain-timeout) so no stream is cut by SIGKILL.
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    # One node failure must not take every replica.
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": epp_selector(picker.pool_name)},
                        }
                    ],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def rollout_strategy(picker: Picker) -> dict[str, Any]:
    """Active-active replicas: a new replica must be ready before an old one goes, so a rollout never
    leaves the gateway without a picker (Recreate made every rollout an outage); old and new configs
    serve side by side for the seconds a rollout takes, each request still routed whole by one.

    With leader election only the leader is ready and no new pod can lead while the old leader holds
    the Lease, so "ready before an old one goes" stalls for good with the old config serving (the
    reason upstream's chart uses Recreate). Every old pod goes at once instead; the new ones start
    beside the draining ones and one takes the Lease the old leader releases on SIGTERM. Not Recreate:
    its maxUnavailable resolves to 0, so the Deployment would never count as Available with one ready
    replica, and Recreate also waits out the old pods' whole drain before starting new ones."""
    if picker.settings.leader_election:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "100%"}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def disruption_budget_manifest(picker: Picker) -> dict[str, Any] | None:
    """Voluntary evictions (node drains, cluster upgrades) take one EPP replica at a time; with a
    single replica there is nothing to keep, so no budget (it would only block drains). Nor with
    leader election: the leader is the only healthy pod, so any budget that keeps one replica allows
    no eviction of it (and, from three replicas, none of the standbys either), and a drain of its
    node would never finish; a standby takes over when it goes."""
    if picker.settings.replicas < 2 or picker.settings.leader_election:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(picker),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": epp_selector(picker.pool_name)}},
    }


def _hub_token_env(picker: Picker) -> list[dict[str, Any]]:
    """The Hub token for a gated model's tokenizer download (tokenizer hub), from the model's Secret."""
    if tokenizer(picker) is not EppTokenizer.HUB or picker.hf_token_secret is None:
        return []
    reference = {"name": picker.hf_token_secret, "key": "HF_TOKEN"}
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": reference}}]


def service_manifest(picker: Picker) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(picker),
        "spec": {
            "type": "ClusterIP",
            "selector": epp_selector(picker.pool_name),
            "ports": [
                {
                    "name": "grpc-ext-proc",
                    "port": naming.EPP_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    # HTTP/2 with or without TLS, as upstream declares it (naming.EXT_PROC_APP_PROTOCOL).
                    "appProtocol": naming.EXT_PROC_APP_PROTOCOL,
                },
                {
                    "name": "http-metrics",
                    "port": naming.EPP_METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def inference_pool_manifest(picker: Picker) -> dict[str, Any]:
    return {
        "apiVersion": f"{naming.INFERENCE_POOL_GROUP}/v1",
        "kind": "InferencePool",
        "metadata": {
            "name": picker.pool_name,
            "namespace": picker.namespace,
            "labels": naming.common_labels(picker.pool_name, "inference-pool"),
        },
        "spec": {
            "selector": {"matchLabels": dict(picker.selector)},
            "targetPorts": [{"number": naming.MODEL_SERVER_PORT}],
            "appProtocol": "http",
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": picker.epp_name,
                "port": {"number": naming.EPP_GRPC_PORT},
                "failureMode": picker.settings.failure_mode.value,
            },
        },
    }


# The request-management kinds moved from GIE to llm-d-router (llm-d.ai/v1alpha2; GIE v1.6 dropped the
# x-k8s CRDs): llm-d-router apix/v1alpha2, config/crd/bases/llm-d.ai_*.yaml at v0.10.0.
REQUEST_MANAGEMENT_API_VERSION = "llm-d.ai/v1alpha2"


def _pool_ref(picker: Picker) -> dict[str, str]:
    return {"group": naming.INFERENCE_POOL_GROUP, "kind": "InferencePool", "name": picker.pool_name}


def objective_manifests(picker: Picker) -> list[dict[str, Any]]:
    """One InferenceObjective per objective: requests name it in ``x-llm-d-inference-objective`` (the EPP
    looks it up by object name), and its priority orders them under load."""
    return [
        {
            "apiVersion": REQUEST_MANAGEMENT_API_VERSION,
            "kind": "InferenceObjective",
            "metadata": {
                "name": objective.name,
                "namespace": picker.namespace,
                "labels": naming.common_labels(picker.pool_name, "inference-objective"),
            },
            "spec": {"poolRef": _pool_ref(picker), "priority": objective.priority},
        }
        for objective in picker.objectives
    ]


def model_rewrite_manifest(picker: Picker) -> dict[str, Any] | None:
    """The pool's InferenceModelRewrite: one rule per incoming name (Exact match), its targets with their
    weights. The EPP picks a target per request by weight (none weighted: evenly) and answers the client
    under the name it sent (llm-d-router pkg/epp/requestcontrol: model rewrite)."""
    if not picker.rewrites:
        return None
    rules = []
    for rewrite in picker.rewrites:
        targets = []
        for target in rewrite.targets:
            entry: dict[str, Any] = {"modelRewrite": target.model}
            if target.weight is not None:
                entry["weight"] = target.weight
            targets.append(entry)
        rules.append({"matches": [{"model": {"type": "Exact", "value": rewrite.model}}], "targets": targets})
    return {
        "apiVersion": REQUEST_MANAGEMENT_API_VERSION,
        "kind": "InferenceModelRewrite",
        "metadata": {
            "name": naming.model_rewrites_name(picker.pool_name),
            "namespace": picker.namespace,
            "labels": naming.common_labels(picker.pool_name, "inference-model-rewrite"),
        },
        "spec": {"poolRef": _pool_ref(picker), "rules": rules},
    }


def service_account_manifest(picker: Picker) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(picker)}


def role_manifest(picker: Picker) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(picker),
        "rules": role_rules(picker),
    }


def role_binding_manifest(picker: Picker) -> dict[str, Any]:
    name = picker.epp_name
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(picker),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": picker.namespace}],
    }


@package_component
class EndpointPicker(pulumi.ComponentResource):
    """The endpoint picker (EPP) of one InferencePool, and the pool itself: a ServiceAccount with a
    read-only Role, the EndpointPickerConfig ConfigMap, the EPP Deployment (this project's EPP, or llm-d's
    with settings.implementation upstream; several active replicas by default, rolled without downtime,
    with a PodDisruptionBudget) and Service (ext_proc gRPC on 9002, TLS by default; metrics on 9090), and
    the InferencePool (target port 8000) whose endpointPickerRef names that Service, plus the pool's
    InferenceObjectives and InferenceModelRewrite when given. Select the model-server pods with selector
    (a ModelServerPool's servingLabels)."""

    pool_name: str
    """The InferencePool's name."""
    service_name: str
    """The EPP Service the pool's endpointPickerRef names."""

    def __init__(
        self, name: str, args: EndpointPickerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        """Args (:class:`~pulumi_llmd.components.args.EndpointPickerArgs`, validated by
        :class:`~pulumi_llmd.components.inputs.EndpointPickerInputs`):

        - ``pool_name``: the InferencePool's name; the EPP's objects are ``<pool_name>-epp``.
        - ``namespace``: where the pool and the EPP live.
        - ``served_models``: the model names clients send (``--served-models``).
        - ``selector``: the model-server pod labels the pool selects (``ModelServerPool.serving_labels``).
        - ``disaggregated``: P/D profiles in the generated EndpointPickerConfig.
        - ``settings``: the ``epp`` section of the stack config (image, replicas, leader election,
          failure mode, TLS, a full config override, metrics timing, resources).
        - ``lora``: the pool serves LoRA adapters (adds the lora-affinity-scorer to the generated config).
        - ``rewrites`` / ``objectives``: the model's InferenceModelRewrite rules and InferenceObjectives,
          rendered against this pool (``llm-d.ai/v1alpha2``).

        Providers and dependencies come through ``opts``: the Kubernetes provider is inherited by every
        child, and ``depends_on`` (the namespace, the InferencePool CRD) is passed on to each of them.
        """
        picker = validate_args(EndpointPickerInputs, args, component="EndpointPicker")
        if problems := picker_problems(picker):
            raise ConfigError(problems, subject="EndpointPicker args")
        if picker.settings.config is not None and precise(picker):
            # Allowed: the pods still publish KV events; whether the EPP reads them is the override's.
            pulumi.log.warn(
                "settings.config overrides the generated EndpointPickerConfig: with settings.prefixCache "
                "precise it must configure the precise plugins itself (docs/precise-prefix.md)"
            )
        why = "the pool's and the EPP's object names (and so their URNs) derive from it"
        claim(
            self,
            "llmd:index:EndpointPicker",
            name,
            opts,
            [Claim("poolName", "pool name", picker.pool_name, why)],
        )
        super().__init__("llmd:index:EndpointPicker", name, None, opts)
        child = child_options(self, opts)

        account = register(service_account_manifest(picker), child)
        role = register(role_manifest(picker), child)
        binding = register(role_binding_manifest(picker), child_options(self, opts, account, role))
        settings = register(config_map_manifest(picker), child)
        self.deployment = register(deployment_manifest(picker), child_options(self, opts, binding, settings))
        self.service = register(service_manifest(picker), child)
        budget = disruption_budget_manifest(picker)
        self.disruption_budget = register(budget, child) if budget is not None else None
        # The pool names the Service as its picker; create it once the Service exists.
        self.pool = register(inference_pool_manifest(picker), child_options(self, opts, self.service))
        # Objectives and rewrites name the pool; the EPP reads them once it watches the pool.
        self.request_management = [
            register(manifest, child_options(self, opts, self.pool))
            for manifest in [*objective_manifests(picker), model_rewrite_manifest(picker)]
            if manifest is not None
        ]
        self.pool_name = picker.pool_name
        self.service_name = picker.epp_name
        self.register_outputs({"poolName": self.pool_name, "serviceName": self.service_name})


def _metadata(picker: Picker) -> dict[str, Any]:
    return {"name": picker.epp_name, "namespace": picker.namespace, "labels": epp_labels(picker)}


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration (``50ms``, ``2s``), the form both EPPs parse."""
    milliseconds = round(seconds * 1000)
    if milliseconds % 1000 == 0:
        return f"{milliseconds // 1000}s"
    if milliseconds > 0 and abs(milliseconds - seconds * 1000) < 1e-6:
        return f"{milliseconds}ms"
    return f"{round(seconds * 1_000_000)}us"
