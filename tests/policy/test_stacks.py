"""Every example stack's rendered Kubernetes objects pass every guard-rail rule."""

from __future__ import annotations

from pathlib import Path

import llmd_rules
import pytest
import yaml

from tests.support.policy import EXAMPLE_STACKS, REPO, RenderedManifest


def test_every_example_stack_is_rendered(render_root: Path) -> None:
    assert {"kind", "onprem"} <= set(EXAMPLE_STACKS)
    for stack in EXAMPLE_STACKS:
        assert (render_root / stack / "index.json").is_file(), f"no render for stack {stack}"


@pytest.mark.parametrize("stack", EXAMPLE_STACKS)
def test_rendered_objects_pass_every_rule(stack: str, rendered_manifests: list[RenderedManifest]) -> None:
    objects = [m for m in rendered_manifests if m.stack == stack]
    violations = {m.file: found for m in objects if (found := llmd_rules.check_all(m.body))}

    assert violations == {}


@pytest.mark.parametrize("stack", EXAMPLE_STACKS)
def test_the_rules_had_model_servers_and_an_epp_to_inspect(
    stack: str, rendered_manifests: list[RenderedManifest]
) -> None:
    pods = [pod for m in rendered_manifests if m.stack == stack for pod in llmd_rules.pod_templates(m.body)]

    assert any(llmd_rules.is_model_server(pod) for pod in pods), f"{stack}: no model-server pod found"
    epp_pods = [pod for pod in pods if llmd_rules.is_epp_pod(pod)]
    # One picker per model: llmd:models stacks have several.
    config = yaml.safe_load((REPO / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    models = len(config.get("llmd:models") or [None])
    assert len(epp_pods) == models, f"{stack}: expected {models} EPP pod template(s), found {len(epp_pods)}"
    assert all(c.body.get("image") for pod in pods for c in llmd_rules.containers(pod))
