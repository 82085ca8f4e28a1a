"""The README's "Using the components from your own program" example runs as written."""

from __future__ import annotations

import re

from render.engine import render_registrations, run_program
from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Using the components from your own program", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README section has no python example"
    return match.group(1)


def test_readme_example_builds_the_stack_with_its_own_provider() -> None:
    code = compile(readme_example(), str(README), "exec")
    registrations, _ = run_program(
        "importer",
        {"llmd:hfToken": "hf_x", "llmd:kubeconfig": "apiVersion: v1\nkind: Config\n"},
        ["llmd:hfToken", "llmd:kubeconfig"],
        program=lambda: exec(code, {"__name__": "readme_example"}),
    )
    result = render_registrations("importer", registrations)
    (provider,) = [r for r in registrations if r.pulumi_type == "pulumi:providers:kubernetes"]
    assert provider.name == "cluster" and provider.secret_paths == ["kubeconfig"]
    decode = result.get("Deployment", "llmd-decode").document
    spec = decode["spec"]["template"]["spec"]
    assert decode["spec"]["replicas"] == 4
    assert spec["containers"][0]["resources"]["limits"]["rdma/ib"] == "1"
    assert result.get("Secret", "llmd-hf-token").registration.secret_paths == ["stringData"]
    assert all(o.registration.provider.startswith(provider.urn) for o in result.objects)
