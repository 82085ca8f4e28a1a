"""Multi-model stacks (llmd:models) and LoRA, rendered through the real program: every object
validated (core kinds strictly, custom resources against their CRDs in ../shared/crds, llm-d-router's
InferenceObjective/InferenceModelRewrite included), names unique and derived per model, one route
rule per model, the body router's table and the Gateway provider's attachment, and the adapters in
vLLM's flags and the pickers' served models."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from render.engine import STACKS_DIR, RenderResult, load_stack_file
from tests.support.cloud import render_edited
from tests.support.stacks import (
    CRDS,
    SIM_POOL,
    api_group,
    is_core,
    render_config,
    validate_all,
    validate_core,
    validate_custom,
)


def validate(result: RenderResult) -> int:
    if CRDS.is_dir():
        return validate_all(result, "1.33")
    for manifest in result.manifests():
        if is_core(manifest):
            validate_core(manifest, "1.33")
    return 0


def stack_file(name: str) -> dict[str, Any]:
    values, _secrets = load_stack_file(STACKS_DIR / f"Pulumi.{name}.yaml")
    return {key.removeprefix("llmd:"): yaml.safe_load(value) for key, value in values.items()}


@pytest.fixture(scope="module")
def example() -> RenderResult:
    return render_config(stack_file("multimodel"), stack="multimodel")


def entry(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "uri": f"hf://org/{name}",
        "engine": "simulator",
        "prefill": {"enabled": False},
        "decode": SIM_POOL,
        **extra,
    }


def two_models(provider: str = "istio", **overrides: Any) -> dict[str, Any]:
    return {
        "platform": "kind",
        "name": "mm",
        "gateway": {"provider": provider, "install": False},
        "models": [entry("org/llama-3", id="llama"), entry("qwen")],
        **overrides,
    }


def engine_args(result: RenderResult, workload: str) -> list[str]:
    spec = result.get("Deployment", workload).document["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "engine")["args"]


def epp_args(result: RenderResult, epp: str) -> list[str]:
    spec = result.get("Deployment", epp).document["spec"]["template"]["spec"]
    return spec["containers"][0]["args"]


def test_the_example_validates_and_every_object_has_a_unique_name_of_its_model(example: RenderResult) -> None:
    checked = validate(example)
    if CRDS.is_dir():
        assert checked == 9  # Gateway, HTTPRoute, 2 InferencePools, 2 objectives, 1 rewrite, 2 policies
    names = [(m["kind"], m["metadata"]["name"]) for m in example.manifests()]
    assert len(names) == len(set(names))
    deployments = sorted(m["metadata"]["name"] for m in example.manifests("Deployment"))
    assert deployments == [
        "mm-body-router",
        "mm-llama-decode",
        "mm-llama-epp",
        "mm-qwen-decode",
        "mm-qwen-epp",
    ]
    pools = {m["metadata"]["name"]: m["spec"] for m in example.manifests("InferencePool")}
    assert set(pools) == {"mm-llama", "mm-qwen"}
    # Each pool selects its own model's pods and names its own picker.
    assert pools["mm-llama"]["selector"]["matchLabels"]["llm-d.ai/model"] == "sim-llama"
    assert pools["mm-qwen"]["endpointPickerRef"]["name"] == "mm-qwen-epp"
    for workload in ("mm-llama-decode", "mm-qwen-decode"):
        labels = example.get("Deployment", workload).document["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == workload.removesuffix("-decode")


def test_one_route_rule_per_model_on_the_routers_header(example: RenderResult) -> None:
    (route,) = example.manifests("HTTPRoute")
    assert route["metadata"]["name"] == "mm"
    rules = [
        (rule["matches"][0]["headers"][0]["value"], rule["backendRefs"][0]["name"])
        for rule in route["spec"]["rules"]
    ]
    assert rules == [("sim-llama", "mm-llama"), ("sim-qwen", "mm-qwen")]
    assert route["spec"]["rules"][0]["matches"][0]["headers"][0]["name"] == "X-Gateway-Base-Model-Name"


def test_the_routers_table_lists_every_name_under_its_base_model(example: RenderResult) -> None:
    table = yaml.safe_load(example.get("ConfigMap", "mm-body-router").document["data"]["routes.yaml"])
    assert table["models"] == [
        {"model": "sim-llama", "names": ["sim-llama", "sql-v1", "sql-v2", "support", "sql"]},
        {"model": "sim-qwen", "names": ["sim-qwen"]},
    ]
    router = example.get("Deployment", "mm-body-router").document["spec"]["template"]
    container = router["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "bbr"] and "--secure-serving=true" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert router["spec"]["automountServiceAccountToken"] is False
    assert router["metadata"]["annotations"]["llm-d.ai/body-router-config-sha256"]


def test_agentgateway_calls_the_router_before_routing_over_tls(example: RenderResult) -> None:
    policy = example.get("AgentgatewayPolicy", "mm-body-router").document["spec"]
    assert policy["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "mm-gateway"}
    ]
    assert policy["traffic"]["phase"] == "PreRouting"
    ext_proc = policy["traffic"]["extProc"]
    assert ext_proc["backendRef"] == {"group": "", "kind": "Service", "name": "mm-body-router", "port": 9004}
    assert ext_proc["failureMode"] == "FailClosed"
    assert ext_proc["processingOptions"]["requestBodyMode"] == "FullDuplexStreamed"
    tls = example.get("AgentgatewayPolicy", "mm-body-router-tls").document["spec"]
    assert tls["targetRefs"] == [{"group": "", "kind": "Service", "name": "mm-body-router"}]
    assert tls["backend"]["tls"]["insecureSkipVerify"] == "All"


def test_adapters_reach_vllms_flags_and_the_pickers_served_models(example: RenderResult) -> None:
    args = engine_args(example, "mm-llama-decode")
    assert args[args.index("--max-loras") + 1] == "2" and "--enable-lora" in args
    modules = args[args.index("--lora-modules") + 1 : args.index("--lora-modules") + 4]
    assert modules == [
        "sql-v1=simulated/sql-lora-v1",
        "sql-v2=simulated/sql-lora-v2",
        "support=simulated/support-lora",
    ]
    served = epp_args(example, "mm-llama-epp")
    assert served[served.index("--served-models") + 1] == "sim-llama,sql-v1,sql-v2,support,sql"
    picker = yaml.safe_load(example.get("ConfigMap", "mm-llama-epp").document["data"]["epp-config.yaml"])
    assert {"pluginRef": "lora-affinity-scorer", "weight": 1} in picker["schedulingProfiles"][0]["plugins"]
    qwen = yaml.safe_load(example.get("ConfigMap", "mm-qwen-epp").document["data"]["epp-config.yaml"])
    assert "lora-affinity-scorer" not in str(qwen)
    assert "--enable-lora" not in engine_args(example, "mm-qwen-decode")


def test_rewrites_and_objectives_are_llm_d_router_objects_on_their_pool(example: RenderResult) -> None:
    rewrite = example.get("InferenceModelRewrite", "mm-llama-rewrites").document
    assert rewrite["apiVersion"] == "llm-d.ai/v1alpha2"
    assert rewrite["spec"]["poolRef"] == {
        "group": "inference.networking.k8s.io",
        "kind": "InferencePool",
        "name": "mm-llama",
    }
    assert rewrite["spec"]["rules"] == [
        {
            "matches": [{"model": {"type": "Exact", "value": "sql"}}],
            "targets": [{"modelRewrite": "sql-v1", "weight": 90}, {"modelRewrite": "sql-v2", "weight": 10}],
        }
    ]
    objectives = {m["metadata"]["name"]: m["spec"] for m in example.manifests("InferenceObjective")}
    assert objectives == {
        "interactive": {"poolRef": rewrite["spec"]["poolRef"], "priority": 10},
        "batch": {"poolRef": rewrite["spec"]["poolRef"], "priority": -1},
    }
    # Their CRDs come with every stack now (llm-d-router's release asset, crds.llmdRouterVersion).
    urls = {o.document["file"] for o in example.of_source("yaml")}
    assert "https://github.com/llm-d/llm-d-router/releases/download/v0.10.0/manifests.yaml" in urls


@pytest.mark.skipif(not CRDS.is_dir(), reason="CRD files not found")
def test_the_crd_validation_catches_a_bad_rewrite_weight(example: RenderResult) -> None:
    import jsonschema

    from tests.support.stacks import validate_custom

    rewrite = copy.deepcopy(example.get("InferenceModelRewrite", "mm-llama-rewrites").document)
    rewrite["spec"]["rules"][0]["targets"][0]["weight"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(rewrite)


def test_the_body_router_and_each_model_get_network_policies(example: RenderResult) -> None:
    policies = {m["metadata"]["name"]: m["spec"] for m in example.manifests("NetworkPolicy")}
    assert set(policies) == {
        "mm-body-router-ingress",
        "mm-llama-decode-ingress",
        "mm-llama-epp-ingress",
        "mm-qwen-decode-ingress",
        "mm-qwen-epp-ingress",
    }
    gateway = {"podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "mm-gateway"}}}
    assert policies["mm-body-router-ingress"]["ingress"][0] == {
        "from": [gateway],
        "ports": [{"protocol": "TCP", "port": 9004}],
    }
    # Each model's pods admit the one Gateway, and scrapes from their own EPP only.
    decode = policies["mm-qwen-decode-ingress"]["ingress"]
    assert decode[0]["from"] == [gateway]
    assert decode[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "mm-qwen-epp"


def test_istio_gets_an_envoy_filter_first_in_the_gateways_chain_and_tls_without_verification() -> None:
    result = render_config(two_models("istio"))
    validate(result)
    envoy_filter = result.get("EnvoyFilter", "mm-body-router").document["spec"]
    assert envoy_filter["targetRefs"][0]["name"] == "mm-gateway"
    (patch,) = envoy_filter["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "INSERT_FIRST"
    config = patch["patch"]["value"]["typed_config"]
    assert config["failure_mode_allow"] is False
    assert (
        config["grpc_service"]["envoy_grpc"]["cluster_name"]
        == "outbound|9004||mm-body-router.llm-d.svc.cluster.local"
    )
    assert config["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    rule = result.get("DestinationRule", "mm-body-router").document["spec"]
    assert rule["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    # The id defaults to a DNS-label form of the name when set: here given as "llama"; qwen's derived.
    assert {m["metadata"]["name"] for m in result.manifests("InferencePool")} == {"mm-llama", "mm-qwen"}


def test_istio_dials_every_models_tls_epp_through_its_own_destination_rule() -> None:
    result = render_config(two_models("istio"))
    rules = {m["metadata"]["name"]: m["spec"] for m in result.manifests("DestinationRule")}
    assert set(rules) == {"mm-body-router", "mm-llama-epp", "mm-qwen-epp"}
    for epp in ("mm-llama-epp", "mm-qwen-epp"):
        assert rules[epp]["host"] == f"{epp}.llm-d.svc.cluster.local"
        assert rules[epp]["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    # A plaintext EPP (allowed with Istio) gets no TLS rule; the other model's keeps its own.
    plain = two_models("istio")
    plain["models"][1]["epp"] = {"secureServing": False}
    names = {m["metadata"]["name"] for m in render_config(plain).manifests("DestinationRule")}
    assert names == {"mm-body-router", "mm-llama-epp"}


def _gke_two_models(config: dict[str, Any]) -> None:
    """The gke example with its one model moved into llmd:models beside a second one."""
    first = {**config.pop("llmd:model"), "id": "llama"}
    for section in ("prefill", "decode", "epp"):
        if f"llmd:{section}" in config:
            first[section] = config.pop(f"llmd:{section}")
    second = {**copy.deepcopy(first), "name": "org/other", "id": "other"}
    second.pop("label", None)
    config["llmd:models"] = [first, second]
    config["llmd:gateway"] = {"provider": "gke"}
    config["llmd:networkPolicy"] = {"enabled": False}


def test_gke_gets_a_routing_extension_a_grpc_health_check_and_each_pools_policies(tmp_path: Path) -> None:
    result = render_edited("gke", _gke_two_models, tmp_path)
    if CRDS.is_dir():
        for kind in ("Gateway", "HTTPRoute", "InferencePool", "HealthCheckPolicy", "GCPBackendPolicy"):
            for manifest in result.manifests(kind):
                validate_custom(manifest)
    extension = result.get("GCPRoutingExtension", "llama-70b-body-router").document["spec"]
    (chain,) = extension["extensionChains"]
    (call,) = chain["extensions"]
    router = "llama-70b-body-router"
    assert call["backendRef"] == {"group": "", "kind": "Service", "name": router, "port": 9004}
    assert call["requestBodySendMode"] == "FullDuplexStreamed" and "failOpen" not in call
    health = result.get("HealthCheckPolicy", "llama-70b-body-router").document["spec"]
    assert health["default"]["config"]["grpcHealthCheck"]["port"] == 9005
    service = result.get("Service", "llama-70b-body-router").document["spec"]
    assert service["ports"][0]["appProtocol"] == "HTTP2"
    # Every model's pool gets GKE's endpoint health check and backend timeout.
    pools = {"llama-70b-llama", "llama-70b-other"}
    for kind in ("HealthCheckPolicy", "GCPBackendPolicy"):
        targets = {m["spec"]["targetRef"]["name"] for m in result.manifests(kind)}
        assert pools <= targets
    (route,) = result.manifests("HTTPRoute")
    assert all("timeouts" not in rule for rule in route["spec"]["rules"])  # GKE's backend policy has it


def test_fail_open_adds_a_catch_all_rule_to_the_first_model() -> None:
    result = render_config(two_models(bodyRouter={"failureMode": "FailOpen"}))
    (route,) = result.manifests("HTTPRoute")
    last = route["spec"]["rules"][-1]
    assert "headers" not in last["matches"][0] and last["backendRefs"][0]["name"] == "mm-llama"
    config = result.get("EnvoyFilter", "mm-body-router").document["spec"]["configPatches"][0]
    assert config["patch"]["value"]["typed_config"]["failure_mode_allow"] is True


def test_a_single_model_with_adapters_keeps_its_names_and_needs_no_router() -> None:
    model = {
        "name": "tiny",
        "uri": "hf://org/tiny",
        "engine": "simulator",
        "lora": {"adapters": [{"name": "sql", "uri": "pvc://adapters/sql"}], "maxLoras": 4},
        "rewrites": [{"model": "sql-latest", "targets": [{"model": "sql"}]}],
    }
    result = render_config(
        {"platform": "kind", "name": "t", "model": model, "prefill": SIM_POOL, "decode": SIM_POOL}
    )
    validate(result)
    assert not result.manifests("AgentgatewayPolicy") and not any(
        m["metadata"]["name"].endswith("body-router") for m in result.manifests()
    )
    served = epp_args(result, "t-epp")
    assert served[served.index("--served-models") + 1] == "tiny,sql,sql-latest"
    # Decode and prefill serve the adapter alike: P/D needs it on both.
    for workload in ("t-decode", "t-prefill"):
        args = engine_args(result, workload)
        assert args[args.index("--lora-modules") + 1] == "sql=/lora/adapters/sql"
    (route,) = result.manifests("HTTPRoute")
    assert "headers" not in route["spec"]["rules"][0]["matches"][0]
    assert result.get("InferenceModelRewrite", "t-rewrites").document["spec"]["rules"][0]["targets"] == [
        {"modelRewrite": "sql"}
    ]


def test_vllm_pools_mount_adapter_claims_and_turn_on_run_time_loading() -> None:
    model = {
        "name": "org/m",
        "uri": "pvc://models/org/m",
        "lora": {
            "adapters": [
                {"name": "a", "uri": "pvc://adapters/a"},
                {"name": "b", "uri": "hf://org/b"},
                {"name": "c"},
            ],
            "runtimeLoading": True,
            "resolverDir": "pvc://adapters/dynamic",
            "maxLoras": 2,
            "maxLoraRank": 64,
            "maxCpuLoras": 8,
        },
    }
    config = {
        "platform": "onprem",
        "name": "big",
        "onprem": {"gpuOperator": {"install": False, "version": "v26.7.0", "namespace": "gpu-operator"}},
        "model": model,
        "prefill": {"enabled": False},
    }
    result = render_config(config, secrets={"hfToken": "hf_test"})
    validate(result)
    spec = result.get("Deployment", "big-decode").document["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "engine")
    args = container["args"]
    assert args[args.index("--max-lora-rank") + 1] == "64" and args[args.index("--max-cpu-loras") + 1] == "8"
    start = args.index("--lora-modules") + 1
    assert args[start : start + 2] == ["a=/lora/adapters/a", "b=org/b"]  # c loads at run time
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"] == "/lora/adapters/dynamic"
    # The adapters' claim is mounted once, read-only; hf:// adapters of a pvc:// model download to a
    # writable cache of their own, with the token.
    assert {"name": "lora-0", "mountPath": "/lora/adapters", "readOnly": True} in container["volumeMounts"]
    assert {"name": "lora-0", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}} in spec[
        "volumes"
    ]
    assert env["HF_HOME"] == "/lora-cache" and "HF_TOKEN" in env
    served = epp_args(result, "big-epp")
    assert served[served.index("--served-models") + 1] == "org/m,a,b,c"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"models": [entry("a"), entry("a")]}, "llmd:models[1].name 'a' is already served by models[0].name"),
        (
            {"models": [entry("a", decode={**SIM_POOL, "replicas": 0}), entry("b")]},
            "llmd:models[0].decode.replicas must be >= 1 (got 0)",
        ),
        (
            {"models": [entry("a", lora={"adapters": [{"name": "b", "uri": "hf://o/b"}]}), entry("b")]},
            "llmd:models[1].name 'b' is already served by models[0].lora.adapters[0].name",
        ),
        (
            {"models": [entry("a", id="x"), entry("b", id="x")]},
            "llmd:models[1].id gives the object prefix 'mm-x'",
        ),
        (
            {"models": [entry("a", id="a" * 32), entry("b")], "name": "n" * 10},
            "llmd:models[0].id makes the object prefix",
        ),
        ({"decode": {"replicas": 3}}, "llmd:decode is set but llmd:models is used"),
        ({"model": {"name": "c", "uri": "hf://o/c"}}, "llmd:models is set together with llmd:model"),
        (
            {"models": [entry(f"m{i}") for i in range(17)]},
            "llmd:models has 17 models: the HTTPRoute would need 17 rules, Gateway API allows 16",
        ),
        (
            {
                "models": [entry(f"m{i}") for i in range(16)],
                "gateway": {"provider": "istio", "paths": [f"/v1/p{i}" for i in range(9)]},
            },
            "llmd:gateway.paths has 9 paths: with 16 route rules that is 144 matches, Gateway API allows 128",
        ),
        # Main's single-model rules apply to each model and name its own keys.
        (
            {
                "models": [
                    entry("a"),
                    entry("b", epp={"flowControl": {"enabled": True, "defaultRequestTTL": "10m"}}),
                ]
            },
            "llmd:models[1].epp.flowControl.defaultRequestTTL must be shorter than gateway.requestTimeout",
        ),
        (
            {"models": [entry("a"), entry("b", epp={"leaderElection": True, "replicas": 1})]},
            "llmd:models[1].epp.leaderElection needs epp.replicas >= 2",
        ),
        (
            {"models": [entry("a", epp={"prefixCache": "precise"}), entry("b")]},
            "llmd:models[0].blockSize is required with models[0].epp.prefixCache precise",
        ),
        (
            {
                "models": [
                    entry("a"),
                    entry(
                        "b",
                        blockSize=16,
                        epp={"prefixCache": "precise"},
                        decode={**SIM_POOL, "env": {"PYTHONHASHSEED": "1"}},
                    ),
                ]
            },
            "llmd:models[1].decode.env must not set PYTHONHASHSEED with models[1].epp.prefixCache precise",
        ),
        (
            {"models": [entry("a"), entry("b", epp={"tokenizer": "simulator"})]},
            "llmd:models[1].epp.tokenizer applies to models[1].epp.prefixCache precise only",
        ),
        (
            {
                "models": [
                    entry("a", decode={**SIM_POOL, "rollout": {"maxSurge": 0, "maxUnavailable": 0}}),
                    entry("b"),
                ]
            },
            "llmd:models[0].decode.rollout.maxUnavailable must be >= 1 when rollout.maxSurge is 0",
        ),
    ],
)
def test_bad_multi_model_configs_name_the_key(overrides: dict[str, Any], problem: str) -> None:
    from pulumi_llmd.config import ConfigError, parse_stack_config

    with pytest.raises(ConfigError) as raised:
        parse_stack_config(two_models(**overrides), has_hf_token=False)
    messages = [str(p) for p in raised.value.problems]
    assert any(m.startswith(problem) for m in messages), messages


def test_precise_flow_control_and_lora_are_per_model() -> None:
    """One model with precise prefix routing, flow control and an adapter, one with none: each EPP's
    config, pod flags and NetworkPolicy follow its own model's settings."""
    from epp.config.loader import load_config

    tuned = entry(
        "qwen",
        blockSize=16,
        lora={"adapters": [{"name": "sql", "uri": "pvc://adapters/sql"}]},
        epp={"prefixCache": "precise", "flowControl": {"enabled": True, "defaultRequestTTL": "30s"}},
    )
    result = render_config(two_models(models=[entry("org/llama-3", id="llama"), tuned]))
    validate(result)

    def picker_config(pool: str) -> dict[str, Any]:
        text = result.get("ConfigMap", f"{pool}-epp").document["data"]["epp-config.yaml"]
        assert load_config(text).warnings == []
        document: dict[str, Any] = yaml.safe_load(text)
        return document

    plain, rich = picker_config("mm-llama"), picker_config("mm-qwen")
    types = {plugin["type"] for plugin in rich["plugins"]}
    assert {"lora-affinity-scorer", "precise-prefix-cache-producer", "utilization-detector"} <= types
    assert rich["featureGates"] == ["flowControl"] and rich["flowControl"]["defaultRequestTTL"] == "30s"
    assert not {"lora-affinity-scorer", "precise-prefix-cache-producer"} & {
        p["type"] for p in plain["plugins"]
    }
    assert "flowControl" not in plain
    qwen, llama = engine_args(result, "mm-qwen-decode"), engine_args(result, "mm-llama-decode")
    assert "--kv-events-config" in qwen and "--enable-lora" in qwen
    assert "--kv-events-config" not in llama and "--enable-lora" not in llama


