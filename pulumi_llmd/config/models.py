"""Pydantic models for the whole stack configuration (Pulumi namespace ``llmd``).

Every default of the project lives here. Keys are camelCase in ``Pulumi.<stack>.yaml`` and
snake_case in Python. Unknown keys are rejected (``extra="forbid"``) so a typo fails loudly instead
of silently falling back to a default. Rules that span several keys live in ``rules.py``; this
module only describes shapes and single-field constraints.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import Field, field_validator, model_validator

from pulumi_llmd.config.base import ConfigModel
from pulumi_llmd.config.eks import EksConfig
from pulumi_llmd.config.errors import KeyProblem, refuse_repeats
from pulumi_llmd.config.gateways import (
    KGATEWAY_ENVOY_CLASS,
    GatewayProvider,
    KgatewayDataPlane,
    ProviderPins,
    pins,
)
from pulumi_llmd.config.gke import GkeConfig
from pulumi_llmd.config.images import ImageReference
from pulumi_llmd.config.mirrors import MirrorsConfig
from pulumi_llmd.config.nodes import validate_env, validate_labels
from pulumi_llmd.config.observability import AutoscalingConfig, MonitoringConfig, TracingConfig
from pulumi_llmd.config.precise import MAX_HASH_SEED, EppTokenizer, PrefixCacheMode, PrefixCachingHashAlgo

# RFC 1123 label: what Kubernetes accepts for namespaces and most object names.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes quantities ("500m", "16Gi", "2").
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# Release tags of the upstream projects we pin ("v1.6.1").
RELEASE_TAG = r"^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$"
# A DNS subdomain (GatewayClass names, Secret names).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Go-style durations as Gateway API accepts them ("300s", "5m", "1h").
DURATION = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"

# The images this project builds (epp/, sidecar/, simulator/ Dockerfiles): one registry and one tag,
# the package version, for all three.
PROJECT_IMAGE_REGISTRY = "ghcr.io/pulumi-llmd"
PROJECT_IMAGE_TAG = "0.1.0"


def project_image(name: str) -> str:
    """``epp``, ``sidecar`` or ``simulator`` as published by this project."""
    return f"{PROJECT_IMAGE_REGISTRY}/{name}:{PROJECT_IMAGE_TAG}"


# The RDMA shared device plugin's resources (Mellanox/k8s-rdma-shared-dev-plugin: resourcePrefix
# "rdma"), and the resource name the Network Operator's examples configure.
SHARED_RDMA_PREFIX = "rdma/"
DEFAULT_SHARED_RDMA_RESOURCE = "rdma/rdma_shared_device_a"

# llm-d's own endpoint picker and P/D sidecar at the release llm-d v0.10 documents (llm-d-router v0.10.0;
# image names from its Makefile EPP_IMAGE_NAME / SIDECAR_IMAGE_NAME, registry ghcr.io/llm-d as in
# config/charts/routerlib/values.yaml), for `llmd:epp.implementation: upstream`.
LLM_D_ROUTER_RELEASE = "v0.10.0"
UPSTREAM_EPP_IMAGE = f"ghcr.io/llm-d/llm-d-router-endpoint-picker:{LLM_D_ROUTER_RELEASE}"
UPSTREAM_SIDECAR_IMAGE = f"ghcr.io/llm-d/llm-d-router-disagg-sidecar:{LLM_D_ROUTER_RELEASE}"

# The two EndpointPickerConfig API versions in use (llm-d, and GIE up to v1.5).
EPP_CONFIG_API_VERSIONS = ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1")

Quantity = Annotated[str, Field(pattern=QUANTITY)]
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]


class PlatformName(StrEnum):
    ONPREM = "onprem"
    KIND = "kind"
    GKE = "gke"
    EKS = "eks"


class Engine(StrEnum):
    """What runs in the model-server pods."""

    VLLM = "vllm"
    # The bundled vLLM simulator (`python -m simulator`, its own image): same HTTP API and metrics, no GPU.
    SIMULATOR = "simulator"


class FailureMode(StrEnum):
    """What the gateway does with a request when the endpoint picker is unavailable."""

    FAIL_OPEN = "FailOpen"
    FAIL_CLOSE = "FailClose"


# Model names clients send: vLLM's --served-model-name and --lora-modules take them as given, and
# --served-models / the body router's table are comma- and newline-free lists of them.
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^,\s]+$")]
# The LoRA ranks vLLM 0.32 accepts (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# InferenceModelRewrite target weights (llm-d-router apix/v1alpha2, llm-d.ai_inferencemodelrewrites.yaml).
MAX_REWRITE_WEIGHT = 1_000_000
INT32 = 2**31


class LoraAdapterConfig(ConfigModel):
    """One LoRA adapter of a model: a name clients send, served by the model's pools."""

    name: ModelName = Field(
        description="Adapter name clients put in the request body's `model` (vLLM's LoRA name); unique "
        "across the stack's models and adapters."
    )
    uri: str | None = Field(
        default=None,
        pattern=r"^(hf|pvc)://[^/\s]+(/\S*)?$",
        description="Where the adapter's files are: `hf://org/adapter` (vLLM downloads it, with the "
        "`llmd:hfToken` token) or `pvc://claim/path/in/claim` (mounted read-only); loaded at start-up with "
        "`--lora-modules`. Unset: the adapter is loaded at run time (needs `lora.runtimeLoading`), from "
        "`lora.resolverDir` on its first request or through vLLM's `/v1/load_lora_adapter`.",
    )

    @property
    def source(self) -> Literal["hf", "pvc"] | None:
        if self.uri is None:
            return None
        return "hf" if self.uri.startswith("hf://") else "pvc"


class LoraConfig(ConfigModel):
    """LoRA adapters on a model's pools (vLLM `--enable-lora`)."""

    adapters: list[LoraAdapterConfig] = Field(
        default_factory=list, description="The adapters clients may name; every pod of the model serves them."
    )
    max_loras: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="vLLM `--max-loras`: adapters one batch may mix (GPU slots); unset keeps vLLM's "
        "default (1).",
    )
    max_lora_rank: int | None = Field(
        default=None,
        description="vLLM `--max-lora-rank` (1, 8, 16, 32, 64, 128, 256, 320 or 512); unset keeps vLLM's "
        "default (16).",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        description="vLLM `--max-cpu-loras`: adapters kept in CPU memory; unset keeps vLLM's default "
        "(maxLoras).",
    )
    runtime_loading: bool = Field(
        default=False,
        description="`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`: vLLM's `/v1/load_lora_adapter` and "
        "`/v1/unload_lora_adapter`, and loading adapters from `resolverDir` on first use.",
    )
    resolver_dir: str | None = Field(
        default=None,
        pattern=r"^pvc://[^/\s]+(/\S*)?$",
        description="`pvc://claim/dir`: a directory of adapters (`<dir>/<adapter name>`) that vLLM's "
        "filesystem LoRA resolver loads on an adapter's first request (`VLLM_LORA_RESOLVER_CACHE_DIR`); "
        "needs runtimeLoading.",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, rank: int | None) -> int | None:
        if rank is not None and rank not in VLLM_LORA_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, VLLM_LORA_RANKS))} (vLLM's ranks)")
        return rank

    @property
    def enabled(self) -> bool:
        return bool(self.adapters) or self.runtime_loading


class RewriteTargetConfig(ConfigModel):
    model: ModelName = Field(description="The base model or adapter (of the same model) requests go to.")
    weight: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REWRITE_WEIGHT,
        description="Relative share of traffic; set it on every target of a rule or on none (an even split).",
    )


