"""Precise prefix-cache routing as the stacks render it (llmd:epp.prefixCache precise): the model
servers' KV-event flags, env and ports per role (vLLM and the simulator), the NetworkPolicy rule, the
EPP's config (loaded by the bundled EPP's own loader) and Deployment, and every refused combination
named by its key. Rendered through the real program under mocks and validated like the examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.config.loader import load_config
from epp.plugins.precise import PrecisePrefixCacheProducer
from epp.plugins.prefix import PrefixCacheScorer
from epp.plugins.profile_handlers import DisaggProfileHandler, PrefixBasedPdDecider, SingleProfileHandler
from epp.plugins.tokens import LocalBackend, SimulatorBackend, TokenProducer
from pulumi_llmd.components.inputs import EndpointPickerInputs
from pulumi_llmd.components.modelserver import ModelServerPool
from pulumi_llmd.components.picker import EndpointPicker, picker_problems
from pulumi_llmd.components.stack import parse_llmd_stack_args
from pulumi_llmd.config import ConfigError, parse_stack_config
from render.engine import RenderResult
from simulator.__main__ import build_parser, params_from_args
from tests.epp.plugins.test_tokens import write_model
from tests.pulumi_llmd.components.test_stack_variants import ONPREM_VLLM, engine, validate
from tests.support.stacks import kind_config, render_config

PRECISE = {"prefixCache": "precise"}
SIM_MODEL = {"name": "tiny", "uri": "hf://org/tiny", "engine": "simulator", "blockSize": 16}
EPP_PORTS = {5557, 5558}


def precise_kind(**overrides: Any) -> dict[str, Any]:
    return kind_config(**{"model": SIM_MODEL, "epp": PRECISE, **overrides})


def epp_config_text(result: RenderResult) -> str:
    [config_map] = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    return str(config_map["data"]["epp-config.yaml"])


def kv_events(container: dict[str, Any]) -> dict[str, Any]:
    args = container["args"]
    return dict(json.loads(args[args.index("--kv-events-config") + 1]))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def epp_rule_ports(result: RenderResult, role: str) -> set[int]:
    policy = result.get("NetworkPolicy", f"t-{role}-ingress").document
    [rule] = [
        r
        for r in policy["spec"]["ingress"]
        if r.get("from")
        and "app.kubernetes.io/name" in r["from"][0].get("podSelector", {}).get("matchLabels", {})
    ]
    return {p["port"] for p in rule["ports"]}


@pytest.fixture(scope="module")
def simulated_pd() -> RenderResult:
    result = render_config(precise_kind())
    validate(result)
    return result


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_simulated_pods_publish_kv_events_on_every_role(simulated_pd: RenderResult, role: str) -> None:
    container = engine(simulated_pd.get("Deployment", f"t-{role}").document)
    args = container["args"]
    assert args[args.index("--block-size") + 1] == "16"
    assert args[args.index("--prefix-caching-hash-algo") + 1] == "sha256_cbor"
    assert kv_events(container) == {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": "tcp://*:5557",
        "replay_endpoint": "tcp://*:5558",
        "topic": "kv@$(POD_IP):8000@tiny",
    }
    env = env_of(container)
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PYTHONHASHSEED"] == "0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["kv-events"], ports["kv-replay"]) == (5557, 5558)
    # The simulator image takes the rendered flags as they are (Kubernetes expands $(POD_IP) first).
    expanded = [arg.replace("$(POD_IP)", "10.0.0.7") for arg in args]
    params = params_from_args(build_parser().parse_args(expanded))
    assert (params.block_size, params.prefix_caching_hash_algo) == (16, "sha256_cbor")
    assert params.kv_events_config is not None and "kv@10.0.0.7:8000@tiny" in params.kv_events_config


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_the_epp_may_reach_the_event_ports_of_every_role(simulated_pd: RenderResult, role: str) -> None:
    assert epp_rule_ports(simulated_pd, role) >= EPP_PORTS


def test_approximate_stacks_render_no_events(simulated_pd: RenderResult) -> None:
    result = render_config(kind_config())
    for role in ("prefill", "decode"):
        container = engine(result.get("Deployment", f"t-{role}").document)
        assert "--kv-events-config" not in container["args"] and "--block-size" not in container["args"]
        assert not {"POD_IP", "PYTHONHASHSEED"} & set(env_of(container))
        assert not EPP_PORTS & {p["containerPort"] for p in container["ports"]}
        assert not EPP_PORTS & epp_rule_ports(result, role)
    assert "precise" not in epp_config_text(result)


def test_the_pd_precise_config_loads_in_the_epp(simulated_pd: RenderResult) -> None:
    config = load_config(epp_config_text(simulated_pd))
    assert config.warnings == []
    producer = config.plugins["precise-prefix-cache-producer"]
    assert isinstance(producer, PrecisePrefixCacheProducer)
    assert (producer.hasher.block_size, producer.hasher.algorithm, producer.hasher.seed) == (
        16,
        "sha256_cbor",
        "0",
    )
    assert (producer.socket_port, producer.replay_port, producer.speculative) == (5557, 5558, True)
    tokens = config.plugins["token-producer"]
    assert isinstance(tokens, TokenProducer) and isinstance(tokens.backend, SimulatorBackend)
    handler = config.scheduler.handler
    assert isinstance(handler, DisaggProfileHandler)
    assert isinstance(handler.decider, PrefixBasedPdDecider) and handler.decider.producer is producer
    for name in ("prefill", "decode"):
        scorers = {s.name: s for s, _ in config.scheduler.profiles[name].scorers}
        scorer = scorers["prefix-cache-scorer"]
        assert isinstance(scorer, PrefixCacheScorer) and scorer.producer is producer
    assert "approx-prefix-cache-producer" not in config.plugins


def test_the_single_pool_precise_config_loads_with_the_stacks_weights() -> None:
    result = render_config(precise_kind(prefill={"enabled": False}))
    validate(result)
    assert {
        p["containerPort"] for p in engine(result.get("Deployment", "t-decode").document)["ports"]
    } >= EPP_PORTS
    config = load_config(epp_config_text(result))
    assert config.warnings == []
    assert isinstance(config.scheduler.handler, SingleProfileHandler)
    (profile,) = config.scheduler.profiles.values()
    weights = {scorer.name: weight for scorer, weight in profile.scorers}
    # llm-d's default weights plus the stacks' in-flight scorer (pickerconfig.in_flight_aware_config).
    assert weights == {
        "queue-scorer": 2.0,
        "kv-cache-utilization-scorer": 2.0,
        "prefix-cache-scorer": 3.0,
        "active-request-scorer": 2.0,
    }
    producer = config.plugins["precise-prefix-cache-producer"]
    scorer = config.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrefixCacheScorer) and scorer.producer is producer
    assert config.metrics_source.name == "metrics-data-source"


def test_vllm_pools_hub_tokenizer_and_the_token_secret() -> None:
    model = {
        "name": "org/m",
        "uri": "hf://org/m",
        "blockSize": 32,
        "prefixCachingHashAlgo": "xxhash",
        "hashSeed": 42,
    }
    result = render_config({**ONPREM_VLLM, "model": model, "epp": PRECISE}, secrets={"hfToken": "hf_test"})
    validate(result)
    for role in ("prefill", "decode"):
        container = engine(result.get("Deployment", f"big-{role}").document)
        args = container["args"]
        assert args[0] == "org/m" and args[args.index("--block-size") + 1] == "32"
        assert args[args.index("--prefix-caching-hash-algo") + 1] == "xxhash"
        assert kv_events(container)["topic"] == "kv@$(POD_IP):8000@org/m"
        assert env_of(container)["PYTHONHASHSEED"] == "42"
    picker = result.get("Deployment", "big-epp")
    [epp] = picker.document["spec"]["template"]["spec"]["containers"]
    assert env_of(epp)["HF_TOKEN"] == {"secretKeyRef": {"name": "big-hf-token", "key": "HF_TOKEN"}}
    tmp = next(v for v in picker.document["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"] == "256Mi"  # the tokenizer download lands in /tmp/tokenizers
    assert result.get("Secret", "big-hf-token").registration.urn in picker.registration.dependencies
    document = yaml.safe_load(epp_config_text(result))
    token_producer = next(p for p in document["plugins"] if p["type"] == "token-producer")
    assert token_producer["parameters"] == {"local": {"huggingFace": {"repo": "org/m", "revision": "main"}}}
    config = load_config(epp_config_text(result))  # the download happens at start, not at load
    tokens = config.plugins["token-producer"]
    assert isinstance(tokens, TokenProducer) and isinstance(tokens.backend, LocalBackend)
    assert (tokens.backend.repo, tokens.backend.token_env) == ("org/m", "HF_TOKEN")
    producer = config.plugins["precise-prefix-cache-producer"]
    assert isinstance(producer, PrecisePrefixCacheProducer)
    assert (producer.hasher.block_size, producer.hasher.algorithm, producer.hasher.seed) == (
        32,
        "xxhash",
        "42",
    )


def test_pvc_models_mount_the_claim_into_the_epp(tmp_path: Path) -> None:
    model = {**ONPREM_VLLM["model"], "blockSize": 16}
    result = render_config({**ONPREM_VLLM, "model": model, "prefill": {"enabled": False}, "epp": PRECISE})
    validate(result)
    spec = result.get("Deployment", "big-epp").document["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in spec[
        "volumes"
    ]
    [epp] = spec["containers"]
    assert {"name": "model", "mountPath": "/model", "readOnly": True} in epp["volumeMounts"]
    assert "HF_TOKEN" not in env_of(epp)
    text = epp_config_text(result)
    document = yaml.safe_load(text)
    token_producer = next(p for p in document["plugins"] if p["type"] == "token-producer")
    assert token_producer["parameters"] == {"local": {"path": "/model/org/big"}}
    # The path is read at load: point it at a tokenizer directory standing in for the mounted claim.
    directory = write_model(tmp_path / "org" / "big")
    config = load_config(text.replace("/model/org/big", str(directory)))
    tokens = config.plugins["token-producer"]
    assert isinstance(tokens, TokenProducer) and isinstance(tokens.backend, LocalBackend)
    assert tokens.backend.tokenizer is not None


def test_multi_node_leaders_publish_through_the_shell_command() -> None:
    config = {
        **ONPREM_VLLM,
        "model": {**ONPREM_VLLM["model"], "blockSize": 16},
        "prefill": {"enabled": False},
        "decode": {"tensorParallel": 8, "nodesPerReplica": 2},
        "epp": PRECISE,
    }
    result = render_config(config)
    group = result.get("LeaderWorkerSet", "big-decode").document["spec"]["leaderWorkerTemplate"]
    leader = engine({"spec": {"template": group["leaderTemplate"]}})
    assert "--kv-events-config" in leader["args"][0] and "$(POD_IP)" in leader["args"][0]
    assert "POD_IP" in env_of(leader)
    worker = engine({"spec": {"template": group["workerTemplate"]}})
    assert not EPP_PORTS & {p["containerPort"] for p in worker["ports"]}  # only the leader publishes


# ---- refused combinations, each naming its key -------------------------------------------------------


def problems_of(raw: dict[str, Any], *, has_hf_token: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=has_hf_token)
    return [str(p) for p in caught.value.problems]


def test_precise_needs_the_block_size() -> None:
    (problem,) = problems_of(kind_config(epp=PRECISE))
    assert problem.startswith("llmd:model.blockSize is required with epp.prefixCache precise")


def test_precise_with_the_upstream_epp_is_refused() -> None:
    (problem,) = problems_of(kind_config(model=SIM_MODEL, epp={**PRECISE, "implementation": "upstream"}))
    assert problem.startswith("llmd:epp.prefixCache precise needs epp.implementation bundled")


def test_precise_needs_prefix_caching() -> None:
    (problem,) = problems_of(kind_config(model={**SIM_MODEL, "enablePrefixCaching": False}, epp=PRECISE))
    assert problem.startswith("llmd:model.enablePrefixCaching must be true with epp.prefixCache precise")


@pytest.mark.parametrize(
    ("model", "tokenizer", "message"),
    [
        (SIM_MODEL, "hub", "must be simulator (or unset) with model.engine simulator"),
        (SIM_MODEL, "path", "must be simulator (or unset) with model.engine simulator"),
        ({**ONPREM_VLLM["model"], "blockSize": 16}, "hub", "hub needs an hf:// model.uri"),
        (
            {**ONPREM_VLLM["model"], "blockSize": 16},
            "simulator",
            "simulator fits model.engine simulator only",
        ),
        ({"name": "m", "uri": "hf://org/m", "blockSize": 16}, "path", "path needs a pvc:// model.uri"),
    ],
)
def test_a_tokenizer_that_cannot_fit_the_model_is_refused(
    model: dict[str, Any], tokenizer: str, message: str
) -> None:
    config = {**ONPREM_VLLM, "model": model, "epp": {**PRECISE, "tokenizer": tokenizer}}
    if model.get("engine") == "simulator":
        config = precise_kind(model=model, epp={**PRECISE, "tokenizer": tokenizer})
    (problem,) = problems_of(config, has_hf_token=True)
    assert problem.startswith(f"llmd:epp.tokenizer {message}")


def test_a_tokenizer_without_precise_mode_is_refused() -> None:
    assert problems_of(kind_config(epp={"tokenizer": "simulator"})) == [
        "llmd:epp.tokenizer applies to epp.prefixCache precise only (it is approximate)"
    ]


def test_a_pool_env_may_not_set_the_hash_seed_in_precise_mode() -> None:
    pool = {**kind_config()["decode"], "env": {"PYTHONHASHSEED": "1"}}
    (problem,) = problems_of(precise_kind(decode=pool))
    assert problem.startswith("llmd:decode.env must not set PYTHONHASHSEED with epp.prefixCache precise")
    parse_stack_config(kind_config(decode=pool), has_hf_token=False)  # fine in approximate mode


@pytest.mark.parametrize("seed", ["random", "4294967296", "-1"])
def test_the_hash_seed_is_a_python_hash_seed(seed: str) -> None:
    (problem,) = problems_of(kind_config(model={**SIM_MODEL, "hashSeed": seed}))
    assert problem.startswith("llmd:model.hashSeed ")


def test_a_numeric_hash_seed_in_yaml_is_accepted() -> None:
    config = parse_stack_config(kind_config(model={**SIM_MODEL, "hashSeed": 7}), has_hf_token=False)
    assert config.model.hash_seed == "7"


def test_llmd_stack_args_get_the_same_rules() -> None:
    args = {"model": {"name": "m", "uri": "hf://org/m", "engine": "simulator"}, "epp": PRECISE}
    with pytest.raises(ConfigError, match=r"model\.blockSize is required"):
        parse_llmd_stack_args(args)


def test_the_components_refuse_bad_args_before_registering_anything() -> None:
    picker_args: dict[str, Any] = {
        "pool_name": "p",
        "namespace": "n",
        "served_models": ["m"],
        "selector": {"a": "b"},
        "disaggregated": False,
        "settings": PRECISE,
    }
    with pytest.raises(ConfigError, match=r"- model is required with settings\.prefixCache precise"):
        EndpointPicker("p-epp", picker_args)  # type: ignore[arg-type]
    with_model = EndpointPickerInputs.model_validate(
        {**picker_args, "model": {"name": "m", "uri": "pvc://c/m"}}
    )
    assert [str(p.path) for p in picker_problems(with_model)] == ["model.blockSize"]
    upstream = {**picker_args, "settings": {**PRECISE, "implementation": "upstream"}}
    upstream["model"] = {"name": "m", "uri": "pvc://c/m", "blockSize": 16}
    with pytest.raises(
        ConfigError, match=r"- settings\.prefixCache precise needs settings\.implementation bundled"
    ):
        EndpointPicker("p-epp", upstream)  # type: ignore[arg-type]
    pool_args = {
        "instance": "t",
        "namespace": "n",
        "role": "decode",
        "model": SIM_MODEL,
        "disaggregated": False,
        "prefix_cache": "precise",
        "pool": {"env": {"POD_IP": "1.2.3.4"}, "accelerator": {"count": 0}},
    }
    with pytest.raises(ConfigError, match=r"- pool\.env must not set POD_IP with prefixCache precise"):
        ModelServerPool("t-decode", pool_args)  # type: ignore[arg-type]