@pytest.mark.parametrize("data_plane", [None, "agentgateway", "envoy"])
def test_kgateway_cannot_route_by_body_and_says_so(data_plane: str | None) -> None:
    """kgateway 2.1's agentgateway data plane (its default) is configured through kgateway's own
    TrafficPolicy, not agentgateway.dev's AgentgatewayPolicy; its Envoy data plane has no pre-routing
    ext_proc: both are refused rather than rendered with an attachment nothing would read."""
    from pulumi_llmd.config import ConfigError, parse_stack_config

    config = two_models("kgateway")
    if data_plane is not None:
        config["gateway"]["kgatewayDataPlane"] = data_plane
    with pytest.raises(ConfigError) as raised:
        parse_stack_config(config, has_hf_token=False)
    [problem] = raised.value.problems
    assert problem.path == "gateway.provider" and "kgateway-dev/kgateway#11568" in problem.message


def test_api_groups_of_the_example_are_known(example: RenderResult) -> None:
    groups = {api_group(m) for m in example.manifests()}
    assert groups == {
        "",
        "apps",
        "policy",
        "rbac.authorization.k8s.io",
        "networking.k8s.io",
        "gateway.networking.k8s.io",
        "inference.networking.k8s.io",
        "llm-d.ai",
        "agentgateway.dev",
    }


