"""Config validation: every bad key is named with its path, the problem and the allowed values."""

from __future__ import annotations

import asyncio
from typing import Any

import pulumi
import pytest
from pulumi.runtime.config import set_all_config

from pulumi_llmd.config import ConfigError, StackConfig, load_stack_config, parse_stack_config
from render.engine import fresh_event_loop
from tests.support.stacks import kind_config, render_config


def problems_of(
    raw: dict[str, Any], *, has_hf_token: bool = False, unknown: list[str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, has_hf_token=has_hf_token, unknown_keys=unknown or [])
    return [str(p) for p in caught.value.problems]


def test_valid_kind_config_fills_every_default() -> None:
    config = parse_stack_config(kind_config(), has_hf_token=False)
    assert config.namespace == "llm-d"
    assert config.kubernetes_version == "1.33"
    assert config.gateway.provider.value == "agentgateway"
    assert config.gateway.effective_class_name == "agentgateway"
    assert config.crds.inference_extension_version == "v1.6.2"
    assert config.epp.secure_serving and config.epp.implementation.value == "bundled"
    assert config.epp.failure_mode.value == "FailClose"
    assert config.disaggregated


def test_decode_replicas_zero_names_the_key_and_bound() -> None:
    assert problems_of(kind_config(decode={"replicas": 0})) == ["llmd:decode.replicas must be >= 1 (got 0)"]


def test_unknown_nested_key_lists_allowed_keys() -> None:
    (problem,) = problems_of(kind_config(epp={"failurMode": "FailOpen"}))
    assert problem.startswith("llmd:epp.failurMode is not a known key (allowed: ")
    assert "failureMode" in problem and "replicas" in problem


def test_unknown_top_level_key_is_named() -> None:
    (problem,) = problems_of(kind_config(), unknown=["decod"])
    assert problem.startswith("llmd:decod is not a known key (allowed: ")
    assert "decode" in problem and "hfToken" in problem


def test_enum_error_lists_allowed_values() -> None:
    assert problems_of(kind_config(platform="aks")) == [
        "llmd:platform must be one of 'onprem', 'kind', 'gke' or 'eks' (got 'aks')"
    ]


def test_all_problems_are_reported_together() -> None:
    problems = problems_of(
        kind_config(namespace="Bad_NS", decode={"replicas": 0, "tensorParallel": 0}, kubernetesVersion="1.20")
    )
    paths = sorted(p.split(" ")[0] for p in problems)
    assert paths == [
        "llmd:decode.replicas",
        "llmd:decode.tensorParallel",
        "llmd:kubernetesVersion",
        "llmd:namespace",
    ]
    assert any("between 1.25 and 1.37" in p for p in problems)


def test_list_items_are_addressed_by_index() -> None:
    onprem = {
        "rdmaNetworks": [{"name": "ok", "ipamRange": "10.0.0.0/24"}, {"name": "bad", "ipamRange": "nope"}]
    }
    (problem,) = problems_of({**kind_config(platform="onprem", onprem=onprem), "kind": None})
    assert problem.startswith("llmd:onprem.rdmaNetworks[1].ipamRange must match ")
    assert "(got 'nope')" in problem


def test_pd_needs_prefill_replicas() -> None:
    (problem,) = problems_of(kind_config(prefill={**kind_config()["prefill"], "replicas": 0}))
    assert problem.startswith("llmd:prefill.replicas must be >= 1 when prefill.enabled is true")


def test_pd_off_allows_zero_prefill_replicas() -> None:
    config = parse_stack_config(kind_config(prefill={"enabled": False, "replicas": 0}), has_hf_token=False)
    assert not config.disaggregated


def test_platform_sections_must_match_the_platform() -> None:
    assert problems_of({**kind_config(), "platform": "onprem"}) == [
        "llmd:onprem is required when llmd:platform is onprem"
    ]
    assert problems_of(kind_config(onprem={})) == [
        "llmd:onprem is set but llmd:platform is kind: remove it or change the platform"
    ]


def test_gke_platform_needs_gke_section() -> None:
    assert "llmd:gke is required when llmd:platform is gke" in problems_of(
        {**kind_config(), "platform": "gke"}
    )


def test_hf_model_served_by_vllm_needs_the_token_secret() -> None:
    raw = {
        "platform": "onprem",
        "onprem": {},
        "model": {"name": "m", "uri": "hf://org/m"},
    }
    (problem,) = problems_of(raw)
    assert problem == (
        "llmd:hfToken is required for model.uri hf://org/m:"
        " run `pulumi config set --secret llmd:hfToken <token>`"
    )
    assert parse_stack_config(raw, has_hf_token=True).model.source == "hf"


def test_simulator_cannot_request_gpus_or_span_nodes() -> None:
    decode = {"nodesPerReplica": 2, "accelerator": {"count": 1}}
    problems = problems_of(kind_config(decode=decode))
    assert "llmd:decode.nodesPerReplica must be 1 with model.engine simulator (got 2)" in problems
    assert any(
        p.startswith("llmd:decode.accelerator.count must be 0 with model.engine simulator") for p in problems
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("plugins: [", "is not valid YAML"),
        ("- a list", "must be a YAML mapping with kind: EndpointPickerConfig"),
        ("apiVersion: v1\nkind: EndpointPickerConfig\n", "apiVersion must be one of llm-d.ai/v1alpha1, "),
    ],
)
def test_picker_config_override_is_checked_early(text: str, problem: str) -> None:
    (message,) = problems_of(kind_config(epp={"config": text}))
    assert message.startswith(f"llmd:epp.config {problem}")


