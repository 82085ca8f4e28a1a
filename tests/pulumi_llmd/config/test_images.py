"""Image references in the stack config: tags, digests and both are accepted for every image key;
malformed or unpinned ones are refused with the key's path and what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from pulumi_llmd.config import ConfigError, parse_stack_config
from pulumi_llmd.config.images import image_reference_problem
from pulumi_llmd.config.models import project_image
from tests.support.stacks import SIM_POOL, kind_config, render_config

DIGEST = "sha256:" + "0123456789abcdef" * 4


def multi_model(entry: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Overrides turning kind_config into a two-model stack (llmd:models), the first entry extended."""
    first = {"name": "a", "uri": "hf://org/a", "engine": "simulator", "prefill": SIM_POOL, "decode": SIM_POOL}
    second = {
        "name": "b",
        "uri": "hf://org/b",
        "engine": "simulator",
        "prefill": SIM_POOL,
        "decode": SIM_POOL,
    }
    return {
        "model": None,
        "prefill": {},
        "decode": {},
        "gateway": {"className": "istio"},
        "models": [{**first, **(entry or {})}, second],
        **overrides,
    }


# Every config key that takes an image, as (camelCase path, how to set it in a kind config).
IMAGE_KEYS = {
    "epp.image": lambda image: {"epp": {"image": image}},
    "decode.sidecar.image": lambda image: {"decode": {**SIM_POOL, "sidecar": {"image": image}}},
    "prefill.image": lambda image: {"prefill": {**SIM_POOL, "image": image}},
    "decode.image": lambda image: {"decode": {**SIM_POOL, "image": image}},
    "bodyRouter.image": lambda image: multi_model(bodyRouter={"image": image}),
    "models[0].epp.image": lambda image: multi_model({"epp": {"image": image}}),
    "models[0].decode.sidecar.image": lambda image: multi_model(
        {"decode": {**SIM_POOL, "sidecar": {"image": image}}}
    ),
    "models[0].prefill.image": lambda image: multi_model({"prefill": {**SIM_POOL, "image": image}}),
    "models[0].decode.image": lambda image: multi_model({"decode": {**SIM_POOL, "image": image}}),
}

ACCEPTED = [
    "ghcr.io/pulumi-llmd/epp:0.1.0",
    f"ghcr.io/pulumi-llmd/epp@{DIGEST}",
    f"ghcr.io/pulumi-llmd/epp:0.1.0@{DIGEST}",
    f"ghcr.io/pulumi-llmd/epp:latest@{DIGEST}",  # a digest pins whatever the tag says
    "registry.internal:5000/mirror/vllm/vllm-openai:v0.19.1",
    f"localhost:5000/epp@{DIGEST}",
    "[fd00::1]:5000/epp:dev",
    "vllm/vllm-openai:v0.19.1",
    "python:3.11-slim",
]

