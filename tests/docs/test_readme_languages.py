"""The README's TypeScript, Go, C# and YAML examples name exactly what the package schema defines.

Only Python runs here, so each example is read as data: the object literal passed to the component is
parsed into (key, value) pairs and walked against the schema Pulumi's own analyzer infers, using the
naming rules of Pulumi's code generators (seen in generated SDKs such as pulumi-awsx and
pulumi-kubernetes): TypeScript keeps the schema's camelCase names; Go and .NET title-case them, Go
uses the plain type names for plain object inputs (``&ec2.NatGatewayConfiguration{...}`` in
``ec2.VpcArgs``) and ``pulumi.IntRef``-style pointers for optional plain scalars, .NET the
``Inputs.<Type>Args`` classes; Go local SDKs live at ``example.com/pulumi-<pkg>/sdk/go/<pkg>``
(``/v<major>/`` from major version 2). The YAML example's properties are constructed for real.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from pulumi_llmd.package import PACKAGE_NAME, PACKAGE_VERSION
from tests.support.construct import component_provider, construct
from tests.support.paths import REPO_ROOT

HEADING = "### From TypeScript, Go, C# or YAML: the `llmd` component package"
TOKEN = f"{PACKAGE_NAME}:index:"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(component_provider().schema or "{}")
    return document


def example(language: str) -> str:
    section = (REPO_ROOT / "README.md").read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"the README section has no {language} example"
    return match.group(1)


# --- a small reader for object literals (TypeScript, Go struct literals, C# initializers) -----------


@dataclass
class Literal:
    opener: str  # what precedes the brace: "", "&llmd.DecodeSettings", "new DecodeSettingsArgs" ...
    entries: dict[str, Any] = field(default_factory=dict)  # key -> Literal or the value's source text


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    i += 1
    while text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _value_end(text: str, i: int) -> int:
    """Where a scalar value ends: the next comma or closing brace outside strings and brackets."""
    depth = 0
    while True:
        char = text[i]
        if char in "\"'`":
            i = _skip_string(text, i)
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif depth == 0 and char in ",}\n":
            return i
        i += 1


def parse_literal(text: str, start: int, key: re.Pattern[str], opener: str = "") -> tuple[Literal, int]:
    """The literal whose ``{`` is at ``start``; returns it and the index after its ``}``."""
    assert text[start] == "{", text[start : start + 20]
    literal = Literal(opener.strip())
    i = start + 1
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "}":
            return literal, i + 1
        match = key.match(text, i)
        assert match, f"no key at: {text[i : i + 40]!r}"
        name = match.group("key").strip('[]"')
        i = match.end()
        while text[i] in " \t":
            i += 1
        end = _value_end(text, i)
        after = end
        while text[after] in " \t\r\n":  # C# puts an initializer's brace on the next line
            after += 1
        brace = text.find("{", i, after + 1 if text[after] == "{" else end)
        head = text[i:brace] if brace != -1 else ""
        if brace != -1 and "(" not in head and '"' not in head:
            nested, i = parse_literal(text, brace, key, head)
            literal.entries[name] = nested
        else:
            literal.entries[name] = text[i:end].strip()
            i = end


TS_KEY = re.compile(r'(?P<key>[A-Za-z_]\w*|"[^"]*")\s*:')
GO_KEY = TS_KEY
CS_KEY = re.compile(r'(?P<key>[A-Za-z_]\w*|\["[^"]*"\])\s*=(?!=)')


def literal_after(code: str, anchor: str, key: re.Pattern[str]) -> Literal:
    at = code.index(anchor) + len(anchor)
    brace = code.index("{", at)
    literal, _ = parse_literal(code, brace, key, code[at:brace])
    return literal


# --- naming rules of Pulumi's code generators -------------------------------------------------------


def title(name: str) -> str:
    return name[:1].upper() + name[1:]


def go_import_path() -> str:
    major = int(PACKAGE_VERSION.split(".")[0])
    version = f"v{major}/" if major >= 2 else ""
    return f"example.com/pulumi-{PACKAGE_NAME}/sdk/go/{version}{PACKAGE_NAME}"


def _type_name(prop: dict[str, Any]) -> str:
    return str(prop["$ref"]).rsplit(":", 1)[1]


def check_literal(
    literal: Literal,
    properties: dict[str, Any],
    required: list[str],
    schema: dict[str, Any],
    language: str,
    where: str,
) -> list[str]:
    """Every key names a property (by the language's spelling), nested literals name the right type,
    Go pointers match optionality, and required properties are all given."""
    problems: list[str] = []
    given = set()
    for key, value in literal.entries.items():
        name = key if language == "typescript" else key[:1].lower() + key[1:]
        if name not in properties and language != "typescript":
            # Report a misspelt casing (URI for Uri) as such rather than as an unknown key.
            name = next((p for p in properties if p.lower() == key.lower()), name)
        prop = properties.get(name)
        path = f"{where}.{key}"
        if prop is None:
            problems.append(f"{path}: no such property (have {sorted(properties)})")
            continue
        given.add(name)
        if language != "typescript" and key != title(name):
            problems.append(f"{path}: the generated name is {title(name)}")
        optional = name not in required
        if "$ref" in prop:
            type_name = _type_name(prop)
            if not isinstance(value, Literal):
                problems.append(f"{path}: expected a {type_name} literal")
                continue
            if language == "go":
                expected = f"{'&' if optional else ''}{PACKAGE_NAME}.{type_name}"
                if value.opener != expected:
                    problems.append(
                        f"{path}: opens with {value.opener!r}, the generated type is {expected!r}"
                    )
            if language == "csharp" and value.opener != f"new {type_name}Args":
                problems.append(
                    f"{path}: opens with {value.opener!r}, the generated class is {type_name}Args"
                )
            spec = schema["types"][prop["$ref"].removeprefix("#/types/")]
            problems += check_literal(
                value, spec["properties"], spec.get("required", []), schema, language, path
            )
        elif prop.get("type") == "object" and "additionalProperties" in prop:
            if not isinstance(value, Literal):
                problems.append(f"{path}: expected a map literal")
            elif language == "go" and value.opener != "map[string]string":
                problems.append(f"{path}: a Go map of strings is map[string]string, not {value.opener!r}")
        elif language == "go" and prop.get("plain") and optional:
            go_type = {"integer": "Int", "string": "String", "boolean": "Bool", "number": "Float64"}
            ref = f"pulumi.{go_type[prop['type']]}Ref("
            if not str(value).startswith(ref):
                problems.append(f"{path}: an optional plain {prop['type']} is a pointer: {ref}...)")
    problems += [f"{where}: required {name} is missing" for name in required if name not in given]
    return problems


def stack_resource(schema: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = schema["resources"][f"{TOKEN}LlmdStack"]
    return resource


# --- the examples -----------------------------------------------------------------------------------


def test_package_add_points_at_the_plugin_directory() -> None:
    section = (REPO_ROOT / "README.md").read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^pulumi package add (\S+)", example("bash"), re.M)
    assert commands and all(c.split("@")[0].endswith("/provider") for c in commands)
    assert any(".git/provider@v" + PACKAGE_VERSION in c for c in commands)
    assert (REPO_ROOT / "provider" / "PulumiPlugin.yaml").is_file()
    assert "providers" in section


def test_typescript_example_uses_the_schema_names(schema: dict[str, Any]) -> None:
    code = example("typescript")
    assert f'import * as {PACKAGE_NAME} from "@pulumi/{PACKAGE_NAME}";' in code
    literal = literal_after(code, f'new {PACKAGE_NAME}.LlmdStack("inference", ', TS_KEY)
    resource = stack_resource(schema)
    assert (
        check_literal(
            literal, resource["inputProperties"], resource["requiredInputs"], schema, "typescript", "args"
        )
        == []
    )
    # Providers for a remote component go in `providers` (`provider` would be the llmd plugin's own).
    assert "}, { providers: [cluster] });" in code
    (output,) = re.findall(r"stack\.(\w+)", code)
    assert output in resource["properties"]


def test_go_example_uses_the_generated_names(schema: dict[str, Any]) -> None:
    code = example("go")
    assert f'"{go_import_path()}"' in code
    anchor = f'{PACKAGE_NAME}.NewLlmdStack(ctx, "inference", &{PACKAGE_NAME}.LlmdStackArgs'
    literal = literal_after(code, anchor, GO_KEY)
    resource = stack_resource(schema)
    assert (
        check_literal(literal, resource["inputProperties"], resource["requiredInputs"], schema, "go", "args")
        == []
    )
    assert "}, pulumi.Providers(cluster))" in code
    (output,) = re.findall(r"stack\.(\w+)", code)
    assert output[:1].lower() + output[1:] in resource["properties"] and output == title(output)


def test_csharp_example_uses_the_generated_names(schema: dict[str, Any]) -> None:
    code = example("csharp")
    namespace = f"Pulumi.{title(PACKAGE_NAME)}"
    assert f"using {namespace};" in code and f"using {namespace}.Inputs;" in code
    literal = literal_after(code, 'new LlmdStack("inference", new LlmdStackArgs', CS_KEY)
    resource = stack_resource(schema)
    assert (
        check_literal(
            literal, resource["inputProperties"], resource["requiredInputs"], schema, "csharp", "args"
        )
        == []
    )
    assert "}, new ComponentResourceOptions { Providers = { cluster } });" in code
    (output,) = re.findall(r"stack\.(\w+)", code)
    assert output[:1].lower() + output[1:] in resource["properties"]


def test_the_checks_catch_a_misspelt_key_a_wrong_type_and_a_missing_pointer(schema: dict[str, Any]) -> None:
    resource = stack_resource(schema)
    bad_go = (
        '{ Model: &llmd.ModelSettings{Name: "m", URI: "hf://o/m"}, Decode: llmd.DecodeSettings{Replicas: 4} }'
    )
    literal, _ = parse_literal(bad_go, 0, GO_KEY)
    assert check_literal(
        literal, resource["inputProperties"], resource["requiredInputs"], schema, "go", "args"
    ) == [
        "args.Model.URI: the generated name is Uri",
        "args.Decode: opens with 'llmd.DecodeSettings', the generated type is '&llmd.DecodeSettings'",
        "args.Decode.Replicas: an optional plain integer is a pointer: pulumi.IntRef(...)",
    ]
    bad_ts = '{ model: { name: "m" }, decodes: {} }'
    literal, _ = parse_literal(bad_ts, 0, TS_KEY)
    problems = check_literal(
        literal, resource["inputProperties"], resource["requiredInputs"], schema, "typescript", "args"
    )
    assert problems[0].startswith("args.model: required uri is missing")
    assert problems[1].startswith("args.decodes: no such property")


def test_yaml_example_names_the_package_its_types_and_outputs(schema: dict[str, Any]) -> None:
    program = yaml.safe_load(example("yaml"))
    assert program["runtime"] == "yaml"
    assert program["packages"][PACKAGE_NAME].endswith("/provider")
    resources = program["resources"]
    component = resources["inference"]
    package, _, name = component["type"].partition(":")
    assert package == PACKAGE_NAME and f"{TOKEN}{name}" in schema["resources"]
    resource = schema["resources"][f"{TOKEN}{name}"]
    literal = Literal("", _yaml_literal(component["properties"]))
    assert (
        check_literal(
            literal,
            resource["inputProperties"],
            resource["requiredInputs"],
            schema,
            "typescript",
            "properties",
        )
        == []
    )
    (provider,) = component["options"]["providers"]
    assert resources[provider.strip("${}")]["type"] == "pulumi:providers:kubernetes"
    for reference in program["outputs"].values():
        resource_name, _, output = reference.strip("${}").partition(".")
        assert resource_name == "inference" and output in resource["properties"]


def _yaml_literal(value: dict[str, Any]) -> dict[str, Any]:
    return {k: Literal("", _yaml_literal(v)) if isinstance(v, dict) else repr(v) for k, v in value.items()}


def test_yaml_example_properties_construct_the_stack() -> None:
    """The YAML example's properties, as the engine would send them, through the plugin's Construct."""
    properties = dict(yaml.safe_load(example("yaml"))["resources"]["inference"]["properties"])
    assert properties.pop("hfToken") == "${hfToken}"
    built = construct("LlmdStack", properties, secrets={"hfToken": "hf_yaml_token"})
    decode = built.render.get("Deployment", "llmd-decode").document
    assert decode["spec"]["replicas"] == 4
    engine = decode["spec"]["template"]["spec"]["containers"][0]
    assert engine["resources"]["limits"]["rdma/ib"] == "1"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert built.state["gatewayName"] == "llmd-gateway"
