"""The inputs that matter: selectors, ports, RBAC, providers, dependencies and retention."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from render.engine import Registration, RenderResult
from tests.support.stacks import EXAMPLE_STACKS, kind_config, render_config


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod_spec(workload)
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def port_numbers(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def ancestors(result: RenderResult, registration: Registration) -> list[str]:
    chain = []
    parent = registration.parent
    while parent and not parent.endswith("pulumi:pulumi:Stack::llmd-" + result.stack):
        owner = result.by_urn(parent)
        chain.append(owner.pulumi_type)
        parent = owner.parent
    return chain


@pytest.fixture(params=EXAMPLE_STACKS)
def result(request: pytest.FixtureRequest, renders: dict[str, RenderResult]) -> RenderResult:
    return renders[request.param]


def test_pool_selector_matches_serving_pods_of_both_roles(result: RenderResult) -> None:
    (pool,) = result.manifests("InferencePool")
    selector = pool["spec"]["selector"]["matchLabels"]
    assert selector["llm-d.ai/inference-serving"] == "true"
    roles = set()
    for name in ("prefill", "decode"):
        workload = next(
            d for d in result.manifests("Deployment") if d["metadata"]["name"].endswith(f"-{name}")
        )
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        roles.add(labels["llm-d.ai/role"])
    assert roles == {"prefill", "decode"}
    # Nothing else in the namespace is selected by the pool.
    epp = next(d for d in result.manifests("Deployment") if d["metadata"]["name"].endswith("-epp"))
    assert not selector.items() <= epp["spec"]["template"]["metadata"]["labels"].items()


def test_two_stacks_of_one_model_in_one_namespace_keep_to_their_own_pods() -> None:
    """The README's bundled-vs-upstream comparison: two stacks (different llmd:name) serving one model
    in one namespace. A pool that selected by model alone took the other stack's pods too: its EPP
    scraped and picked them, and the other stack's NetworkPolicies (which admit only their own
    gateway and EPP) dropped the connections, so the request hung until its timeout."""
    renders = {
        name: render_config(kind_config(name=name, epp={"implementation": implementation}))
        for name, implementation in (("bundled", "bundled"), ("upstream", "upstream"))
    }
    for name, result in renders.items():
        (pool,) = result.manifests("InferencePool")
        selector = pool["spec"]["selector"]["matchLabels"].items()
        for other, other_result in renders.items():
            for workload in other_result.manifests("Deployment"):
                labels = workload["spec"]["template"]["metadata"]["labels"]
                serving = labels.get("llm-d.ai/inference-serving") == "true"
                assert (selector <= labels.items()) == (serving and other == name), (name, other, labels)


def test_ports_line_up_across_pool_service_deployments_and_sidecar(result: RenderResult) -> None:
    (pool,) = result.manifests("InferencePool")
    target = pool["spec"]["targetPorts"][0]["number"]
    assert target == 8000

    by_name = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in result.manifests("Deployment")}
    decode = containers(by_name["decode"])
    sidecar = decode["routing-sidecar"]
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: starts before, stops after vLLM
    assert port_numbers(sidecar) == {"http": target, "sidecar-metrics": 9090}
    assert sidecar["args"] == [
        "--port",
        "8000",
        "--model-server-port",
        "8200",
        "--kv-connector",
        "nixlv2",
        "--enable-ssrf-protection",
        "--prefill-allowlist",
        "private",
        "--prefill-ports",
        "8000",
        "--metrics-port",
        "9090",
    ]
    # The args the stack renders are ones the sidecar accepts, with the guard on.
    from sidecar.config import build_parser, options_from_args

    guarded = options_from_args(build_parser().parse_args(sidecar["args"]))
    assert guarded.guard() is not None and guarded.prefill_ports == frozenset({target})
    decode_engine = decode["engine"]
    assert port_numbers(decode_engine)["vllm-http"] == 8200
    assert decode_engine["args"][decode_engine["args"].index("--port") + 1] == "8200"
    prefill_engine = containers(by_name["prefill"])["engine"]
    assert port_numbers(prefill_engine)["http"] == target
    assert prefill_engine["args"][prefill_engine["args"].index("--port") + 1] == str(target)
    for engine in (decode_engine, prefill_engine):
        assert port_numbers(engine)["nixl"] == 5600
        side_channel = {e["name"]: e for e in engine["env"]}["VLLM_NIXL_SIDE_CHANNEL_PORT"]
        assert side_channel["value"] == "5600"

    (service,) = result.manifests("Service")
    epp = containers(by_name["epp"])["epp"]
    epp_ports = port_numbers(epp)
    assert epp_ports == {"grpc": 9002, "grpc-health": 9003, "metrics": 9090}
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["kind"] == "Service" and ref["name"] == service["metadata"]["name"]
    service_port = next(p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"])
    assert epp_ports[service_port["targetPort"]] == 9002
    assert (
        service["spec"]["selector"].items()
        <= by_name["epp"]["spec"]["template"]["metadata"]["labels"].items()
    )
    assert epp["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
    assert epp["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}


def test_epp_flags_follow_the_contract(result: RenderResult) -> None:
    (pool,) = result.manifests("InferencePool")
    epp = next(d for d in result.manifests("Deployment") if d["metadata"]["name"].endswith("-epp"))
    container = containers(epp)["epp"]
    assert container["command"] == ["python", "-m", "epp"]
    args = container["args"]
    flags = dict(zip(args[::2], args[1::2], strict=False))
    assert flags["--pool-name"] == pool["metadata"]["name"]
    assert flags["--pool-namespace"] == pool["metadata"]["namespace"]
    assert flags["--pool-group"] == "inference.networking.k8s.io"
    assert "--secure-serving=true" in args
    config_path = args[args.index("--config-file") + 1]
    mount = container["volumeMounts"][0]
    assert config_path.startswith(mount["mountPath"] + "/")
    [config_map] = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    assert config_path.rsplit("/", 1)[1] in config_map["data"]
    assert pod_spec(epp)["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailClose"


def test_pd_picker_config_uses_llm_d_plugin_names(result: RenderResult) -> None:
    [config_map] = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    document = yaml.safe_load(config_map["data"]["epp-config.yaml"])
    types = {p["type"] for p in document["plugins"]}
    assert types == {
        "prefill-filter",
        "decode-filter",
        "prefix-cache-scorer",
        "queue-scorer",
        "max-score-picker",
        "disagg-profile-handler",
        "prefix-based-pd-decider",
    }
    assert "featureGates" not in document  # flow control is off unless epp.flowControl.enabled
    handler = next(p for p in document["plugins"] if p["type"] == "disagg-profile-handler")
    assert handler["parameters"] == {"deciders": {"prefill": "prefix-based-pd-decider"}}
    assert [p["name"] for p in document["schedulingProfiles"]] == ["prefill", "decode"]


def test_rendered_picker_config_loads_in_the_bundled_epp(result: RenderResult) -> None:
    loader = pytest.importorskip("epp.config.loader", reason="the EPP config loader is not in this checkout")
    [config_map] = [c for c in result.manifests("ConfigMap") if "epp-config.yaml" in c["data"]]
    loaded = loader.load_config(config_map["data"]["epp-config.yaml"])
    assert loaded.warnings == []
    assert {"prefill-filter", "decode-filter", "disagg-profile-handler"} <= set(loaded.plugins)


def test_disruption_budgets_cover_exactly_each_pool(result: RenderResult) -> None:
    budgets = {b["metadata"]["name"]: b["spec"] for b in result.manifests("PodDisruptionBudget")}
    # Every pool and the EPP (two replicas by default): drains take one pod of each at a time.
    workloads = {d["metadata"]["name"]: d for d in result.manifests("Deployment")}
    assert set(budgets) == set(workloads)
    for name, spec in budgets.items():
        assert spec["maxUnavailable"] == 1
        assert spec["selector"] == workloads[name]["spec"]["selector"]


def test_rbac_is_exactly_the_minimum(result: RenderResult) -> None:
    (role,) = result.manifests("Role")
    read = ["get", "list", "watch"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": read},
        {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"], "verbs": read},
        {
            "apiGroups": ["llm-d.ai", "inference.networking.x-k8s.io"],
            "resources": ["inferenceobjectives"],
            "verbs": read,
        },
        {
            "apiGroups": ["llm-d.ai", "inference.networking.x-k8s.io"],
            "resources": ["inferencemodelrewrites"],
            "verbs": read,
        },
    ]
    assert result.manifests("ClusterRole") == [] and result.manifests("ClusterRoleBinding") == []
    (binding,) = result.manifests("RoleBinding")
    (account,) = result.manifests("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    epp = next(d for d in result.manifests("Deployment") if d["metadata"]["name"].endswith("-epp"))
    assert pod_spec(epp)["serviceAccountName"] == account["metadata"]["name"]
    for name in ("prefill", "decode"):
        workload = next(
            d for d in result.manifests("Deployment") if d["metadata"]["name"].endswith(f"-{name}")
        )
        assert pod_spec(workload)["automountServiceAccountToken"] is False


def test_rbac_covers_every_resource_the_bundled_epp_watches(result: RenderResult) -> None:
    """The Role is pinned above; this ties it to what `epp/discovery/kubernetes.py` really
    lists and watches, so a new watch without a grant fails here rather than as a 403 in a cluster."""
    from lightkube.resources.core_v1 import Pod

    from epp.discovery.kubernetes import ObjectiveResources, RewriteResources, pool_resource

    (role,) = result.manifests("Role")
    granted = {
        (group, resource)
        for rule in role["rules"]
        if {"list", "watch"} <= set(rule["verbs"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    watched = [
        Pod,
        pool_resource("inference.networking.k8s.io"),
        *ObjectiveResources.values(),
        *RewriteResources.values(),
    ]
    for kind in watched:
        info = kind._api_info
        assert (info.resource.group, info.plural) in granted, f"{info.resource} is watched but not granted"


def test_route_sends_the_openai_api_to_the_pool_through_the_gateway(result: RenderResult) -> None:
    (gateway,) = result.manifests("Gateway")
    (route,) = result.manifests("HTTPRoute")
    (pool,) = result.manifests("InferencePool")
    assert gateway["spec"]["gatewayClassName"] == "agentgateway"
    assert route["spec"]["parentRefs"][0]["name"] == gateway["metadata"]["name"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool["metadata"]["name"]}
    ]
    assert rule["timeouts"] == {"request": "300s"}
    # Only the OpenAI API, exactly: no /metrics, /tokenize or admin routes of the model servers.
    assert [m["path"] for m in rule["matches"]] == [
        {"type": "Exact", "value": path}
        for path in (
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/models",
            "/v1/embeddings",
            "/v1/responses",
        )
    ]


def test_network_policies_admit_only_the_gateway_plus_what_pd_needs(result: RenderResult) -> None:
    policies = {p["metadata"]["name"].rsplit("-", 2)[1]: p["spec"] for p in result.manifests("NetworkPolicy")}
    assert set(policies) == {"epp", "prefill", "decode"}
    (gateway,) = result.manifests("Gateway")
    gateway_pods = {
        "podSelector": {
            "matchLabels": {"gateway.networking.k8s.io/gateway-name": gateway["metadata"]["name"]}
        }
    }

    epp_rules = policies["epp"]["ingress"]
    assert epp_rules[0] == {"from": [gateway_pods], "ports": [{"protocol": "TCP", "port": 9002}]}
    for role in ("prefill", "decode"):
        spec = policies[role]
        assert spec["policyTypes"] == ["Ingress"]
        assert spec["podSelector"]["matchLabels"]["llm-d.ai/role"] == role
        assert spec["ingress"][0] == {"from": [gateway_pods], "ports": [{"protocol": "TCP", "port": 8000}]}
        sources = [s for rule in spec["ingress"] for s in rule["from"]]
        other = "decode" if role == "prefill" else "prefill"
        assert {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/instance": pool_instance(result), "llm-d.ai/role": other}
            }
        } in sources
    # The EPP may scrape the decode pods' vLLM directly as well as through the sidecar.
    scrape = policies["decode"]["ingress"][1]
    assert [p["port"] for p in scrape["ports"]] == [8000, 8200]


def pool_instance(result: RenderResult) -> str:
    (pool,) = result.manifests("InferencePool")
    return str(pool["metadata"]["labels"]["app.kubernetes.io/instance"])


def test_every_kubernetes_object_uses_the_explicit_provider_under_the_stack(result: RenderResult) -> None:
    providers = {r.urn for r in result.registrations if r.pulumi_type == "pulumi:providers:kubernetes"}
    assert len(providers) == 1
    (provider,) = providers
    for rendered in result.objects:
        assert rendered.registration.provider.startswith(provider + "::"), rendered.file
        chain = ancestors(result, rendered.registration)
        assert chain, f"{rendered.file} has no parent component"
        assert chain[-1] in ("llmd:index:LlmdStack", "llmd:index:OnPremAccelerators"), rendered.file


def test_crds_are_retained_and_custom_resources_wait_for_them(result: RenderResult) -> None:
    installs = result.of_source("yaml")
    assert installs and all(o.registration.retain_on_delete for o in installs)
    assert all(o.registration.transforms == 1 for o in installs)  # retain_children for expanded objects
    install_urns = {o.registration.urn for o in installs}
    for kind in ("InferencePool", "Gateway", "HTTPRoute"):
        (obj,) = [o for o in result.of_source("k8s") if o.kind == kind]
        assert install_urns <= set(obj.registration.dependencies), kind
    control_plane_charts = {o.registration.urn for o in result.of_source("helm") if "agentgateway" in o.name}
    assert len(control_plane_charts) == 2
    route = next(o for o in result.of_source("k8s") if o.kind == "Gateway")
    assert control_plane_charts <= set(route.registration.dependencies)


def test_retain_transform_marks_expanded_objects() -> None:
    import pulumi

    from pulumi_llmd.components.crds import retain_children

    args = pulumi.ResourceTransformArgs(
        custom=True,
        type_="kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition",
        name="gateways",
        props={"a": 1},
        opts=pulumi.ResourceOptions(protect=False),
    )
    result = retain_children(args)
    assert result.props == {"a": 1}
    assert result.opts is not None and result.opts.retain_on_delete is True


def test_onprem_pods_attach_to_rdma_networks(renders: dict[str, RenderResult]) -> None:
    result = renders["onprem"]
    nads = {o.name: o.document for o in result.objects if o.kind == "NetworkAttachmentDefinition"}
    assert set(nads) == {"roce-0", "roce-1"}
    for name in ("prefill", "decode"):
        workload = result.get("Deployment", f"llama-8b-{name}").document
        template = workload["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "k8s.v1.cni.cncf.io/networks": "roce-0@net1,roce-1@net2"
        }
        engine = containers(workload)["engine"]
        assert engine["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
        assert (
            engine["resources"]["requests"]["nvidia.com/gpu"]
            == engine["resources"]["limits"]["nvidia.com/gpu"]
        )
        assert engine["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        assert {e["name"]: e.get("value") for e in engine["env"]}["UCX_NET_DEVICES"] == "mlx5_0:1,mlx5_1:1"
        assert template["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert template["spec"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    nad = result.get("NetworkAttachmentDefinition", "roce-0")
    operators = {o.registration.urn for o in result.of_source("helm") if o.name.endswith("-operator")}
    assert len(operators) == 2 and operators <= set(nad.registration.dependencies)


def test_onprem_pd_pools_keep_vllms_default_nixl_backend(renders: dict[str, RenderResult]) -> None:
    # RoCE is UCX's; only platforms whose fabric needs another NIXL backend name one.
    for name in ("prefill", "decode"):
        args = containers(renders["onprem"].get("Deployment", f"llama-8b-{name}").document)["engine"]["args"]
        transfer = json.loads(args[args.index("--kv-transfer-config") + 1])
        assert transfer == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}


def test_kind_runs_the_simulator_without_gpus(renders: dict[str, RenderResult]) -> None:
    result = renders["kind"]
    for role in ("prefill", "decode"):
        engine = containers(result.get("Deployment", f"sim-{role}").document)["engine"]
        assert engine["command"] == ["python", "-m", "simulator"]
        assert engine["args"][engine["args"].index("--role") + 1] == role
        assert engine["image"] == "localhost/pulumi-llmd-simulator:dev"
        assert not any("/" in key for key in engine["resources"]["limits"])  # no extended resources


def test_rendered_commands_parse_with_the_bundled_entry_points(result: RenderResult) -> None:
    """Contract check: every flag we render is one the bundled EPP, sidecar and simulator accept."""
    epp_cli = pytest.importorskip("epp.cli", reason="the EPP CLI is not in this checkout")
    sidecar_config = pytest.importorskip("sidecar.config", reason="the sidecar is not in this checkout")
    sim_main = pytest.importorskip("simulator.__main__", reason="the simulator is not in this checkout")
    parsers = {
        ("python", "-m", "epp"): epp_cli.build_parser(),
        ("python", "-m", "sidecar"): sidecar_config.build_parser(),
        ("python", "-m", "simulator"): sim_main.build_parser(),
    }
    checked = set()
    for deployment in result.manifests("Deployment"):
        for container in containers(deployment).values():
            command = tuple(container["command"])
            if command in parsers:
                parsed = parsers[command].parse_args(container["args"])
                checked.add(command[-1])
                if command[-1] == "epp":
                    assert parsed.grpc_port == 9002 and parsed.grpc_health_port == 9003
                if command[-1] == "sidecar":
                    assert (parsed.port, parsed.model_server_port) == (8000, 8200)
    expected = {"epp", "sidecar"} | ({"simulator"} if result.stack == "kind" else set())
    assert checked == expected
