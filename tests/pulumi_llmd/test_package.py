"""The multi-language component package: the schema Pulumi's own analyzer infers from the components,
Construct through the provider host under mocks, and the plugin directory `pulumi package add` reads."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
import tomllib
import typing
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2
from pulumi.errors import InputPropertyError
from pulumi.provider.server import ComponentInitError
from pulumi.runtime.proto import provider_pb2 as proto
from pulumi.runtime.proto import provider_pb2_grpc
from pydantic import BaseModel

from pulumi_llmd.components import inputs
from pulumi_llmd.components.naming import Role
from pulumi_llmd.config import ConfigError
from pulumi_llmd.config.models import Engine, FailureMode, LlmdStackConfig
from pulumi_llmd.package import COMPONENTS, PACKAGE_NAME, PACKAGE_VERSION
from render.component_args import settings_name
from render.engine import run_program
from tests.support.construct import component_provider, construct
from tests.support.paths import REPO_ROOT

PLUGIN_DIR = REPO_ROOT / "provider"
TOKEN = "llmd:index:"

OUTPUTS = {
    "LlmdStack": {"namespace", "gatewayName", "poolName", "eppServiceName", "workloads", "poolNames"},
    "EndpointPicker": {"poolName", "serviceName"},
    "ModelServerPool": {"workloadName", "workloadKind", "servingLabels"},
    "InferenceGateway": {"gatewayName", "routeName"},
    "GatewayControlPlane": {"namespace", "gatewayClassName"},
    "ClusterCrds": {"installs"},
}
REQUIRED_INPUTS = {
    "LlmdStack": [],  # `model` or `models`: the stack rules name the key when both are missing
    "EndpointPicker": ["disaggregated", "namespace", "poolName", "selector", "servedModels"],
    "ModelServerPool": ["disaggregated", "instance", "model", "namespace", "role"],
    "InferenceGateway": ["instance", "namespace", "poolName"],
    "GatewayControlPlane": ["instance"],
    "ClusterCrds": ["leaderWorkerSet"],
}
INPUT_MODELS: dict[str, type[BaseModel]] = {
    "LlmdStack": inputs.LlmdStackInputs,
    "EndpointPicker": inputs.EndpointPickerInputs,
    "ModelServerPool": inputs.ModelServerPoolInputs,
    "InferenceGateway": inputs.InferenceGatewayInputs,
    "GatewayControlPlane": inputs.GatewayControlPlaneInputs,
    "ClusterCrds": inputs.ClusterCrdsInputs,
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(component_provider().schema or "{}")
    return document


def resource(schema: dict[str, Any], component: str) -> dict[str, Any]:
    found: dict[str, Any] = schema["resources"][f"{TOKEN}{component}"]
    return found


# --- the schema --------------------------------------------------------------------------------------


def test_schema_names_the_package_and_one_component_resource_per_component(schema: dict[str, Any]) -> None:
    assert (schema["name"], schema["version"]) == (PACKAGE_NAME, PACKAGE_VERSION)
    assert set(schema["resources"]) == {f"{TOKEN}{c.__name__}" for c in COMPONENTS}
    assert set(OUTPUTS) == {c.__name__ for c in COMPONENTS}
    for component in OUTPUTS:
        assert resource(schema, component)["isComponent"] is True
    # Only the Kubernetes package is referenced by the components, and only through providers in opts.
    assert schema.get("dependencies", []) == []


def test_llmd_stack_inputs_are_the_stack_config_keys(schema: dict[str, Any]) -> None:
    stack = resource(schema, "LlmdStack")
    config_keys = {f.alias for f in LlmdStackConfig.model_fields.values()}
    assert set(stack["inputProperties"]) == config_keys | {"podNetworking", "hfToken"}
    assert config_keys == {
        "name",
        "namespace",
        "kubernetesVersion",
        "model",
        "models",
        "bodyRouter",
        "gateway",
        "crds",
        "prefill",
        "decode",
        "epp",
        "networkPolicy",
        "monitoring",
        "autoscaling",
        "tracing",
    }
    # The sections are the stack config's own types.
    assert stack["inputProperties"]["epp"]["$ref"] == f"#/types/{TOKEN}EppSettings"
    assert stack["inputProperties"]["decode"]["$ref"] == f"#/types/{TOKEN}DecodeSettings"


@pytest.mark.parametrize("component", sorted(REQUIRED_INPUTS))
def test_required_inputs_and_plain_config(schema: dict[str, Any], component: str) -> None:
    spec = resource(schema, component)
    assert spec["requiredInputs"] == REQUIRED_INPUTS[component]
    model = INPUT_MODELS[component]
    aliases = {f.alias or name for name, f in model.model_fields.items()}
    assert aliases <= set(spec["inputProperties"])
    for key, prop in spec["inputProperties"].items():
        if key == "hfToken":
            # A secret Output from the caller: an input, never plain.
            assert prop["type"] == "string" and "plain" not in prop
        else:
            # Config is needed at construction time to build the manifests.
            assert prop.get("plain") is True, key


@pytest.mark.parametrize("component", sorted(OUTPUTS))
def test_outputs_are_declared_and_always_set(schema: dict[str, Any], component: str) -> None:
    spec = resource(schema, component)
    assert set(spec["properties"]) == OUTPUTS[component]
    assert sorted(spec["required"]) == sorted(OUTPUTS[component])


def test_output_types(schema: dict[str, Any]) -> None:
    stack = resource(schema, "LlmdStack")["properties"]
    assert stack["gatewayName"]["type"] == "string"
    assert _strip(stack["workloads"]) == {"type": "object", "additionalProperties": {"type": "string"}}
    installs = resource(schema, "ClusterCrds")["properties"]["installs"]
    assert _strip(installs) == {"type": "array", "items": {"type": "string"}}
    labels = resource(schema, "ModelServerPool")["properties"]["servingLabels"]
    assert _strip(labels) == {"type": "object", "additionalProperties": {"type": "string"}}


def _models() -> Iterator[type[BaseModel]]:
    """Every nested model of the components' inputs (each becomes a schema type)."""
    seen: set[type[BaseModel]] = set()
    pending = list(INPUT_MODELS.values())
    while pending:
        model = pending.pop()
        for info in model.model_fields.values():
            for nested in _nested(info.annotation):
                if nested not in seen:
                    seen.add(nested)
                    pending.append(nested)
                    yield nested