class ModelRewriteConfig(ConfigModel):
    """An InferenceModelRewrite rule: requests naming `model` go to one of `targets`."""

    model: ModelName = Field(description="The model name clients send (matched exactly).")
    targets: list[RewriteTargetConfig] = Field(
        min_length=1, description="Where those requests go, chosen per request by weight."
    )


class ObjectiveConfig(ConfigModel):
    """An InferenceObjective: a request priority clients select with a header."""

    name: DnsLabel = Field(
        description="Object name, which requests name in `x-llm-d-inference-objective`; unique in the stack."
    )
    priority: int = Field(
        default=0,
        ge=-INT32,
        lt=INT32,
        description="Higher is served first under load; negative priorities are sheddable (429 when the "
        "pool is saturated).",
    )


class ModelConfig(ConfigModel):
    """The model every pool serves."""

    name: str = Field(
        min_length=1,
        description="Served model name clients put in the request body (`--served-model-name`).",
    )
    uri: str = Field(
        pattern=r"^(hf|pvc)://[^/\s]+(/\S*)?$",
        description="Where the weights come from: `hf://org/model` (Hugging Face, token from the "
        "`llmd:hfToken` secret) or `pvc://claim/path/in/claim` (a PersistentVolumeClaim in the namespace).",
    )
    engine: Engine = Field(
        default=Engine.VLLM,
        description="`vllm` for real model servers, `simulator` for the bundled vLLM simulator (no GPUs).",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="vLLM `--max-model-len`; unset lets vLLM derive it from the model."
    )
    enable_prefix_caching: bool = Field(default=True, description="vLLM automatic prefix caching.")
    cache_size: Quantity = Field(
        default="100Gi", description="Size limit of the emptyDir that holds hf:// downloads."
    )
    label: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
        description="Value of the `llm-d.ai/model` label; defaults to a label-safe form of `name`.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters served with the model.")
    rewrites: list[ModelRewriteConfig] = Field(
        default_factory=list,
        description="InferenceModelRewrite rules: names clients send that go to this model or its adapters, "
        "with weighted splits.",
    )
    objectives: list[ObjectiveConfig] = Field(
        default_factory=list, description="InferenceObjectives (request priorities) of the model's pool."
    )
    # Precise prefix routing (epp.prefixCache precise) needs the pods and the EPP to agree on these.
    block_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="vLLM `--block-size` (tokens per KV block); unset lets vLLM choose (16 on CUDA, 128 on "
        "CPU). Required with epp.prefixCache precise, whose EPP computes the pods' block keys.",
    )
    prefix_caching_hash_algo: PrefixCachingHashAlgo = Field(
        default="sha256_cbor",
        description="vLLM `--prefix-caching-hash-algo` of the block keys (llm-d recommends sha256_cbor); "
        "set on the pods and the EPP with epp.prefixCache precise only.",
    )
    hash_seed: str = Field(
        default="0",
        pattern=r"^[0-9]{1,10}$",
        description="`PYTHONHASHSEED` of the model servers, which seeds vLLM's block keys; set on the pods "
        "and the EPP with epp.prefixCache precise only.",
    )

    @field_validator("hash_seed", mode="before")
    @classmethod
    def _python_hash_seed(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `hashSeed: 0` in YAML is a number
        if isinstance(value, str) and value.isdigit() and int(value) > MAX_HASH_SEED:
            raise ValueError(f"must be at most {MAX_HASH_SEED} (Python's PYTHONHASHSEED range)")
        return value

    @property
    def source(self) -> Literal["hf", "pvc"]:
        return "hf" if self.uri.startswith("hf://") else "pvc"

    @property
    def label_value(self) -> str:
        if self.label is not None:
            return self.label
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name)[:63]
        return safe.strip("-_.") or "model"

    @property
    def adapter_names(self) -> list[str]:
        return [adapter.name for adapter in self.lora.adapters]

    @property
    def served_names(self) -> list[str]:
        """Every model name a request may carry for this model, in order: the base model, its adapters,
        then the names its rewrite rules take in."""
        names = [self.name, *self.adapter_names]
        names += [rule.model for rule in self.rewrites if rule.model not in names]
        return names


class CrdsConfig(ConfigModel):
    """Cluster-wide CRDs. Installed from the upstream release assets and retained on delete."""

    install: bool = Field(
        default=True, description="Install the CRDs; set false when the cluster already has them."
    )
    gateway_api_version: str | None = Field(
        default=None,
        pattern=RELEASE_TAG,
        description="Gateway API release (standard channel); unset: the one the gateway provider is built "
        "against (agentgateway v1.6.1, istio v1.5.1, kgateway v1.4.1). GKE installs its own.",
    )
    # v1.6.2: the newest GIE release (kubernetes-sigs/gateway-api-inference-extension releases; its
    # v1-manifests.yaml asset is built by the Makefile's `release` target); InferencePool v1 unchanged.
    inference_extension_version: str = Field(
        default="v1.6.2",
        pattern=RELEASE_TAG,
        description="Gateway API Inference Extension release providing InferencePool v1 (on GKE from "
        "Kubernetes 1.34, GKE installs it).",
    )
    llmd_router_version: str = Field(
        default=LLM_D_ROUTER_RELEASE,
        pattern=RELEASE_TAG,
        description="llm-d-router release providing InferenceObjective and InferenceModelRewrite "
        "(`llm-d.ai/v1alpha2`), which llm-d's EPP requires and both EPPs read.",
    )
    lws_version: str = Field(
        default="v0.10.0",
        pattern=RELEASE_TAG,
        description="LeaderWorkerSet release (CRD + controller); installed only when a pool has "
        "nodesPerReplica > 1.",
    )


