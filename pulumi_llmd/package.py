"""The multi-language component package ``llmd``: the components other Pulumi languages can use.

Pulumi's current convention for sharing components across languages is a source-based plugin
package: a directory with ``PulumiPlugin.yaml`` (``runtime: python``) and an entry point that calls
:func:`pulumi.provider.experimental.component_provider_host`, which infers the package schema from the
components' type annotations (``args`` TypedDicts, class-level outputs, docstrings) and serves
``Construct``. This repository's ``provider/`` directory is that plugin; a consumer runs
``pulumi package add <path or git ref>/provider`` and gets a generated SDK (TypeScript, Go, C#,
Java, YAML). Python programs import :mod:`pulumi_llmd` directly instead (the SDK Pulumi would
generate for Python has that same module name).

Resource tokens are ``llmd:index:<Component>``, the types the components register themselves with.
"""

from __future__ import annotations

from pulumi import ComponentResource

from pulumi_llmd.components.crds import ClusterCrds
from pulumi_llmd.components.gateway import GatewayControlPlane, InferenceGateway
from pulumi_llmd.components.modelserver import ModelServerPool
from pulumi_llmd.components.picker import EndpointPicker
from pulumi_llmd.components.stack import LlmdStack

PACKAGE_NAME = "llmd"
# The library's version (pyproject.toml), which is also the schema version the SDKs are generated at.
PACKAGE_VERSION = "0.1.0"

COMPONENTS: tuple[type[ComponentResource], ...] = (
    LlmdStack,
    EndpointPicker,
    ModelServerPool,
    InferenceGateway,
    GatewayControlPlane,
    ClusterCrds,
)


def main() -> None:
    """Serve the package: Pulumi starts ``provider/__main__.py`` to read the schema and to construct
    components for programs in other languages."""
    from pulumi.provider.experimental import component_provider_host

    component_provider_host(list(COMPONENTS), PACKAGE_NAME, version=PACKAGE_VERSION)