# (reference, the start of the problem it gets)
REFUSED = [
    ("", "is empty"),
    ("ghcr.io/pulumi-llmd/epp", "has no tag or digest (it would pull :latest)"),
    ("registry.internal:5000/epp", "has no tag or digest"),  # the port is not a tag
    ("ghcr.io/pulumi-llmd/epp:latest", "uses the moving tag 'latest' without a digest"),
    ("ghcr.io/pulumi-llmd/epp@sha256:abc123", "has a malformed digest"),
    (f"ghcr.io/pulumi-llmd/epp@{DIGEST.upper()}", "has a malformed digest"),
    ("ghcr.io/pulumi-llmd/epp@sha512:" + "a" * 128, "has a malformed digest"),
    (f"ghcr.io/pulumi-llmd/epp@{DIGEST}@{DIGEST}", "has a malformed digest"),
    ("ghcr.io/pulumi-llmd/epp:0.1.0@", "has a malformed digest"),
    ("ghcr.io/pulumi-llmd/epp:", "has a malformed tag ''"),
    ("ghcr.io/pulumi-llmd/epp:-rc1", "has a malformed tag '-rc1'"),
    ("ghcr.io/pulumi-llmd/epp:" + "1" * 129, "has a malformed tag"),
    ("ghcr.io/Pulumi-LLMD/epp:0.1.0", "has upper-case letters in its repository path"),
    ("ghcr.io/pulumi-llmd//epp:0.1.0", "is not an image reference"),
    ("https://ghcr.io/pulumi-llmd/epp:0.1.0", "is not an image reference"),
    ("ghcr.io/pulumi-llmd/epp:0.1:0", "is not an image reference"),
    (f"@{DIGEST}", "has no repository name"),
    ("ghcr.io/pulumi-llmd/epp :0.1.0", "contains whitespace"),
    ("ghcr.io/" + "a" * 256 + ":1", "has a repository path longer than 255 characters"),
]


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=False)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("key", sorted(IMAGE_KEYS))
@pytest.mark.parametrize("image", ACCEPTED)
def test_every_image_key_takes_tags_digests_and_both(key: str, image: str) -> None:
    config = parse_stack_config(kind_config(**IMAGE_KEYS[key](image)), has_hf_token=False)

    value: Any = config
    for part in key.split("."):
        name, _, index = part.partition("[")
        value = getattr(value, {"bodyRouter": "body_router"}.get(name, name))
        if index:
            value = value[int(index.rstrip("]"))]
    assert value == image  # kept verbatim: the manifests carry exactly what the stack says


@pytest.mark.parametrize("key", sorted(IMAGE_KEYS))
@pytest.mark.parametrize(("image", "problem"), REFUSED)
def test_every_image_key_refuses_malformed_or_unpinned_references(key: str, image: str, problem: str) -> None:
    (message,) = problems_of(kind_config(**IMAGE_KEYS[key](image)))

    assert message.startswith(f"llmd:{key} {problem}"), message
    assert message.endswith(f"(got {image!r})") or "..." in message  # long inputs are shortened


def test_every_image_key_of_the_config_is_covered() -> None:
    """A new image key in the models must be listed above, so the tests hold it to the same rules."""
    from pulumi_llmd.config import models

    found = set()

    def walk(model: type, prefix: str) -> None:
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            key = f"{prefix}{field.alias or name}"
            if name == "image":
                found.add(key)
            for candidate in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    walk(candidate, f"{key}.")
                for item in (
                    getattr(candidate, "__args__", ())
                    if getattr(candidate, "__origin__", None) is list
                    else ()
                ):
                    if isinstance(item, type) and hasattr(item, "model_fields"):
                        walk(item, f"{key}[0].")

    walk(models.StackConfig, "")
    assert found == set(IMAGE_KEYS)


@pytest.mark.parametrize("image", ["epp", "sidecar", "simulator", "bbr"])
def test_the_published_defaults_are_valid_pinned_references(image: str) -> None:
    assert image_reference_problem(project_image(image)) is None


def test_digest_pinned_images_reach_the_manifests_verbatim() -> None:
    images = {
        "epp": f"ghcr.io/pulumi-llmd/epp@{DIGEST}",
        "sidecar": f"ghcr.io/pulumi-llmd/sidecar:0.1.0@{DIGEST}",
        "engine": f"registry.internal:5000/pulumi-llmd/simulator@{DIGEST}",
    }
    pool = {**SIM_POOL, "image": images["engine"]}
    result = render_config(
        kind_config(
            epp={"image": images["epp"]},
            prefill=pool,
            decode={**pool, "sidecar": {"image": images["sidecar"]}},
        )
    )

    rendered: dict[str, set[str]] = {}
    for deployment in result.manifests("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            rendered.setdefault(container["name"], set()).add(container["image"])
    assert rendered["epp"] == {images["epp"]}
    assert rendered["engine"] == {images["engine"]}  # prefill and decode
    assert rendered["routing-sidecar"] == {images["sidecar"]}