# The OpenAI API paths clients call that vLLM serves (vLLM 0.32 vllm/entrypoints/openai/{completion,
# chat_completion,responses}/api_router.py, pooling/embed/api_router.py, the /v1/models route) and
# both EPPs parse (epp/server/body.py; llm-d-router v0.10.0 .../parsers/openai/openai.go). Exact
# matches: GET /v1/responses/{id} is left out (a stored response lives on one pod, which the EPP
# cannot find), as are /metrics, /tokenize, /health and the admin routes (issue 12, finding 8).
OPENAI_API_PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/v1/embeddings",
    "/v1/responses",
)
# An HTTP path as Gateway API's HTTPRoute accepts it (no query, no fragment, no spaces).
HTTP_PATH = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
# Chart versions: release tags with or without the "v" (Istio's charts have none).
CHART_VERSION = r"^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$"


class GatewayConfig(ConfigModel):
    """The gateway provider and the Gateway/HTTPRoute in front of the InferencePool."""

    # Every unset key follows the provider (pulumi_llmd/config/gateways.py): switching is one key.

    provider: GatewayProvider = Field(
        default=GatewayProvider.AGENTGATEWAY,
        description="Gateway implementation: `agentgateway` (llm-d's preferred gateway), `istio` (llm-d's "
        "default), `kgateway` (2.1, its last line with inference; deprecated upstream) or `gke` (GKE's "
        "managed gateway; platform gke only).",
    )
    install: bool = Field(
        default=True,
        description="Install the provider's control plane (charts); false when the cluster already runs "
        "it. GKE's is managed: nothing to install.",
    )
    version: str | None = Field(
        default=None,
        pattern=CHART_VERSION,
        description="Control-plane chart version; unset pins the provider's (agentgateway v1.4.1, istio "
        "1.30.3, kgateway v2.1.3).",
    )
    namespace: DnsLabel | None = Field(
        default=None,
        description="Namespace of the control plane; unset: agentgateway-system, istio-system or "
        "kgateway-system.",
    )
    class_name: str | None = Field(
        default=None,
        min_length=1,
        pattern=DNS_SUBDOMAIN,
        description="GatewayClass of the Gateway; unset: the provider's (agentgateway, istio, kgateway's "
        "data-plane class, gke-l7-regional-external-managed).",
    )
    kgateway_data_plane: KgatewayDataPlane | None = Field(
        default=None,
        description="kgateway only: `agentgateway` (unset; what kgateway 2.1 recommends for inference) or "
        "`envoy` (deprecated in 2.1, removed in 2.2).",
    )
    listener_port: int = Field(default=80, ge=1, le=65535, description="HTTP listener port of the Gateway.")
    request_timeout: str = Field(
        default="300s",
        pattern=DURATION,
        description="Request timeout (long generations): the HTTPRoute's, or GKE's backend timeout.",
    )
    paths: list[Annotated[str, Field(pattern=HTTP_PATH, max_length=1024)]] = Field(
        default_factory=lambda: list(OPENAI_API_PATHS),
        min_length=1,
        max_length=64,
        description="Exact request paths the HTTPRoute sends to the pool: the OpenAI API, not the model "
        "servers' /metrics, /tokenize or admin routes.",
    )

    @property
    def pins(self) -> ProviderPins:
        return pins(self.provider)

    @property
    def effective_version(self) -> str | None:
        return self.version or self.pins.control_plane_version

    @property
    def effective_namespace(self) -> str | None:
        return self.namespace or self.pins.namespace

    @property
    def installs_control_plane(self) -> bool:
        """The provider's charts (and their namespace) are installed by the stack unless it says not
        to; GKE's controller is managed."""
        return self.install and self.pins.control_plane_version is not None

    @property
    def effective_data_plane(self) -> KgatewayDataPlane:
        return self.kgateway_data_plane or KgatewayDataPlane.AGENTGATEWAY

    @property
    def effective_class_name(self) -> str:
        if self.class_name is not None:
            return self.class_name
        if self.provider is GatewayProvider.KGATEWAY and self.effective_data_plane is KgatewayDataPlane.ENVOY:
            return KGATEWAY_ENVOY_CLASS
        return self.pins.class_name


class ResourcesConfig(ConfigModel):
    cpu: Quantity = Field(description="CPU request (no CPU limit: throttling hurts latency).")
    memory: Quantity = Field(description="Memory request and limit.")


class AcceleratorConfig(ConfigModel):
    resource: str = Field(
        default="nvidia.com/gpu",
        pattern=r"^[a-z0-9.-]+/[a-z0-9_.-]+$",
        description="Extended resource name of one accelerator.",
    )
    count: int | None = Field(
        default=None,
        ge=0,
        description="Accelerators per pod; unset means the pool's tensorParallel. 0 disables requests.",
    )


# A model-server pod usually takes a whole GPU node (or all the GPUs a node has free), so a surge pod
# stays Pending until some other pod goes away and a maxSurge 1 / maxUnavailable 0 rollout never
# finishes. GPU pools therefore default to maxSurge 0 / maxUnavailable 1, as llm-d rolls its prefill
# pools (llm-d guides/pd-disaggregation/modelserver/gpu/vllm/base/disaggregatedset.yaml, which also
# warns that a decode surge needs spare GPUs); pools without accelerators (the simulator) keep full
# capacity with maxSurge 1 / maxUnavailable 0.
class RolloutConfig(ConfigModel):
    """How a pool replaces its pods, and how long one new pod may take to become ready."""

    max_surge: int | None = Field(
        default=None,
        ge=0,
        description="Pods a rollout may add above `replicas`; each needs free GPUs for a whole pod. "
        "Unset: 0 for pools with accelerators, 1 without.",
    )
    max_unavailable: int | None = Field(
        default=None,
        ge=0,
        description="Pods a rollout may take down before their replacements are ready. Unset: 1 for "
        "pools with accelerators, 0 without. With a spare GPU node, set maxSurge 1 and "
        "maxUnavailable 0 to roll without losing capacity.",
    )
    ready_timeout_minutes: int = Field(
        default=60,
        ge=5,
        le=24 * 60,
        description="How long one new pod may take to become ready: image pull, weight download, "
        "load and compile. Sizes the startup probe, the Deployment's progressDeadlineSeconds and "
        "Pulumi's customTimeouts (create: one such wait; update: one per batch of the rollout).",
    )

    def strategy(self, *, accelerated: bool) -> tuple[int, int]:
        """(maxSurge, maxUnavailable) with the defaults for this kind of pool filled in."""
        surge = self.max_surge if self.max_surge is not None else (0 if accelerated else 1)
        unavailable = self.max_unavailable if self.max_unavailable is not None else (1 if accelerated else 0)
        return surge, unavailable