@pytest.fixture(scope="module")
def observed() -> RenderResult:
    """Two models, the first with P/D, monitoring and KEDA autoscaling on."""
    config = two_models(
        "agentgateway",
        monitoring={"labels": {"release": "kube-prometheus-stack"}},
        autoscaling={"enabled": True},
    )
    config["models"][0]["prefill"] = dict(SIM_POOL)
    result = render_config(config, stack="observed")
    validate(result)
    return result


def test_each_model_gets_its_own_monitors_rules_dashboards_and_scalers(observed: RenderResult) -> None:
    monitors = {m["metadata"]["name"]: m for m in observed.manifests("PodMonitor")}
    per_model = {name for name in monitors if name.startswith(("mm-llama", "mm-qwen"))}
    assert per_model == {
        "mm-llama-decode",
        "mm-llama-decode-sidecar",
        "mm-llama-epp",
        "mm-llama-prefill",
        "mm-qwen-decode",
        "mm-qwen-epp",
    }
    templates = [d["spec"]["template"] for d in observed.manifests("Deployment")]
    for name in per_model:
        (endpoint,) = monitors[name]["spec"]["podMetricsEndpoints"]
        wanted = monitors[name]["spec"]["selector"]["matchLabels"]
        selected = [t for t in templates if wanted.items() <= t["metadata"]["labels"].items()]
        assert selected, f"{name} selects no rendered pod"
        for pod in selected:
            # A model's monitor never reaches the other model's pods (or the body router's).
            assert (
                pod["metadata"]["labels"]["app.kubernetes.io/instance"]
                == wanted["app.kubernetes.io/instance"]
            )
            containers = pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
            assert endpoint["port"] in {p["name"] for c in containers for p in c.get("ports", [])}
        stack = next(r for r in endpoint["relabelings"] if r["targetLabel"] == "llmd_stack")
        assert stack["replacement"] == name.removesuffix("-sidecar").rsplit("-", 1)[0]
    for model in ("mm-llama", "mm-qwen"):
        rules = observed.get("PrometheusRule", f"{model}-rules").document["spec"]["groups"]
        exprs = [rule["expr"] for group in rules for rule in group["rules"]]
        assert all(f'llmd_stack="{model}"' in expr for expr in exprs if "llmd_stack=" in expr)
    scaled = {
        m["metadata"]["name"]: m["spec"]["scaleTargetRef"]["name"] for m in observed.manifests("ScaledObject")
    }
    assert scaled == {name: name for name in ("mm-llama-prefill", "mm-llama-decode", "mm-qwen-decode")}
    for workload in scaled:
        assert "replicas" not in observed.get("Deployment", workload).document["spec"]
    boards = {
        c["metadata"]["name"]: c
        for c in observed.manifests("ConfigMap")
        if "-dashboard-" in c["metadata"]["name"]
    }
    assert sorted(boards) == [
        "mm-llama-dashboard-epp",
        "mm-llama-dashboard-pd",
        "mm-llama-dashboard-pools",
        "mm-qwen-dashboard-epp",
        "mm-qwen-dashboard-pools",
    ]
    uids = [json.loads(next(iter(c["data"].values())))["uid"] for c in boards.values()]
    assert len(set(uids)) == len(uids)


