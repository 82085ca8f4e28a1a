"""Construct a package component the way the Pulumi engine asks the plugin to, under Pulumi's mocks.

A program in another language registers a remote component; the engine sends the plugin a
``ConstructRequest`` (camelCase inputs as a protobuf Struct, the caller's providers as references,
its ``dependsOn`` as URNs). :func:`construct` builds that request and runs it through the same code
the plugin's gRPC servicer runs (``ProviderServicer._construct_inputs`` / ``_construct_options`` /
``_construct_response`` around the SDK's ``ComponentProvider.construct``), inside the recording mock
monitor of :mod:`render.engine`. Only the servicer's connection to a live engine (``reset_options``,
the monitor feature probe) is skipped: there is no engine here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.server import ProviderServicer
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2 as proto

from pulumi_llmd.package import COMPONENTS, PACKAGE_NAME, PACKAGE_VERSION
from render.engine import Registration, RenderResult, render_registrations, run_program


def component_provider() -> ComponentProvider:
    """The provider ``provider/__main__.py`` hosts, with the schema inferred by the SDK's analyzer."""
    return ComponentProvider(list(COMPONENTS), PACKAGE_NAME, version=PACKAGE_VERSION)


@dataclass
class Constructed:
    registrations: list[Registration]
    state: dict[str, Any]  # the component's outputs as the engine receives them
    provider_urn: str  # the caller's Kubernetes provider
    dependency_urn: str  # a resource the caller put in dependsOn
    component_urn: str
    render: RenderResult = field(init=False)

    def __post_init__(self) -> None:
        self.render = render_registrations("construct", self.registrations)


def construct(
    component: str, inputs: dict[str, Any], *, secrets: dict[str, str] | None = None, name: str = "remote"
) -> Constructed:
    """Construct ``llmd:index:<component>`` with camelCase ``inputs`` (plus ``secrets``, sent as secret
    values), a Kubernetes provider passed as the caller's ``providers``, and one resource in the
    caller's ``dependsOn``."""
    box: dict[str, Any] = {}

    async def program() -> None:
        provider = component_provider()
        cluster = k8s.Provider("caller-cluster", kubeconfig="apiVersion: v1\nkind: Config\n")
        ready = k8s.core.v1.Namespace("caller-ready")
        box["provider_urn"] = await cluster.urn.future()
        provider_id = await cluster.id.future()
        box["dependency_urn"] = await ready.urn.future()
        request = proto.ConstructRequest(
            type=f"{PACKAGE_NAME}:index:{component}",
            name=name,
            inputs=await rpc.serialize_properties(
                {**inputs, **{k: pulumi.Output.secret(v) for k, v in (secrets or {}).items()}}, {}
            ),
            providers={"kubernetes": f"{box['provider_urn']}::{provider_id}"},
            dependencies=[box["dependency_urn"]],
        )
        args = await ProviderServicer._construct_inputs(request.inputs, request.inputDependencies)
        result = provider.construct(
            name=request.name,
            resource_type=request.type,
            inputs=args,
            options=ProviderServicer._construct_options(request),
        )
        response = await ProviderServicer(provider, [], "")._construct_response(result)
        box["component_urn"] = response.urn
        box["state"] = rpc.deserialize_properties(response.state)

    registrations, _ = run_program("construct", {}, program=program)
    return Constructed(
        registrations=registrations,
        state=dict(box["state"]),
        provider_urn=box["provider_urn"],
        dependency_urn=box["dependency_urn"],
        component_urn=box["component_urn"],
    )