class PoolConfig(ConfigModel):
    """Shared shape of the prefill and decode pools."""

    replicas: int = Field(
        default=1, ge=0, description="Model-server replicas (groups, with nodesPerReplica > 1)."
    )
    tensor_parallel: int = Field(default=1, ge=1, le=64, description="vLLM `--tensor-parallel-size`.")
    nodes_per_replica: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Nodes one replica spans; > 1 renders a LeaderWorkerSet "
        "(vLLM pipeline parallel over Ray).",
    )
    image: ImageReference | None = Field(
        default=None,
        description="Container image (`name:tag`, `name@sha256:<digest>` or `name:tag@sha256:<digest>`); "
        "unset picks the engine's default (the vLLM image, or this project's simulator image).",
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra vLLM arguments, appended last.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra container environment.")
    resources: ResourcesConfig = Field(
        default_factory=lambda: ResourcesConfig(cpu="8", memory="64Gi"),
        description="CPU/memory per model-server container.",
    )
    accelerator: AcceleratorConfig = Field(default_factory=AcceleratorConfig, description="GPUs per pod.")
    shm_size: Quantity = Field(default="16Gi", description="Size of the /dev/shm memory volume.")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="Rollout strategy and how long a new pod may take to become ready.",
    )

    _env = field_validator("env")(validate_env)

    def accelerators_per_pod(self) -> int:
        return self.tensor_parallel if self.accelerator.count is None else self.accelerator.count

    def rollout_strategy(self) -> tuple[int, int]:
        """(maxSurge, maxUnavailable) of this pool's rollouts."""
        return self.rollout.strategy(accelerated=self.accelerators_per_pod() > 0)


class PrefillConfig(PoolConfig):
    enabled: bool = Field(
        default=True,
        description="Prefill/decode disaggregation: a prefill pool, the decode-side sidecar "
        "and NIXL KV transfer.",
    )


class SidecarConfig(ConfigModel):
    image: ImageReference = Field(
        default_factory=lambda: project_image("sidecar"),
        description="Sidecar image (sidecar/Dockerfile, published by the release workflow); a tag, a "
        "`@sha256:` digest or both.",
    )
    upstream_image: ImageReference = Field(
        default=UPSTREAM_SIDECAR_IMAGE,
        description="llm-d's disagg sidecar image, run instead with `epp.implementation: upstream`.",
    )
    kv_connector: Literal["nixlv2"] = Field(default="nixlv2", description="Sidecar `--kv-connector`.")
    resources: ResourcesConfig = Field(
        default_factory=lambda: ResourcesConfig(cpu="1", memory="1Gi"), description="Sidecar CPU/memory."
    )


class DecodeConfig(PoolConfig):
    replicas: int = Field(default=1, ge=1, description="Decode replicas (groups, with nodesPerReplica > 1).")
    sidecar: SidecarConfig = Field(
        default_factory=SidecarConfig, description="The P/D routing sidecar on decode pods."
    )


# Go durations as llm-d's metav1.Duration takes them ("60s", "1m30s", "500ms"; "0s" = no limit).
GO_DURATION = r"^(0|([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+)$"
# Kubernetes quantities for flow-control limits ("5000", "5k", "1Gi").
FlowQuantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$")]
FairnessPolicy = Literal["round-robin-fairness-policy", "global-strict-fairness-policy"]
OrderingPolicy = Literal["fcfs-ordering-policy", "edf-ordering-policy", "slo-deadline-ordering-policy"]


# As a template (defaultPriorityBand, defaultNegativePriorityBand) a band has no priority of its own.
class FlowControlBand(ConfigModel):
    """A priority band's limits and policies (llm-d's `PriorityBandConfig`)."""

    max_requests: FlowQuantity | None = Field(
        default=None, description="Queued requests the band holds before it rejects (llm-d default 5000)."
    )
    max_bytes: FlowQuantity | None = Field(
        default=None, description="Queued request bytes the band holds (llm-d default 1G)."
    )
    fairness_policy: FairnessPolicy | None = Field(
        default=None,
        description="Which flow (fairness id) of the band goes next (llm-d default global-strict).",
    )
    ordering_policy: OrderingPolicy | None = Field(
        default=None, description="Which request of a flow goes next (llm-d default fcfs)."
    )


class FlowControlPriorityBand(FlowControlBand):
    priority: int = Field(description="The InferenceObjective priority this band serves.")


class SaturationDetectorConfig(ConfigModel):
    """What tells flow control that the pool is full (llm-d's detector plugins and their parameters)."""

    type: Literal["utilization-detector", "concurrency-detector"] = Field(
        default="utilization-detector",
        description="`utilization-detector`: scraped queue depth and KV-cache use (llm-d's default); "
        "`concurrency-detector`: the EPP's own in-flight count per pod, current to the request.",
    )
    queue_depth_threshold: int | None = Field(
        default=None,
        ge=1,
        description="utilization-detector: requests per pod waiting for their first token that count as "
        "full (5): the scraped queue, or the EPP's own unanswered dispatches when larger.",
    )
    kv_cache_util_threshold: float | None = Field(
        default=None, gt=0, le=1, description="utilization-detector: KV-cache use that counts as full (0.8)."
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="concurrency-detector: requests in flight per pod (decode included) at which the "
        "pool is full (100); size it with `python -m benchmarks.capacity` (in flight at the pod's SLO knee).",
    )
    concurrency_mode: Literal["requests", "tokens", "hybrid"] | None = Field(
        default=None,
        description="concurrency-detector: what it counts (`requests`): `tokens` counts uncached prompt "
        "tokens not yet answered (the prefill queued, which requests in decode do not inflate); "
        "`hybrid` the stricter of both.",
    )
    max_token_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="concurrency-detector, tokens/hybrid: prompt tokens awaiting their first byte per "
        "pod at which the pool is full (1000000).",
    )
    headroom: float | None = Field(
        default=None, ge=0, description="Burst above the limit a single pod may take as a filter (0)."
    )
    filter: bool = Field(
        default=False,
        description="Also a scheduling filter: no pod gets more than its limit x (1 + headroom), so a "
        "burst cannot herd onto one pod.",
    )

    @model_validator(mode="after")
    def _parameters_fit_the_type(self) -> SaturationDetectorConfig:
        utilization_only = {
            "queueDepthThreshold": self.queue_depth_threshold,
            "kvCacheUtilThreshold": self.kv_cache_util_threshold,
        }
        concurrency_only = {
            "maxConcurrency": self.max_concurrency,
            "concurrencyMode": self.concurrency_mode,
            "maxTokenConcurrency": self.max_token_concurrency,
        }
        wrong_for_type = utilization_only if self.type == "concurrency-detector" else concurrency_only
        wrong = [key for key, value in wrong_for_type.items() if value is not None]
        if wrong:
            also = f" (nor does {', '.join(wrong[1:])})" if len(wrong) > 1 else ""
            raise KeyProblem(wrong[0], f"does not apply to type {self.type}{also}")
        return self

    def parameters(self) -> dict[str, Any]:
        """The plugin's parameters under llm-d's names (only the ones set)."""
        values = {
            "queueDepthThreshold": self.queue_depth_threshold,
            "kvCacheUtilThreshold": self.kv_cache_util_threshold,
            "maxConcurrency": self.max_concurrency,
            "concurrencyMode": self.concurrency_mode,
            "maxTokenConcurrency": self.max_token_concurrency,
            "headroom": self.headroom,
        }
        return {key: value for key, value in values.items() if value is not None}


