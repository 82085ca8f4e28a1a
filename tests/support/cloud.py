"""Render the GKE/EKS example stacks (and edited copies) through the spine's offline render."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from render.engine import (
    STACKS_DIR,
    Registration,
    RenderResult,
    load_stack_file,
    render_stack,
    run_program,
)
from tests.support.paths import SHARED

if TYPE_CHECKING:
    from pulumi_llmd.config import ConfigError

SHARED = SHARED
CRDS = SHARED / "crds"
CLOUD_STACKS = ("gke", "eks")

StackEdit = Callable[[dict[str, Any]], None]


def stack_config(stack: str) -> dict[str, Any]:
    """The `config:` map of stacks/Pulumi.<stack>.yaml (keys with the llmd: prefix)."""
    document = yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())
    return dict(document["config"])


def render_edited(stack: str, edit: StackEdit, tmp_path: Path) -> RenderResult:
    """Render a copy of an example stack after `edit` changed its config map in place."""
    config = copy.deepcopy(stack_config(stack))
    edit(config)
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}))
    return render_stack(stack, stacks_dir=tmp_path)


def refusal_before_any_resource(stack: str, edit: StackEdit, tmp_path: Path) -> ConfigError:
    """Run the program on an edited example stack and return the ConfigError it raised, checking
    that nothing was registered before it (a bad combination must not leave half a stack)."""
    from pulumi_llmd.config import ConfigError
    from pulumi_llmd.program import main

    config = copy.deepcopy(stack_config(stack))
    edit(config)
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}))
    values, secret_keys = load_stack_file(tmp_path / f"Pulumi.{stack}.yaml")
    raised: list[ConfigError] = []

    def program() -> None:
        try:
            main()
        except ConfigError as error:
            raised.append(error)

    registrations, _ = run_program(stack, values, secret_keys, program=program)
    assert raised, "the program did not refuse the config"
    assert registrations == [], f"registered before refusing: {[r.name for r in registrations]}"
    return raised[0]


def cloud(result: RenderResult, pulumi_type: str, name: str | None = None) -> list[Registration]:
    found = [r for r in result.registrations if r.pulumi_type == pulumi_type]
    return [r for r in found if name is None or r.name == name]


def one(result: RenderResult, pulumi_type: str, name: str | None = None) -> Registration:
    found = cloud(result, pulumi_type, name)
    assert len(found) == 1, f"expected one {pulumi_type} {name or ''}, got {[r.name for r in found]}"
    return found[0]


def provider_urn(reference: str) -> str:
    """A provider reference is '<urn>::<id>'; the URN is what identifies the provider resource."""
    urn, _, _ = reference.rpartition("::")
    return urn


def in_cluster(result: RenderResult) -> list[Registration]:
    """Every Kubernetes resource the stack registers (typed objects, Helm charts, remote YAML)."""
    return [r for r in result.registrations if r.pulumi_type.startswith("kubernetes:")]


def kv_transfer_config(result: RenderResult, workload: str) -> dict[str, Any]:
    """The JSON vLLM gets as `--kv-transfer-config` in a model-server Deployment's engine."""
    engine = result.get("Deployment", workload).document["spec"]["template"]["spec"]["containers"][0]
    args = engine["args"]
    config: dict[str, Any] = json.loads(args[args.index("--kv-transfer-config") + 1])
    return config


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, str]) -> bool:
    """Kubernetes' toleration matching: key (or empty key with Exists), operator, value, effect."""
    for toleration in tolerations:
        operator = toleration.get("operator", "Equal")
        key_matches = (
            toleration.get("key", "") in ("", taint["key"])
            if operator == "Exists"
            else (toleration.get("key") == taint["key"])
        )
        value_matches = operator == "Exists" or toleration.get("value", "") == taint.get("value", "")
        effect_matches = toleration.get("effect", "") in ("", taint["effect"])
        if key_matches and value_matches and effect_matches:
            return True
    return False