def test_long_names_keep_dashboard_uids_unique_and_within_grafanas_limit() -> None:
    from pulumi_llmd.components.dashboards import UID_MAX, dashboard_uid, dashboards
    from pulumi_llmd.components.inputs import InferenceMonitoringArgs

    uids = []
    for model in ("llama-3-70b-instruct", "llama-3-8b-instruct"):
        instance = f"inference-{model}"
        monitoring = InferenceMonitoringArgs(
            instance=instance,
            namespace="llm-d-production",
            pool_name=instance,
            disaggregated=True,
            gateway_class="agentgateway",
        )
        uids += [dashboard_uid(monitoring, board) for board in dashboards(monitoring)]
    assert len(set(uids)) == len(uids) == 6
    assert all(len(uid) <= UID_MAX and uid.startswith("llmd-llm-d-production-inf") for uid in uids)
    short = InferenceMonitoringArgs(
        instance="t", namespace="llm-d", pool_name="t", disaggregated=False, gateway_class="kgateway"
    )
    assert dashboard_uid(short, dashboards(short)[0]) == "llmd-llm-d-t-epp"  # short uids unchanged


def test_the_gateways_series_belong_to_the_stack_for_every_models_dashboard() -> None:
    """One PodMonitor watches the Gateway's proxies (the first model's monitoring renders it); its
    series carry the stack's name, which every model's gateway panels read."""
    from pulumi_llmd.components.dashboards import dashboard_json, dashboards
    from pulumi_llmd.components.inputs import InferenceMonitoringArgs
    from pulumi_llmd.components.monitoring import monitor_manifests

    def monitoring(instance: str, first: bool) -> InferenceMonitoringArgs:
        return InferenceMonitoringArgs(
            instance=instance,
            namespace="llm-d",
            pool_name=instance,
            disaggregated=False,
            gateway_class="kgateway",
            gateway_instance="mm",
            watch_gateway=first,
        )

    gateways = []
    for instance, first in (("mm-llama", True), ("mm-qwen", False)):
        args = monitoring(instance, first)
        gateways += [m for m in monitor_manifests(args) if m["metadata"]["name"] == "mm-gateway"]
        epp_board = dashboard_json(args, dashboards(args)[0])
        gateway_exprs = [
            t["expr"] for p in epp_board["panels"] if p["title"].startswith("Gateway") for t in p["targets"]
        ]
        assert gateway_exprs and all('llmd_stack="mm",llmd_component="gateway"' in e for e in gateway_exprs)
    (gateway,) = gateways
    (endpoint,) = gateway["spec"]["podMetricsEndpoints"]
    assert {"action": "replace", "targetLabel": "llmd_stack", "replacement": "mm"} in endpoint["relabelings"]
    assert gateway["spec"]["selector"]["matchLabels"] == {
        "gateway.networking.k8s.io/gateway-name": "mm-gateway"
    }