class UsageLimitConfig(ConfigModel):
    """How the gate's ceiling varies by priority (llm-d's usage-limit policy plugins)."""

    type: Literal["static-usage-limit-policy", "priority-holdback-policy"] = Field(
        default="static-usage-limit-policy",
        description="`static-usage-limit-policy`: one ceiling for all; `priority-holdback-policy`: lower "
        "priorities stop at lower saturation, leaving room for higher ones.",
    )
    threshold: float | None = Field(
        default=None, gt=0, le=1, description="static: the ceiling (1.0 = up to the detector's limit)."
    )
    min_ceiling: float | None = Field(
        default=None, ge=0, lt=1, description="holdback (required): the lowest priority's ceiling."
    )
    max_ceiling: float | None = Field(
        default=None, gt=0, le=1, description="holdback: the highest priority's ceiling (1.0)."
    )
    domain: Literal["rank", "value"] | None = Field(
        default=None, description="holdback: spread the ceilings by rank (default) or by priority value."
    )

    @model_validator(mode="after")
    def _parameters_fit_the_type(self) -> UsageLimitConfig:
        holdback = {"minCeiling": self.min_ceiling, "maxCeiling": self.max_ceiling, "domain": self.domain}
        if self.type == "static-usage-limit-policy":
            wrong = [key for key, value in holdback.items() if value is not None]
            if wrong:
                also = f" (nor does {', '.join(wrong[1:])})" if len(wrong) > 1 else ""
                raise KeyProblem(wrong[0], f"does not apply to type {self.type}{also}")
        else:
            if self.threshold is not None:
                raise KeyProblem("threshold", f"does not apply to type {self.type}")
            if self.min_ceiling is None:
                raise KeyProblem("minCeiling", "is required for priority-holdback-policy")
            if self.max_ceiling is not None and self.min_ceiling > self.max_ceiling:
                raise KeyProblem(
                    "minCeiling", f"({self.min_ceiling}) must not exceed maxCeiling ({self.max_ceiling})"
                )
        return self

    def parameters(self) -> dict[str, Any]:
        values = {
            "threshold": self.threshold,
            "minCeiling": self.min_ceiling,
            "maxCeiling": self.max_ceiling,
            "domain": self.domain,
        }
        return {key: value for key, value in values.items() if value is not None}


# Requests wait in the EPP, per priority band and fairness id, until the saturation detector says the
# pool has room; a request whose wait outlasts its TTL, or that finds its band full, gets 429 (503 when
# the pool has no endpoints).
class EppFlowControlConfig(ConfigModel):
    """llm-d's flow control: queue in the EPP until the pool has room, shed with 429/503."""

    enabled: bool = Field(
        default=False,
        description="Render `featureGates: [flowControl]` and the section. Off by default, as in llm-d: "
        "the gate that protects a TTFT SLO needs this pool's number "
        "(`saturationDetector.queueDepthThreshold` or a concurrency-detector limit, measured with "
        "`python -m benchmarks.saturation`); "
        "docs/flow-control.md.",
    )
    # llm-d spells these keys with "TTL"; the Python names keep its capitals because the package
    # schema's key is the field name camel-cased (pulumi's analyzer), and it must equal the stack key.
    default_request_TTL: str = Field(
        default="60s",
        alias="defaultRequestTTL",
        pattern=GO_DURATION,
        description='Longest queue wait while the pool has endpoints ("0s": until the client leaves). '
        "Keep it below gateway.requestTimeout.",
    )
    no_endpoint_request_TTL: str | None = Field(
        default=None,
        alias="noEndpointRequestTTL",
        pattern=GO_DURATION,
        description="Longest queue wait while the pool has no endpoints (scale from zero); unset follows "
        "defaultRequestTTL.",
    )
    max_requests: FlowQuantity | None = Field(default=None, description="Global queued-request limit.")
    max_bytes: FlowQuantity | None = Field(default=None, description="Global queued-byte limit.")
    default_priority_band: FlowControlBand = Field(
        default_factory=lambda: FlowControlBand(fairness_policy="round-robin-fairness-policy"),
        description="Template of every priority not listed (here: round-robin across fairness ids).",
    )
    default_negative_priority_band: FlowControlBand | None = Field(
        default_factory=lambda: FlowControlBand(
            max_requests="64", fairness_policy="round-robin-fairness-policy"
        ),
        description="Template of bands below priority 0 (sheddable): a short queue, so they are shed first.",
    )
    priority_bands: list[FlowControlPriorityBand] = Field(
        default_factory=list, description="Bands of particular priorities."
    )
    saturation_detector: SaturationDetectorConfig = Field(
        default_factory=SaturationDetectorConfig, description="The dispatch gate."
    )
    usage_limit: UsageLimitConfig = Field(
        default_factory=UsageLimitConfig, description="The gate's ceiling per priority."
    )

    @model_validator(mode="after")
    def _one_band_per_priority(self) -> EppFlowControlConfig:
        # The EPP refuses a config with two bands of one priority at startup (epp/flowcontrol/config.py:
        # "duplicate priority"), so the pods would crash-loop while `pulumi up` waits for them.
        refuse_repeats(
            (band.priority for band in self.priority_bands),
            "priorityBands[{}].priority",
            "one band per priority",
        )
        return self


class EppImplementation(StrEnum):
    """Which endpoint picker (and P/D sidecar) runs behind the same Service, RBAC, config and pool."""

    # This project's Python EPP (`python -m epp`) and sidecar (`python -m sidecar`).
    BUNDLED = "bundled"
    # llm-d's own: llm-d-router's endpoint-picker and disagg-sidecar images.
    UPSTREAM = "upstream"