def _nested(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _nested(arg)


SCHEMA_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _expected_property(annotation: Any) -> dict[str, Any]:
    """The schema property a model annotation must become (description aside)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _expected_property(args[0])
    if origin is typing.Union or (origin is not None and origin.__name__ == "UnionType"):
        return _expected_property(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return {"type": "string"}
    if origin in (list, tuple):
        return {"type": "array", "items": _expected_property(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _expected_property(args[1])}
    if annotation is Any:
        return {"$ref": "pulumi.json#/Any"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"$ref": f"#/types/{TOKEN}{annotation.__name__}"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"$ref": f"#/types/{TOKEN}{settings_name(annotation)}"}
    return {"type": SCHEMA_TYPES[annotation]}


def _strip(prop: dict[str, Any]) -> dict[str, Any]:
    """A schema property without description and plain flags (at any depth)."""
    kept = {k: v for k, v in prop.items() if k not in ("description", "plain")}
    for key in ("items", "additionalProperties"):
        if key in kept:
            kept[key] = _strip(kept[key])
    return kept


def test_every_settings_type_mirrors_its_model(schema: dict[str, Any]) -> None:
    models = list(_models())
    object_types = {k for k, v in schema["types"].items() if v["type"] == "object"}
    assert object_types == {f"{TOKEN}{settings_name(m)}" for m in models}
    for model in models:
        spec = schema["types"][f"{TOKEN}{settings_name(model)}"]
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        assert set(spec["properties"]) == set(fields), model.__name__
        required = sorted(key for key, info in fields.items() if info.is_required())
        assert sorted(spec.get("required", [])) == required, model.__name__
        for key, info in fields.items():
            assert _strip(spec["properties"][key]) == _expected_property(info.annotation), (model, key)


def test_enums_carry_the_values_the_models_accept(schema: dict[str, Any]) -> None:
    for enum_type in (Engine, FailureMode, Role):
        spec = schema["types"][f"{TOKEN}{enum_type.__name__}"]
        assert spec["type"] == "string"
        assert [v["value"] for v in spec["enum"]] == [m.value for m in enum_type]
        assert spec["description"]


def _described(schema: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    for token, spec in schema["resources"].items():
        yield token, spec.get("description")
        for section in ("inputProperties", "properties"):
            for key, prop in spec[section].items():
                yield f"{token}.{section}.{key}", prop.get("description")
    for token, spec in schema["types"].items():
        yield token, spec.get("description")
        for key, prop in (spec.get("properties") or {}).items():
            yield f"{token}.{key}", prop.get("description")


def test_every_component_property_and_type_is_described_in_plain_text(schema: dict[str, Any]) -> None:
    described = list(_described(schema))
    assert len(described) > 150
    for where, text in described:
        assert text, f"{where} has no description"
        # Descriptions reach TypeScript/Go/C# docs as they are: no Python markup, no docstring indent.
        assert ":class:" not in text and "``" not in text, where
        assert "\n    " not in text and text == text.strip(), where


# --- Construct through the provider host ----------------------------------------------------------

STACK_INPUTS: dict[str, Any] = {
    "name": "remote",
    "namespace": "serving",
    "model": {"name": "org/m", "uri": "hf://org/m"},
    "decode": {"replicas": 2, "tensorParallel": 2},
    "prefill": {"replicas": 1},
    "epp": {"failureMode": "FailOpen", "replicas": 1},
    "networkPolicy": {"metricsNamespaceLabels": {"team": "obs"}},
    "podNetworking": {
        "resources": {"rdma/ib": "1"},
        "annotations": {"k8s.v1.cni.cncf.io/networks": "ib-0"},
        "networkAttachments": [
            {"name": "ib-0", "config": '{"cniVersion": "0.3.1", "name": "ib-0", "type": "ipoib"}'}
        ],
    },
}
TOKEN_VALUE = "hf_remote_token"


@pytest.fixture(scope="module")
def remote_stack() -> Any:
    return construct("LlmdStack", STACK_INPUTS, secrets={"hfToken": TOKEN_VALUE})


def test_constructed_stack_uses_the_callers_provider_and_dependencies(remote_stack: Any) -> None:
    kubernetes = [r for r in remote_stack.registrations if r.pulumi_type.startswith("kubernetes:")]
    ours = [r for r in kubernetes if not r.name.startswith("caller-")]
    assert len(ours) > 20
    for registration in ours:
        assert registration.provider.startswith(remote_stack.provider_urn + "::"), registration.name
        assert remote_stack.dependency_urn in registration.dependencies, registration.name
    components = {r.pulumi_type for r in remote_stack.registrations if r.pulumi_type.startswith(TOKEN)}
    assert {f"{TOKEN}{n}" for n in ("LlmdStack", "EndpointPicker", "ModelServerPool")} <= components
    assert remote_stack.component_urn.endswith("llmd:index:LlmdStack::remote")


def test_constructed_stack_builds_what_the_inputs_say(remote_stack: Any) -> None:
    render = remote_stack.render
    decode = render.get("Deployment", "remote-decode").document
    assert decode["metadata"]["namespace"] == "serving" and decode["spec"]["replicas"] == 2
    engine = decode["spec"]["template"]["spec"]["containers"][0]
    assert engine["resources"]["limits"]["rdma/ib"] == "1"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert decode["spec"]["template"]["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": "ib-0"}
    (pool,) = render.manifests("InferencePool")
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen"
    nad = render.get("NetworkAttachmentDefinition", "ib-0")
    assert nad.document["metadata"]["namespace"] == "serving"
    assert nad.registration.urn in render.get("Deployment", "remote-decode").registration.dependencies
    # The token stays a secret all the way into the Secret object.
    token = render.get("Secret", "remote-hf-token")
    assert token.registration.secret_paths == ["stringData"]
    assert TOKEN_VALUE not in json.dumps(token.document)


def test_constructed_stack_returns_its_outputs(remote_stack: Any) -> None:
    assert remote_stack.state == {
        "namespace": "serving",
        "gatewayName": "remote-gateway",
        "poolName": "remote",
        "eppServiceName": "remote-epp",
        "workloads": {"prefill": "remote-prefill", "decode": "remote-decode"},
        "poolNames": {"org/m": "remote"},
    }


def test_constructed_stack_matches_the_same_args_in_python(remote_stack: Any) -> None:
    """A TypeScript/Go/YAML program gets exactly the objects a Python program gets."""
    import pulumi
    import pulumi_kubernetes as k8s

    from pulumi_llmd import LlmdStack

    def program() -> None:
        cluster = k8s.Provider("caller-cluster", kubeconfig="apiVersion: v1\nkind: Config\n")
        token = pulumi.Output.secret(TOKEN_VALUE)
        args: Any = {**STACK_INPUTS, "hf_token": token}
        LlmdStack("remote", args, opts=pulumi.ResourceOptions(providers=[cluster]))

    from render.engine import render_registrations

    registrations, _ = run_program("python", {}, program=program)
    local = render_registrations("python", registrations)
    remote = {o.file: o.document for o in remote_stack.render.objects if "caller-" not in o.file}
    assert {o.file: o.document for o in local.objects} == remote


STANDALONE: dict[str, tuple[dict[str, Any], set[str], dict[str, Any]]] = {
    "EndpointPicker": (
        {
            "poolName": "solo",
            "namespace": "ml",
            "servedModels": ["a", "b"],
            "selector": {"app": "my-vllm"},
            "disaggregated": False,
            "settings": {"replicas": 2, "leaderElection": True},
        },
        {
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            # No PodDisruptionBudget with leader election: it would block draining the leader's node.
            "Deployment",
            "Service",
            "InferencePool",
        },
        {"poolName": "solo", "serviceName": "solo-epp"},
    ),
    "ModelServerPool": (
        {
            "instance": "solo",
            "namespace": "ml",
            "role": "decode",
            "model": {"name": "tiny", "uri": "hf://org/tiny", "engine": "simulator"},
            "pool": {"replicas": 3, "accelerator": {"count": 0}},
            "disaggregated": False,
        },
        {"Deployment", "PodDisruptionBudget"},
        {
            "workloadName": "solo-decode",
            "workloadKind": "Deployment",
            "servingLabels": {
                "app.kubernetes.io/instance": "solo",
                "llm-d.ai/inference-serving": "true",
                "llm-d.ai/model": "tiny",
            },
        },
    ),
    "InferenceGateway": (
        {"instance": "solo", "namespace": "ml", "poolName": "solo", "className": "istio"},
        {"Gateway", "HTTPRoute"},
        {"gatewayName": "solo-gateway", "routeName": "solo"},
    ),
    "GatewayControlPlane": (
        {"instance": "solo"},
        {"Namespace", "Chart"},
        {"namespace": "agentgateway-system", "gatewayClassName": "agentgateway"},
    ),
    "ClusterCrds": (
        {"leaderWorkerSet": True},
        {"ConfigFile"},
        {"installs": None},
    ),
}


@pytest.mark.parametrize("component", sorted(STANDALONE))
def test_each_component_constructs_on_its_own(component: str) -> None:
    component_inputs, kinds, state = STANDALONE[component]
    built = construct(component, component_inputs)
    objects = [o for o in built.render.objects if not o.name.startswith("caller-")]
    assert {o.kind for o in objects} == kinds
    for rendered in objects:
        assert rendered.registration.provider.startswith(built.provider_urn + "::")
        assert built.dependency_urn in rendered.registration.dependencies
    for key, value in state.items():
        if value is not None:
            assert built.state[key] == value, key
    assert set(built.state) == OUTPUTS[component]


def test_standalone_picker_serves_both_models_from_the_given_selector() -> None:
    built = construct("EndpointPicker", STANDALONE["EndpointPicker"][0])
    (pool,) = built.render.manifests("InferencePool")
    assert pool["spec"]["selector"] == {"matchLabels": {"app": "my-vllm"}}
    epp = built.render.get("Deployment", "solo-epp").document["spec"]["template"]["spec"]["containers"][0]
    args = epp["args"]
    assert args[args.index("--served-models") + 1] == "a,b"
    assert "--ha-enable-leader-election" in args


def test_lws_install_is_listed_only_when_asked() -> None:
    # InferencePool and llm-d's InferenceObjective by default; Gateway API only with a version.
    assert len(construct("ClusterCrds", {"leaderWorkerSet": True}).state["installs"]) == 3
    assert len(construct("ClusterCrds", {"leaderWorkerSet": False}).state["installs"]) == 2
    given = {"leaderWorkerSet": False, "gatewayApiVersion": "v1.5.1"}
    assert len(construct("ClusterCrds", given).state["installs"]) == 3


def test_a_missing_required_input_is_named_before_anything_is_built() -> None:
    with pytest.raises(InputPropertyError) as raised:
        component_provider().construct("x", f"{TOKEN}InferenceGateway", {"instance": "i", "namespace": "n"})
    assert raised.value.property_path == "poolName"


def test_a_stack_without_a_model_is_refused_naming_the_key() -> None:
    with pytest.raises(ComponentInitError) as raised:
        component_provider().construct("x", f"{TOKEN}LlmdStack", {"decode": {"replicas": 2}})
    error = raised.value.inner
    assert isinstance(error, ConfigError)
    assert [(p.path, p.message) for p in error.problems] == [
        ("model", "is required (one model; or set llmd:models for several)")
    ]


def test_a_bad_value_is_named_by_its_camel_case_key() -> None:
    bad = {"model": {"name": "m", "uri": "s3://nope"}, "decode": {"replicas": 0}, "epp": {"replicaz": 1}}
    with pytest.raises(ComponentInitError) as raised:
        component_provider().construct("x", f"{TOKEN}LlmdStack", bad)
    error = raised.value.inner
    assert isinstance(error, ConfigError)
    assert sorted(p.path for p in error.problems) == ["decode.replicas", "model.uri"]
    # Unknown keys never reach a component through the schema: the host maps only declared inputs.
    assert str(error).startswith("invalid LlmdStack args (2 problems):")


def test_a_stack_rule_is_checked_for_constructed_stacks_too() -> None:
    with pytest.raises(ComponentInitError) as raised:
        component_provider().construct(
            "x", f"{TOKEN}LlmdStack", {"model": {"name": "m", "uri": "hf://org/m"}}
        )
    assert "hfToken is required for model.uri hf://org/m: pass hfToken (a secret) to LlmdStack" in str(
        raised.value
    )


# --- the plugin directory -------------------------------------------------------------------------


def test_plugin_manifest_entry_point_and_dependencies() -> None:
    manifest = yaml.safe_load((PLUGIN_DIR / "PulumiPlugin.yaml").read_text())
    assert manifest == {"runtime": "python"}
    requirements = [
        line.strip()
        for line in (PLUGIN_DIR / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Pulumi installs the plugin's requirements from inside provider/: ".." is this repository.
    assert requirements == [".."]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pulumi-llmd" and project["version"] == PACKAGE_VERSION
    assert "from pulumi_llmd.package import main" in (PLUGIN_DIR / "__main__.py").read_text()


def test_the_plugin_entry_point_serves_the_schema_over_grpc(schema: dict[str, Any]) -> None:
    """Start provider/ the way Pulumi's Python host does (`python provider <engine address>`) and ask it
    for its schema and version over the provider protocol."""
    process = subprocess.Popen(
        [sys.executable, str(PLUGIN_DIR), "127.0.0.1:1"],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline().strip()
        if not line.isdigit():  # the host prints its port first; anything else is a crash
            process.kill()
            pytest.fail(f"provider/ did not start: {line!r}\n{process.stderr.read()}")
        port = int(line)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            served = stub.GetSchema(proto.GetSchemaRequest(version=0), timeout=60)
            info = stub.GetPluginInfo(empty_pb2.Empty(), timeout=60)
        assert json.loads(served.schema) == schema
        assert info.version == PACKAGE_VERSION
    finally:
        process.terminate()
        process.communicate(timeout=60)