def test_one_monitor_watches_the_body_router_under_the_stacks_name(observed: RenderResult) -> None:
    (monitor,) = [m for m in observed.manifests("PodMonitor") if m["metadata"]["name"] == "mm-body-router"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    router = observed.get("Deployment", "mm-body-router").document["spec"]["template"]
    assert wanted.items() <= router["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in router["spec"]["containers"][0]["ports"]}
    assert ports[endpoint["port"]] == 9090
    relabel = {r["targetLabel"]: r.get("replacement") for r in endpoint["relabelings"]}
    assert relabel == {"llmd_stack": "mm", "llmd_component": "body-router"}
    # A single-model stack has no router and so no such monitor.
    single = render_config(
        {
            "platform": "kind",
            "name": "one",
            "model": {"name": "m", "uri": "hf://org/m", "engine": "simulator"},
            "prefill": {"enabled": False},
            "decode": SIM_POOL,
        },
        stack="single",
    )
    assert not any("body-router" in m["metadata"]["name"] for m in single.manifests("PodMonitor"))


def test_agentgateways_one_monitor_feeds_every_models_gateway_panels(observed: RenderResult) -> None:
    gateways = [m for m in observed.manifests("PodMonitor") if m["metadata"]["name"] == "mm-gateway"]
    (gateway,) = gateways  # one PodMonitor for the shared proxies, not one per model
    (endpoint,) = gateway["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert {"action": "replace", "targetLabel": "llmd_stack", "replacement": "mm"} in endpoint["relabelings"]
    for model in ("mm-llama", "mm-qwen"):
        board = json.loads(
            next(iter(observed.get("ConfigMap", f"{model}-dashboard-epp").document["data"].values()))
        )
        exprs = [t["expr"] for p in board["panels"] if p["title"].startswith("Gateway") for t in p["targets"]]
        assert exprs and all("agentgateway_" in e and 'llmd_stack="mm"' in e for e in exprs)


def test_a_replicated_body_router_drains_one_replica_at_a_time() -> None:
    """Every request of a multi-model stack passes the router (FailClose by default): like the EPP, its
    replicas get a budget so a drain cannot evict them all at once; a single replica gets none (it
    would only block drains)."""
    replicated = render_config(two_models(bodyRouter={"replicas": 2}))
    validate(replicated)
    budget = replicated.get("PodDisruptionBudget", "mm-body-router").document
    deployment = replicated.get("Deployment", "mm-body-router").document
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    single = render_config(two_models())
    budgets = [b["metadata"]["name"] for b in single.manifests("PodDisruptionBudget")]
    assert "mm-body-router" not in budgets and budgets  # the other budgets (model servers) stay