class EppConfig(ConfigModel):
    """The endpoint picker (`python -m epp`, or llm-d's) and its InferencePool wiring."""

    implementation: EppImplementation = Field(
        default=EppImplementation.BUNDLED,
        description="`bundled` (this project's EPP and P/D sidecar) or `upstream` (llm-d-router's images, "
        "same Service, RBAC, config and InferencePool: A/B the two on one cluster).",
    )
    image: ImageReference = Field(
        default_factory=lambda: project_image("epp"),
        description="EPP image (epp/Dockerfile, published by the release workflow); a tag, a "
        "`@sha256:` digest or both.",
    )
    upstream_image: ImageReference = Field(
        default=UPSTREAM_EPP_IMAGE,
        description="llm-d's endpoint-picker image, run with `implementation: upstream`.",
    )
    replicas: int = Field(
        default=2,
        ge=1,
        le=16,
        description="EPP replicas, active-active: the gateway spreads requests over the ready ones, so a "
        "restart or a rollout of one replica loses nothing (one replica is an outage on every restart). "
        "Each keeps its own approximate prefix index.",
    )
    leader_election: bool = Field(
        default=False,
        description="Active-passive EPP replicas: pass `--ha-enable-leader-election` and grant access to "
        "the pool's Lease (and Events for the upstream EPP, which records leadership changes); only the "
        "replica holding it reports ready (bundled and upstream EPP images alike). A rollout or a kill of "
        "the leader then loses requests until a standby takes over. Rollouts replace every replica at once "
        "(no new pod can lead while the old leader runs), there is no PodDisruptionBudget (it would block "
        "draining the leader's node) and Pulumi does not wait for the EPP Deployment (it never has every "
        "replica ready).",
    )
    failure_mode: FailureMode = Field(
        default=FailureMode.FAIL_CLOSE,
        description="InferencePool endpointPickerRef.failureMode: what the gateway does "
        "when the EPP is down.",
    )
    secure_serving: bool = Field(
        default=True,
        description="`--secure-serving`: TLS on the ext_proc port, as upstream EPPs and every gateway "
        "expect (a self-signed certificate unless tlsSecretName is set); off serves plaintext gRPC.",
    )
    tls_secret_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="A `kubernetes.io/tls` Secret (tls.crt, tls.key; e.g. from cert-manager) mounted for "
        "`--cert-path` with `--enable-cert-reload` (a renewed certificate is served without a restart); "
        "unset: the EPP makes a self-signed one at start.",
    )
    config: str | None = Field(
        default=None,
        min_length=1,
        description="A full EndpointPickerConfig YAML overriding the generated one.",
    )
    prefix_cache: PrefixCacheMode = Field(
        default=PrefixCacheMode.APPROXIMATE,
        description="`approximate` (the EPP guesses each pod's cache from its own routing) or `precise` "
        "(model servers publish vLLM KV events on ports 5557/5558 and the EPP indexes them; needs "
        "model.blockSize; docs/precise-prefix.md).",
    )
    tokenizer: EppTokenizer | None = Field(
        default=None,
        description="Precise mode: the EPP's tokenizer, `hub` (downloaded from the Hugging Face Hub at "
        "start), `path` (the model's PVC mounted read-only) or `simulator` (simulated pools); unset picks "
        "simulator, hub or path from model.engine and model.uri.",
    )
    pd_non_cached_tokens: int = Field(
        default=16,
        ge=0,
        description="prefix-based-pd-decider `nonCachedTokens`: disaggregate when at least this many "
        "prompt tokens are not cached on the chosen decode pod.",
    )
    # Rendered as Go durations at millisecond resolution (components.picker.go_duration): below
    # 1 ms a value became "0s" (a scrape loop without pause); past the hour bound it stops meaning
    # anything, and 1e20 s overflowed the Go duration the upstream EPP parses.
    refresh_metrics_interval: float = Field(
        default=0.05, ge=0.001, le=3600, description="`--refresh-metrics-interval` in seconds."
    )
    metrics_staleness_threshold: float = Field(
        default=2.0, ge=0.001, le=3600, description="`--metrics-staleness-threshold` in seconds."
    )
    refresh_metrics_idle_interval: float = Field(
        default=0.5,
        ge=0,
        le=3600,
        description="Bundled EPP: `--refresh-metrics-idle-interval` in seconds, how often a quiet pod "
        "(idle, unchanged, nothing routed to it since) is scraped; 0 (or anything not above "
        "refreshMetricsInterval) scrapes every pod every refreshMetricsInterval, as the upstream EPP always "
        "does (docs/cpu-bill.md).",
    )
    metrics_name_filter: bool = Field(
        default=True,
        description="Bundled EPP: `--metrics-name-filter`, scrape each pod's page filtered to the metrics "
        "the EPP reads (`name[]` parameters, which vLLM honours on `/metrics/`) once it is checked against "
        "the full page; false scrapes the full page, as the upstream EPP does (docs/cpu-bill.md).",
    )
    resources: ResourcesConfig = Field(
        default_factory=lambda: ResourcesConfig(cpu="2", memory="2Gi"), description="EPP CPU/memory."
    )
    flow_control: EppFlowControlConfig = Field(
        default_factory=EppFlowControlConfig,
        description="llm-d's flow control in the generated EPP config (ignored with `config`).",
    )

    @field_validator("config")
    @classmethod
    def _picker_config_shape(cls, text: str | None) -> str | None:
        """Catch a broken override here, not when the EPP pod crash-loops. Plugin names are the
        EPP's business (upstream images accept more than the bundled one)."""
        if text is None:
            return None
        try:
            document = yaml.safe_load(text)
        except yaml.MarkedYAMLError as error:
            where = f" at line {error.problem_mark.line + 1}" if error.problem_mark else ""
            raise ValueError(f"is not valid YAML ({error.problem}{where})") from None
        except yaml.YAMLError as error:  # e.g. characters YAML does not allow
            raise ValueError(f"is not valid YAML ({error})") from None
        if not isinstance(document, dict) or document.get("kind") != "EndpointPickerConfig":
            raise ValueError("must be a YAML mapping with kind: EndpointPickerConfig")
        if document.get("apiVersion") not in EPP_CONFIG_API_VERSIONS:
            raise ValueError(f"apiVersion must be one of {', '.join(EPP_CONFIG_API_VERSIONS)}")
        return text


class BodyRouterConfig(ConfigModel):
    """The body-based router (`python -m bbr`) in front of the endpoint pickers of a multi-model stack."""

    image: ImageReference = Field(
        default_factory=lambda: project_image("bbr"),
        description="Body-router image (bbr/Dockerfile, published by the release workflow); a tag, a "
        "`@sha256:` digest or both.",
    )
    replicas: int = Field(default=1, ge=1, le=16, description="Body-router replicas (stateless).")
    failure_mode: FailureMode = Field(
        default=FailureMode.FAIL_CLOSE,
        description="What the gateway does when the body router is down: FailClose answers an error; "
        "FailOpen sends the request on without the model header, to the first model's pool.",
    )
    secure_serving: bool = Field(
        default=True,
        description="TLS on the ext_proc port, as the gateway providers dial it (self-signed unless "
        "tlsSecretName is set).",
    )
    tls_secret_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description="A `kubernetes.io/tls` Secret (tls.crt, tls.key) the body router serves instead of a "
        "self-signed certificate.",
    )
    resources: ResourcesConfig = Field(
        default_factory=lambda: ResourcesConfig(cpu="500m", memory="256Mi"),
        description="Body-router CPU/memory.",
    )