def test_a_certificate_secret_needs_secure_serving() -> None:
    assert problems_of(
        kind_config(gateway={"provider": "istio"}, epp={"secureServing": False, "tlsSecretName": "c"})
    ) == ["llmd:epp.tlsSecretName needs epp.secureServing true (the certificate serves the TLS port)"]


def test_leader_election_needs_several_replicas() -> None:
    assert problems_of(kind_config(epp={"leaderElection": True, "replicas": 1})) == [
        "llmd:epp.leaderElection needs epp.replicas >= 2 (got 1)"
    ]


def test_a_managed_gke_class_needs_the_gke_provider() -> None:
    assert problems_of(kind_config(gateway={"className": "gke-l7-rilb"})) == [
        "llmd:gateway.className 'gke-l7-rilb' is GKE's managed class: set gateway.provider gke to use it"
    ]


def test_models_forbid_extra_keys_everywhere() -> None:
    def walk(model: type) -> list[type]:
        found = [model]
        for field in model.model_fields.values():  # type: ignore[attr-defined]
            annotation = field.annotation
            for candidate in getattr(annotation, "__args__", (annotation,)):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    found += walk(candidate)
        return found

    for model in walk(StackConfig):
        assert model.model_config.get("extra") == "forbid", model  # type: ignore[attr-defined]


class TestLoadStackConfig:
    """The Pulumi side: keys come from the engine's config map, objects as JSON strings."""

    @pytest.fixture(autouse=True)
    def loop(self) -> Any:
        # Config secrets are Outputs, which need a current event loop.
        with fresh_event_loop() as loop:
            yield loop
        set_all_config({}, [])

    def test_reads_scalars_objects_and_the_secret(self, loop: asyncio.AbstractEventLoop) -> None:
        set_all_config(
            {
                "llmd:platform": "onprem",
                "llmd:kubernetesVersion": "1.33",
                "llmd:onprem": "{}",
                "llmd:model": '{"name": "m", "uri": "hf://org/m"}',
                "llmd:hfToken": "hf_secret",
                "otherproject:key": "ignored",
            },
            ["llmd:hfToken"],
        )
        loaded = load_stack_config()
        assert loaded.config.kubernetes_version == "1.33"  # not the float 1.33
        assert loaded.config.model.uri == "hf://org/m"
        assert isinstance(loaded.hf_token, pulumi.Output)
        assert loop.run_until_complete(loaded.hf_token.future()) == "hf_secret"
        assert loop.run_until_complete(loaded.hf_token.is_secret()) is True

    def test_unknown_and_malformed_keys_fail_together(self) -> None:
        set_all_config(
            {"llmd:platform": "kind", "llmd:model": "tiny", "llmd:replicas": "2"},
            [],
        )
        with pytest.raises(ConfigError) as caught:
            load_stack_config()
        text = str(caught.value)
        assert "llmd:model must be a YAML mapping, not a plain value (got 'tiny')" in text
        assert "llmd:replicas is not a known key" in text

    def test_plaintext_token_is_refused(self) -> None:
        set_all_config(
            {
                "llmd:platform": "onprem",
                "llmd:onprem": "{}",
                "llmd:model": '{"name":"m","uri":"hf://o/m"}',
                "llmd:hfToken": "plain",
            },
            [],
        )
        with pytest.raises(
            ConfigError, match=r"llmd:hfToken must be a secret: run `pulumi config set --secret"
        ):
            load_stack_config()


def test_bad_config_fails_before_any_resource_is_registered() -> None:
    from render import engine as render

    seen: list[render.Registration] = []
    original = render._RecordingMonitor.RegisterResource

    def spy(self: render._RecordingMonitor, request: Any) -> Any:
        response = original(self, request)
        seen.extend(self.registrations[len(seen) :])
        return response

    render._RecordingMonitor.RegisterResource = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(ConfigError, match=r"llmd:decode\.replicas must be >= 1 \(got 0\)"):
            render_config(kind_config(decode={"replicas": 0}))
    finally:
        render._RecordingMonitor.RegisterResource = original  # type: ignore[method-assign]
    assert seen == []
