"""The Pulumi program: validated config -> platform -> LlmdStack. ``__main__.py`` only calls main()."""

from __future__ import annotations

import pulumi

from pulumi_llmd.components.stack import LlmdStack, llmd_stack_args
from pulumi_llmd.config import load_stack_config
from pulumi_llmd.mirrors import register_mirrors
from pulumi_llmd.provision import provision_platform


def main() -> None:
    # Validation first: a bad config fails before any resource is registered.
    loaded = load_stack_config()
    config = loaded.config
    # Before the first resource: the transform sees every one registered after it.
    register_mirrors(config.mirrors)
    platform = provision_platform(config)
    stack = LlmdStack(
        config.name,
        llmd_stack_args(config, pod_networking=platform.pod_networking, hf_token=loaded.hf_token),
        # The platform's cluster: every in-cluster object inherits its provider, and waits for what the
        # platform says pods need first (GPU node pools, device plugins, operators).
        opts=pulumi.ResourceOptions(providers=[platform.k8s_provider], depends_on=platform.depends_on),
    )
    pulumi.export("namespace", stack.namespace)
    pulumi.export("gateway", stack.gateway_name)
    pulumi.export("inferencePool", stack.pool_name)