class ModelEntryConfig(ModelConfig):
    """One model of a multi-model stack (`llmd:models`): the model, and its own pools and picker."""

    id: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=32,
        description="Short name in this model's object names (`<name>-<id>`, `<name>-<id>-decode`, "
        "`<name>-<id>-epp`); defaults to a DNS-label form of `name`. Keep it stable: changing it "
        "replaces the model's objects.",
    )
    prefill: PrefillConfig = Field(
        default_factory=PrefillConfig, description="This model's prefill pool (P/D)."
    )
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="This model's decode pool.")
    epp: EppConfig = Field(default_factory=EppConfig, description="This model's endpoint picker.")

    @property
    def resolved_id(self) -> str:
        if self.id is not None:
            return self.id
        safe = re.sub(r"[^a-z0-9]+", "-", self.name.lower())[:32].strip("-")
        return safe or "model"


@dataclass(frozen=True)
class ServedModel:
    """One model as the stack lays it out, whichever form the config used.

    ``key`` is where its settings are in the config (``model`` or ``models[1]``), so rules name the
    right key; ``prefix`` starts its object names: the stack's name in the single-model form (the
    names stacks have always had), ``<name>-<id>`` with ``llmd:models``."""

    key: str
    prefix: str
    model: ModelConfig
    prefill: PrefillConfig
    decode: DecodeConfig
    epp: EppConfig
    multi: bool
    id: str | None = None  # the entry's (resolved) id with llmd:models

    def model_key(self, field: str) -> str:
        """The config key of one of the model's own fields (``model.uri``, ``models[1].uri``)."""
        return f"{self.key}.{field}"

    def section_key(self, section: str) -> str:
        """The config key of its pool or picker settings (``decode.replicas``,
        ``models[1].decode.replicas``)."""
        return f"{self.key}.{section}" if self.multi else section

    @property
    def disaggregated(self) -> bool:
        return self.prefill.enabled


class OperatorChartConfig(ConfigModel):
    install: bool = Field(default=True, description="Install the chart; false when already installed.")
    version: str = Field(pattern=RELEASE_TAG, description="Chart version.")
    namespace: DnsLabel = Field(description="Namespace the operator runs in.")
    values: dict[str, Any] = Field(default_factory=dict, description="Helm values merged over ours.")


class RdmaNetworkConfig(ConfigModel):
    """One Multus NetworkAttachmentDefinition for an RDMA-capable NIC."""

    name: DnsLabel = Field(description="NetworkAttachmentDefinition name.")
    cni: Literal["macvlan", "ipoib", "host-device", "sriov"] = Field(
        default="macvlan", description="CNI plugin (macvlan on a RoCE PF, ipoib for InfiniBand ...)."
    )
    master: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,15}$",
        description="Host interface (macvlan/ipoib master, host-device device).",
    )
    ipam_range: str = Field(
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$",
        description="CIDR of the network's nv-ipam IPPool, which hands the pods their addresses.",
    )
    ips_per_node: int = Field(
        default=16,
        ge=2,
        description="Addresses nv-ipam gives each node out of ipamRange (the IPPool's perNodeBlockSize): "
        "at least the model-server pods one node runs.",
    )
    resource_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9.-]+/[a-z0-9_.-]+$",
        description="Device-plugin resource backing this network (sriov VFs), set as the NAD annotation.",
    )
    interface: str | None = Field(
        default=None, pattern=r"^[a-z0-9]{1,15}$", description="Interface name inside the pod (e.g. net1)."
    )

    @model_validator(mode="after")
    def _block_fits_the_range(self) -> Self:
        try:
            network = ipaddress.IPv4Network(self.ipam_range)
        except ValueError as error:
            raise KeyProblem("ipamRange", f"{self.ipam_range!r} is not an IPv4 network ({error})") from None
        usable = max(network.num_addresses - 2, 0)  # network and broadcast addresses
        if self.ips_per_node >= usable:
            # nv-ipam: perNodeBlockSize "must be less than amount of available IPs in the subnet".
            raise KeyProblem(
                "ipsPerNode",
                f"{self.ips_per_node} must be less than the {usable} usable addresses of "
                f"ipamRange {self.ipam_range}",
            )
        return self


class OnPremConfig(ConfigModel):
    """An existing cluster with NVIDIA GPUs and RDMA (RoCE or InfiniBand) NICs."""

    kube_context: str | None = Field(
        default=None, min_length=1, description="kubeconfig context; unset uses the current context."
    )
    gpu_operator: OperatorChartConfig = Field(
        default_factory=lambda: OperatorChartConfig(version="v26.7.0", namespace="gpu-operator"),
        description="NVIDIA GPU Operator chart (helm.ngc.nvidia.com/nvidia/gpu-operator).",
    )
    network_operator: OperatorChartConfig = Field(
        # v26.4.1: newest stable tag of Mellanox/network-operator (chart `version: 26.4.1`; Helm
        # resolves the leading v); its NicClusterPolicy CRD is the one the tests validate against.
        default_factory=lambda: OperatorChartConfig(version="v26.4.1", namespace="nvidia-network-operator"),
        description="NVIDIA Network Operator chart (helm.ngc.nvidia.com/nvidia/network-operator); it "
        "installs the operator and its CRDs only (since v24.10 the chart creates no NicClusterPolicy).",
    )
    nic_cluster_policy: bool = Field(
        default=True,
        description="With rdmaNetworks, create the cluster's NicClusterPolicy (one per cluster, named "
        "nic-cluster-policy): Multus, the CNI plugins, nv-ipam and the RDMA shared device plugin on the "
        "networks' interfaces. false when you manage that policy yourself.",
    )
    rdma_networks: list[RdmaNetworkConfig] = Field(
        default_factory=list, description="Multus networks attached to every model-server pod."
    )
    rdma_resource: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9.-]+/[a-z0-9_.-]+$",
        description="RDMA device-plugin resource each model-server container requests. Unset: "
        "`rdma/rdma_shared_device_a` (advertised by the NicClusterPolicy's shared device plugin) when "
        "rdmaNetworks name host interfaces, none otherwise.",
    )
    rdma_resource_count: int = Field(
        default=1, ge=0, description="How many of `rdmaResource` per container; 0 requests none."
    )
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="Node labels model-server pods require.",
    )
    gpu_taint: str | None = Field(
        default="nvidia.com/gpu",
        min_length=1,
        description="Taint key on GPU nodes that model-server pods tolerate (NoSchedule); null for none.",
    )
    ucx_net_devices: str | None = Field(
        default=None,
        min_length=1,
        description="`UCX_NET_DEVICES` (e.g. mlx5_0:1) to pin NIXL to the RDMA NICs.",
    )
    nccl_ib_hca: str | None = Field(default=None, min_length=1, description="`NCCL_IB_HCA` (e.g. mlx5).")

    @property
    def rdma_interfaces(self) -> list[str]:
        """Host interfaces of the RDMA networks: where the shared device plugin finds devices."""
        return sorted({n.master for n in self.rdma_networks if n.master})

    @property
    def effective_rdma_resource(self) -> str | None:
        if self.rdma_resource_count == 0:
            return None
        if self.rdma_resource is not None:
            return self.rdma_resource
        return DEFAULT_SHARED_RDMA_RESOURCE if self.rdma_interfaces else None

    _node_selector = field_validator("node_selector")(validate_labels)

    @model_validator(mode="after")
    def _rdma_resource_is_advertised(self) -> Self:
        # A resource nothing advertises leaves every model-server pod Pending. Ours is advertised by
        # the shared device plugin of the NicClusterPolicy we create, which selects devices by the
        # networks' host interfaces; without any there is nothing to advertise.
        resource = self.effective_rdma_resource
        if (
            self.nic_cluster_policy
            and resource is not None
            and resource.startswith(SHARED_RDMA_PREFIX)
            and not self.rdma_interfaces
        ):
            raise KeyProblem(
                "rdmaResource",
                f"{resource!r} would be advertised by nothing: the NicClusterPolicy's RDMA "
                "shared device plugin selects devices by the rdmaNetworks' master interfaces, and none "
                "is set; add rdmaNetworks with a master, set rdmaResourceCount: 0, or set "
                "nicClusterPolicy: false if you run the device plugin yourself",
            )
        return self


class KindConfig(ConfigModel):
    """A local kind cluster (no GPUs)."""

    cluster_name: DnsLabel = Field(default="llmd", description="kind cluster name (context kind-<name>).")


class NetworkPolicyConfig(ConfigModel):
    enabled: bool = Field(default=True, description="Render the NetworkPolicies.")
    metrics_namespace_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Namespace labels allowed to scrape EPP/model-server metrics (e.g. your Prometheus); "
        "empty allows none.",
    )
    ucx_tcp_between_pools: bool = Field(
        default=True,
        description="Allow all TCP between prefill and decode pods: UCX's TCP transport (used without "
        "RDMA) picks ephemeral ports.",
    )

    _labels = field_validator("metrics_namespace_labels")(validate_labels)


class LlmdStackConfig(ConfigModel):
    """What :class:`~pulumi_llmd.components.stack.LlmdStack` lays on a cluster: every key of the stack
    configuration except where the cluster comes from (``platform`` and its sections).

    The component package's ``LlmdStack`` args mirror exactly these keys (camelCase in the schema, as in
    ``Pulumi.<stack>.yaml``), and are validated by this model.
    """

    name: DnsLabel = Field(
        default="llmd",
        max_length=40,
        description="Prefix of every object name (pools, EPP, gateway); keep stable across updates.",
    )
    namespace: DnsLabel = Field(default="llm-d", description="Namespace of the inference stack.")
    kubernetes_version: str = Field(
        default="1.33",
        pattern=r"^1\.[0-9]{2}$",
        description="Kubernetes minor version the manifests target (and are validated against).",
    )
    model: ModelConfig | None = Field(
        default=None,
        description="The served model (one model; its pools are `prefill`, `decode`, its picker `epp`). "
        "Set this or `models`.",
    )
    models: list[ModelEntryConfig] | None = Field(
        default=None,
        min_length=1,
        description="Several models behind one gateway, each with its own pools, picker and InferencePool; "
        "a body router sends each request to the model its body names. Set this or `model`.",
    )
    body_router: BodyRouterConfig = Field(
        default_factory=BodyRouterConfig, description="The body router (with `models` only)."
    )
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="Gateway settings.")
    crds: CrdsConfig = Field(default_factory=CrdsConfig, description="CRD installation.")
    prefill: PrefillConfig = Field(default_factory=PrefillConfig, description="Prefill pool (P/D).")
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="Decode pool.")
    epp: EppConfig = Field(default_factory=EppConfig, description="Endpoint picker.")
    network_policy: NetworkPolicyConfig = Field(
        default_factory=NetworkPolicyConfig, description="NetworkPolicies."
    )
    monitoring: MonitoringConfig = Field(
        default_factory=MonitoringConfig, description="Prometheus monitors and rules, Grafana dashboards."
    )
    autoscaling: AutoscalingConfig = Field(
        default_factory=AutoscalingConfig, description="Autoscaling of the model-server pools."
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="OTLP tracing.")

    @field_validator("kubernetes_version")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        minor = int(value.split(".")[1])
        if not 25 <= minor <= 37:
            raise ValueError("must be a Kubernetes minor version between 1.25 and 1.37")
        return value

    @property
    def disaggregated(self) -> bool:
        """P/D in the single-model form (each entry of `models` has its own: ServedModel)."""
        return self.prefill.enabled

    @property
    def multi_model(self) -> bool:
        return self.models is not None

    def served(self) -> list[ServedModel]:
        """The models the stack serves, in config order (empty while neither form is set)."""
        if self.models is not None:
            return [
                ServedModel(
                    key=f"models[{index}]",
                    prefix=f"{self.name}-{entry.resolved_id}",
                    model=entry,
                    prefill=entry.prefill,
                    decode=entry.decode,
                    epp=entry.epp,
                    multi=True,
                    id=entry.resolved_id,
                )
                for index, entry in enumerate(self.models)
            ]
        if self.model is None:
            return []
        return [
            ServedModel(
                key="model",
                prefix=self.name,
                model=self.model,
                prefill=self.prefill,
                decode=self.decode,
                epp=self.epp,
                multi=False,
            )
        ]


class StackConfig(LlmdStackConfig):
    """The validated contents of the `llmd:` namespace of a stack: where the cluster comes from
    (``platform`` and that platform's section) plus everything :class:`LlmdStackConfig` lays on it."""

    platform: PlatformName = Field(description="Where the cluster comes from.")
    onprem: OnPremConfig | None = Field(default=None, description="Required for platform onprem.")
    kind: KindConfig | None = Field(default=None, description="Settings for platform kind.")
    gke: GkeConfig | None = Field(
        default=None, description="Required for platform gke (cloud engineer's model)."
    )
    eks: EksConfig | None = Field(
        default=None, description="Required for platform eks (cloud engineer's model)."
    )
    mirrors: MirrorsConfig = Field(
        default_factory=MirrorsConfig,
        description="Private or air-gapped clusters: image registry, Helm chart and remote YAML mirrors, "
        "and image pull secrets, applied to everything the stack deploys.",
    )
